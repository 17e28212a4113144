"""Writes the corpus of malformed and hostile requests that test_corpus.py replays against a
real server: one JSON Lines file per protocol, beside this script.

Requests are data, not code, so they can be read, diffed and replayed by other tools; the
script only makes them easy to vary (models, versions, dtypes, shapes, headers) and keeps
binary bodies and protobuf exact. It is deterministic: `python generate.py` rewrites the same
bytes, and test_corpus.py checks the committed files are what it writes. Every expectation
(status or gRPC code, and words the error must contain) was read off the server's answer.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

from tritonclient.grpc import service_pb2

HERE = Path(__file__).resolve().parent
HUGE = 2**63 - 1  # i64::MAX
LONG = 10_000  # a name this long must come back cut in the error
HEADER_LENGTH = "Inference-Header-Content-Length"
# A body must be an object: serde's derived structs would also take a list of their fields.
NOT_OBJECT = ["malformed JSON", "invalid type: sequence, expected a JSON object"]
WIDTH = {
    "iris_lr": 4,
    "iris_forest": 4,
    "iris_logits": 4,
    "breast_cancer_lr": 30,
    "breast_cancer_gbt": 30,
    "breast_cancer_mlp": 30,
    "breast_cancer_mlp_large": 30,
    "diabetes_linear": 10,
    "digits_phase1": 64,
    "digits_phase2": 64,
    "digits_cascade": 64,
}


def row(model: str, n: int | None = None) -> list[float]:
    """A plausible feature row for `model` (or of length `n`)."""
    return [0.5 + (i % 7) * 0.25 for i in range(WIDTH[model] if n is None else n)]


def text(obj) -> str:
    return json.dumps(obj)


# ---------------------------------------------------------------- REST


def rest(out, id, what, path, body="", status=400, needles=(), method="POST", headers=None):
    entry = {"id": id, "what": what, "method": method, "path": path}
    if headers:
        entry["headers"] = headers
    if isinstance(body, (dict, list)):
        body = text(body)
    raw = body.encode("utf-8") if isinstance(body, str) else body
    try:
        entry["body"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["body_b64"] = base64.b64encode(raw).decode("ascii")
    entry["expect_status"] = status
    entry["expect_in_error"] = list(needles)
    out.append(entry)


def tensor(name="features", shape=(1, 4), datatype="FP32", data=None, **parameters):
    t = {"name": name, "shape": list(shape), "datatype": datatype}
    if data is not None:
        t["data"] = data
    if parameters:
        t["parameters"] = parameters
    return t


def features(model: str, rows: int = 1, **kw):
    return tensor(shape=(rows, WIDTH[model]), data=row(model) * rows, **kw)


def tfserving() -> list[dict]:
    out: list[dict] = []

    def predict(id, what, model, body, status=400, needles=(), **kw):
        rest(out, f"tf/{id}", what, f"/v1/models/{model}:predict", body, status, needles, **kw)

    good = {m: text({"instances": [row(m)]}) for m in WIDTH}

    # Not JSON, or not the JSON of a request.
    predict("truncated-in-number", "body ends inside a number", "iris_lr", '{"instances": [[5.1, 3.5', needles=["malformed JSON", "EOF"])
    predict("truncated-after-key", "body ends after a key", "breast_cancer_lr", '{"instances"', needles=["malformed JSON", "EOF"])
    predict(
        "truncated-in-string", "body ends inside a string", "diabetes_linear", '{"signature_name": "serv', needles=["malformed JSON", "EOF"]
    )
    predict(
        "trailing-garbage",
        "a valid request followed by text",
        "iris_forest",
        good["iris_forest"] + " xyz",
        needles=["malformed JSON", "trailing characters"],
    )
    predict(
        "two-objects",
        "two requests back to back",
        "digits_phase1",
        good["digits_phase1"] * 2,
        needles=["malformed JSON", "trailing characters"],
    )
    predict(
        "byte-order-mark",
        "a UTF-8 BOM before the JSON",
        "iris_lr",
        "\ufeff" + good["iris_lr"],
        needles=["malformed JSON", "line 1 column 1"],
    )
    predict(
        "nul-inside",
        "a NUL byte between key and colon",
        "iris_logits",
        '{"instances"\x00: [[1, 2, 3, 4]]}',
        needles=["malformed JSON", "column 13"],
    )
    predict(
        "nul-after",
        "a NUL byte after the request",
        "breast_cancer_gbt",
        good["breast_cancer_gbt"] + "\x00",
        needles=["malformed JSON", "trailing characters"],
    )
    predict("empty-body", "no body at all", "diabetes_linear", "", needles=["malformed JSON", "EOF"])
    predict("whitespace-body", "only whitespace", "iris_lr", " \r\n\t ", needles=["malformed JSON", "EOF"])
    predict(
        "top-level-string",
        "a JSON string instead of an object",
        "iris_lr",
        '"instances"',
        needles=["malformed JSON", "invalid type: string"],
    )
    predict(
        "top-level-number",
        "a JSON number instead of an object",
        "breast_cancer_mlp",
        "42",
        needles=["malformed JSON", "invalid type: integer"],
    )
    predict("top-level-null", "JSON null instead of an object", "digits_phase2", "null", needles=["malformed JSON", "invalid type: null"])
    predict("top-level-bool", "JSON true instead of an object", "iris_forest", "true", needles=["malformed JSON", "invalid type: boolean"])
    predict("top-level-list", "the request wrapped in a list", "iris_lr", [{"instances": [row("iris_lr")]}], needles=NOT_OBJECT)
    predict(
        "top-level-list-of-fields",
        "the request's fields as a list, in declaration order",
        "iris_lr",
        ["serving_default", [row("iris_lr")], None],
        needles=NOT_OBJECT,
    )
    predict("top-level-empty-list", "an empty list instead of an object", "breast_cancer_lr", [], needles=NOT_OBJECT)
    predict(
        "deep-nesting-instances",
        "10000 nested '[' as instances",
        "iris_lr",
        '{"instances": ' + "[" * 10_000,
        needles=["malformed JSON", "EOF while parsing"],
    )
    predict(
        "deep-nesting-objects",
        "5000 nested objects in an instance",
        "breast_cancer_lr",
        '{"instances": [' + '{"a": ' * 5_000,
        needles=["malformed JSON", "EOF while parsing"],
    )
    predict(
        "deep-nesting-columnar",
        "10000 nested '[' as a columnar input",
        "diabetes_linear",
        '{"inputs": {"features": ' + "[" * 10_000,
        needles=["malformed JSON", "EOF while parsing"],
    )
    predict(
        "invalid-utf8-in-string",
        "bytes 0xff 0xfe inside a string",
        "iris_lr",
        b'{"signature_name": "\xff\xfe", "instances": [[1, 2, 3, 4]]}',
        needles=["malformed JSON", "unicode"],
    )
    predict(
        "invalid-utf8-overlong",
        "an overlong UTF-8 encoding in a key",
        "digits_phase1",
        b'{"instances": [{"key": "\xc0\xaf", "features": []}]}',
        needles=["malformed JSON", "unicode"],
    )
    predict(
        "invalid-utf8-outside-string",
        "byte 0xff between tokens",
        "iris_forest",
        b'{"instances"\xff: []}',
        needles=["malformed JSON", "column 13"],
    )
    predict(
        "lone-surrogate",
        "a lone UTF-16 surrogate escape in a key",
        "iris_lr",
        '{"instances": [{"key": "\\ud800", "features": [1, 2, 3, 4]}]}',
        needles=["malformed JSON", "hex escape"],
    )
    predict(
        "single-quotes",
        "single-quoted keys",
        "iris_lr",
        "{'instances': [[1, 2, 3, 4]]}",
        needles=["malformed JSON", "key must be a string"],
    )
    predict(
        "trailing-comma", "a comma before ']'", "breast_cancer_lr", '{"instances": [[1, 2],]}', needles=["malformed JSON", "expected value at line 1 column 23"]
    )
    predict(
        "comment", "a /* comment */", "iris_logits", '{"instances": [[1, 2, 3, 4]] /* x */}', needles=["malformed JSON", "line 1 column 30"]
    )
    predict("bare-nan", "unquoted NaN", "iris_lr", '{"instances": [[1, 2, 3, NaN]]}', needles=["malformed JSON", "expected value"])
    predict(
        "bare-infinity",
        "unquoted -Infinity",
        "diabetes_linear",
        '{"instances": [[1, 2, 3, -Infinity]]}',
        needles=["malformed JSON", "invalid number"],
    )
    predict(
        "number-out-of-range-negative",
        "-1e400, beyond f64",
        "breast_cancer_gbt",
        '{"instances": [[-1e400]]}',
        needles=["malformed JSON", "out of range"],
    )
    predict(
        "leading-zero", "a number with a leading zero", "iris_lr", '{"instances": [[01, 2, 3, 4]]}', needles=["malformed JSON", "column 18"]
    )
    predict("hex-number", "a hexadecimal number", "iris_lr", '{"instances": [[0x10, 2, 3, 4]]}', needles=["malformed JSON", "column 18"])
    predict(
        "invalid-escape",
        "an unknown string escape",
        "iris_forest",
        '{"signature_name": "\\q", "instances": []}',
        needles=["malformed JSON", "invalid escape"],
    )
    predict(
        "control-char-in-string",
        "a raw newline inside a string",
        "iris_lr",
        '{"signature_name": "a\nb", "instances": []}',
        needles=["malformed JSON", "control character"],
    )
    predict(
        "binary-tail",
        "Triton's binary extension is not TF Serving's",
        "iris_lr",
        good["iris_lr"].encode() + struct.pack("<4f", 1, 2, 3, 4),
        needles=["malformed JSON", "trailing characters"],
        headers={HEADER_LENGTH: str(len(good["iris_lr"]))},
    )

    # Fields of the wrong type.
    predict(
        "instances-object",
        "instances is an object",
        "iris_lr",
        {"instances": {"features": row("iris_lr")}},
        needles=["'instances' must be a list", "got an object"],
    )
    predict(
        "instances-string",
        "instances is a string",
        "breast_cancer_lr",
        {"instances": "all of them"},
        needles=["'instances' must be a list", "got string"],
    )
    predict(
        "instances-number",
        "instances is a number",
        "digits_phase1",
        {"instances": 5},
        needles=["'instances' must be a list", "got number 5"],
    )
    predict("instances-null", "instances is null", "diabetes_linear", {"instances": None}, needles=["missing 'instances' or 'inputs'"])
    predict(
        "signature-number",
        "signature_name is a number",
        "iris_lr",
        {"signature_name": 5, "instances": [row("iris_lr")]},
        needles=["invalid type: integer `5`", "expected a string"],
    )
    predict(
        "signature-list",
        "signature_name is a list",
        "iris_logits",
        {"signature_name": ["classify"], "instances": [row("iris_logits")]},
        needles=["invalid type: sequence", "expected a string"],
    )
    predict(
        "instance-string",
        "an instance is a string",
        "iris_lr",
        {"instances": ["5.1,3.5,1.4,0.2"]},
        needles=["instance 0", "features", "shape []"],
    )
    predict(
        "instance-null", "an instance is null", "breast_cancer_lr", {"instances": [None]}, needles=["instance 0", "features", "shape []"]
    )
    predict("instance-bool", "an instance is true", "iris_forest", {"instances": [True]}, needles=["instance 0", "features", "shape []"])
    predict(
        "instance-number",
        "an instance is a bare number",
        "diabetes_linear",
        {"instances": [5]},
        needles=["instance 0", "features", "shape"],
    )
    predict("inputs-string", "columnar inputs is a string", "iris_lr", {"inputs": "abc"}, needles=["features", "must be a list"])
    predict("inputs-number", "columnar inputs is a number", "digits_phase1", {"inputs": 5}, needles=["features", "must be a list"])
    predict("inputs-null", "columnar inputs is null", "iris_lr", {"inputs": None}, needles=["missing 'instances' or 'inputs'"])
    predict(
        "columnar-column-string",
        "a columnar input is a string",
        "breast_cancer_lr",
        {"inputs": {"features": "x"}},
        needles=["features", "must be a list"],
    )
    predict(
        "columnar-strings",
        "columnar values are strings",
        "iris_lr",
        {"inputs": {"features": [["a", "b", "c", "d"]]}},
        needles=["features", "FP32", "string"],
    )

    # Fields that do not belong, or are missing.
    predict(
        "unknown-top-level",
        "a misspelt 'instance' beside 'instances'",
        "iris_lr",
        {"instances": [row("iris_lr")], "instance": 1},
        needles=["unknown field", "instance"],
    )
    predict(
        "unknown-top-level-only",
        "only an unknown field",
        "diabetes_linear",
        {"rows": [row("diabetes_linear")]},
        needles=["unknown field", "rows"],
    )
    predict(
        "unknown-instance-field",
        "an instance names an input the model lacks",
        "breast_cancer_lr",
        {"instances": [{"features": row("breast_cancer_lr"), "radius": 1}]},
        needles=["radius"],
    )
    predict("empty-object", "an empty object", "iris_forest", {}, needles=["missing 'instances' or 'inputs'"])
    predict(
        "only-signature",
        "a signature but no instances",
        "breast_cancer_gbt",
        {"signature_name": "serving_default"},
        needles=["missing 'instances' or 'inputs'"],
    )
    predict(
        "duplicate-instances",
        "'instances' twice in one object",
        "iris_lr",
        '{"instances": [[1, 2, 3, 4]], "instances": [[1, 2, 3, 4]]}',
        needles=["duplicate field `instances`"],
    )
    predict(
        "duplicate-signature",
        "'signature_name' twice in one object",
        "iris_logits",
        '{"signature_name": "classify", "signature_name": "serving_default", "instances": []}',
        needles=["duplicate field `signature_name`"],
    )
    predict(
        "both-forms",
        "instances and inputs together",
        "digits_phase2",
        {"instances": [row("digits_phase2")], "inputs": {"features": [row("digits_phase2")]}},
        needles=["only one of 'inputs' or 'instances'"],
    )
    predict(
        "instance-without-features",
        "an object instance without the model's input",
        "digits_phase1",
        {"instances": [{"key": "k1"}]},
        needles=["missing input", "features"],
    )
    predict(
        "second-instance-without-features",
        "the second instance lacks the input",
        "breast_cancer_mlp",
        {"instances": [{"features": row("breast_cancer_mlp")}, {}]},
        needles=["instance 1", "features"],
    )

    # Shapes and values.
    for model, n in [
        ("iris_forest", 3),
        ("breast_cancer_lr", 29),
        ("diabetes_linear", 11),
        ("digits_phase1", 63),
        ("digits_cascade", 65),
        ("breast_cancer_gbt", 0),
    ]:
        predict(
            f"width-{model}-{n}",
            f"{n} features where {model} takes {WIDTH[model]}",
            model,
            {"instances": [row(model, n)]},
            needles=["features", f"[{n}]", f"[{WIDTH[model]}]"],
        )
    predict(
        "rank-3",
        "an instance one level too deep",
        "diabetes_linear",
        {"instances": [[row("diabetes_linear")]]},
        needles=["features", "[1, 10]", "[10]"],
    )
    predict(
        "ragged-instances",
        "the second instance is shorter",
        "iris_lr",
        {"instances": [row("iris_lr"), row("iris_lr", 3)]},
        needles=["instance 1", "features", "[3]"],
    )
    predict(
        "columnar-ragged-rows",
        "columnar rows of different widths",
        "iris_lr",
        {"inputs": {"features": [row("iris_lr", 3), row("iris_lr")]}},
        needles=["instance 0", "features", "[3]"],
    )
    predict("empty-instances", "an empty instance list", "breast_cancer_lr", {"instances": []}, needles=["empty", "no instances"])
    predict("empty-columnar", "an empty columnar column", "iris_lr", {"inputs": {"features": []}}, needles=["empty", "no instances"])
    predict("empty-columnar-bare", "an empty bare columnar list", "diabetes_linear", {"inputs": []}, needles=["empty", "no instances"])
    predict("empty-instance", "one empty instance", "iris_forest", {"instances": [[]]}, needles=["features", "[0]", "[4]"])
    predict("empty-object-instance", "one empty object instance", "iris_lr", {"instances": [{}]}, needles=["missing input", "features"])
    predict(
        "string-number",
        "a number in quotes",
        "breast_cancer_lr",
        {"instances": [["1.5"] + row("breast_cancer_lr", 29)]},
        needles=["features", "FP32", "string"],
    )
    predict("null-value", "null among the features", "iris_lr", {"instances": [[1, 2, None, 4]]}, needles=["features", "FP32", "null"])
    predict("bool-value", "true among the features", "iris_forest", {"instances": [[True, 2, 3, 4]]}, needles=["features", "FP32", "bool"])
    predict(
        "object-value", "an object among the features", "iris_logits", {"instances": [[{"v": 1}, 2, 3, 4]]}, needles=["features", "FP32"]
    )
    predict(
        "fp32-overflow",
        "1e39 does not fit FP32",
        "diabetes_linear",
        {"instances": [[1e39] + row("diabetes_linear", 9)]},
        needles=["features", "beyond the input type's range"],
    )
    predict(
        "fp32-overflow-negative",
        "-3.5e38 does not fit FP32",
        "digits_phase1",
        {"instances": [row("digits_phase1", 63) + [-3.5e38]]},
        needles=["features", "beyond the input type's range"],
    )
    predict(
        "fp32-overflow-integer",
        "a 40-digit integer does not fit FP32",
        "iris_lr",
        '{"instances": [[1, 2, 3, ' + "9" * 40 + "]]}",
        needles=["features", "beyond the input type's range"],
    )
    for model, word, seen in [
        ("breast_cancer_lr", "NaN", "NaN"),
        ("diabetes_linear", "Infinity", "Infinity"),
        ("digits_phase1", "-inf", "-Infinity"),
        ("iris_forest", "nan", "NaN"),
    ]:
        predict(
            f"non-finite-{model}-{word}",
            f"'{word}' where {model} allows no NaN",
            model,
            {"instances": [[word] + row(model, WIDTH[model] - 1)]},
            needles=["features", f"contains {seen}", "allow_nan"],
        )
    predict(
        "non-finite-columnar",
        "'Infinity' in a columnar input",
        "iris_lr",
        {"inputs": {"features": [[1, 2, 3, "Infinity"]]}},
        needles=["features", "contains Infinity"],
    )
    predict(
        "word-not-a-number",
        "a word that is no number",
        "iris_lr",
        {"instances": [[1, 2, 3, "infinite"]]},
        needles=["features", "FP32", "string"],
    )

    # Keys.
    for kind, key in [("number", 7), ("bool", True), ("list", ["a"]), ("object", {"id": "a"})]:
        predict(
            f"key-{kind}",
            f"the key is a {kind}",
            "iris_lr",
            {"instances": [{"key": key, "features": row("iris_lr")}]},
            needles=["key", "string"],
        )
    predict(
        "columnar-key-count",
        "one key for two instances",
        "iris_lr",
        {"inputs": {"features": [row("iris_lr")] * 2, "key": ["a"]}},
        needles=["1 instances", "others have 2"],
    )
    predict(
        "columnar-key-number",
        "a columnar key is a number",
        "breast_cancer_lr",
        {"inputs": {"features": [row("breast_cancer_lr")], "key": [5]}},
        needles=["key", "string"],
    )

    # Models, versions, labels, signatures, verbs.
    for name in ["iris", "IRIS_LR", "iris_lr%20", "no_such_model", "%E2%9C%93"]:
        rest(
            out,
            f"tf/unknown-model-{name}",
            f"model '{name}' is not served",
            f"/v1/models/{name}:predict",
            good["iris_lr"],
            404,
            ["is not in the repository"],
        )
    rest(
        out,
        "tf/long-model",
        "a 10 KB model name",
        f"/v1/models/{'m' * LONG}:predict",
        good["iris_lr"],
        404,
        ["bytes cut", "m' is not in the repository"],
    )
    rest(
        out,
        "tf/model-with-slash",
        "an encoded '/' in the model name",
        "/v1/models/..%2Firis_lr:predict",
        good["iris_lr"],
        404,
        ["no route", "iris_lr"],
    )
    rest(
        out,
        "tf/unknown-version",
        "version 2 does not exist",
        "/v1/models/iris_lr/versions/2:predict",
        good["iris_lr"],
        404,
        ["no version 2", "available: 1"],
    )
    rest(
        out,
        "tf/unknown-version-large",
        "version 999999 does not exist",
        "/v1/models/digits_phase1/versions/999999:predict",
        good["digits_phase1"],
        404,
        ["no version 999999"],
    )
    for v in ["0", "-1", "1.0", "1e3", "one", "99999999999999999999"]:
        rest(
            out,
            f"tf/bad-version-{v}",
            f"version '{v}' is not a positive integer",
            f"/v1/models/iris_lr/versions/{v}:predict",
            good["iris_lr"],
            400,
            [f"'{v}'", "positive integer"],
        )
    rest(
        out,
        "tf/empty-version",
        "an empty version segment",
        "/v1/models/iris_lr/versions/:predict",
        good["iris_lr"],
        400,
        ["version ''", "positive integer"],
    )
    rest(
        out,
        "tf/unknown-label",
        "label 'stable' is not assigned",
        "/v1/models/breast_cancer_lr/labels/stable:predict",
        good["breast_cancer_lr"],
        404,
        ["no version label 'stable'"],
    )
    rest(
        out, "tf/empty-label", "an empty label segment", "/v1/models/iris_lr/labels/:predict", good["iris_lr"], 404, ["no route", "labels/"]
    )
    rest(out, "tf/empty-model", "no model name before the verb", "/v1/models/:predict", good["iris_lr"], 400, ["Missing model name"])
    rest(
        out,
        "tf/empty-model-versioned",
        "no model name before /versions",
        "/v1/models//versions/1:predict",
        good["iris_lr"],
        400,
        ["Missing model name"],
    )
    rest(
        out,
        "tf/extra-segment",
        "a segment after the version",
        "/v1/models/iris_lr/versions/1/extra:predict",
        good["iris_lr"],
        404,
        ["no route", "extra"],
    )
    rest(
        out,
        "tf/unknown-segment",
        "neither versions nor labels",
        "/v1/models/iris_lr/revisions/1:predict",
        good["iris_lr"],
        404,
        ["no route", "revisions"],
    )
    for verb in ["Predict", "infer", ""]:
        rest(
            out,
            f"tf/verb-{verb or 'empty'}",
            f"verb ':{verb}' does not exist",
            f"/v1/models/iris_lr:{verb}",
            good["iris_lr"],
            400,
            [f"':{verb}' is not supported", ":predict"],
        )
    rest(
        out,
        "tf/verb-twice",
        "':predict:predict' makes the model 'iris_lr:predict'",
        "/v1/models/iris_lr:predict:predict",
        good["iris_lr"],
        404,
        ["'iris_lr:predict'", "is not in the repository"],
    )
    rest(out, "tf/no-verb", "a POST without a verb", "/v1/models/diabetes_linear", good["diabetes_linear"], 404, ["no route", ":predict"])
    for model, sig in [("iris_lr", "classify"), ("iris_logits", "Classify"), ("breast_cancer_lr", "screening "), ("digits_phase1", "")]:
        predict(
            f"unknown-signature-{model}-{sig.strip() or 'empty'}",
            f"signature '{sig}' is not one of {model}'s",
            model,
            {"signature_name": sig, "instances": [row(model)]},
            404,
            [f"'{sig}'", "signature"],
        )
    predict(
        "signature-wrong-shape",
        "the classify signature gets 3 features",
        "iris_logits",
        {"signature_name": "classify", "instances": [row("iris_logits", 3)]},
        needles=["features", "[3]", "[4]"],
    )
    rest(
        out,
        "tf/long-label",
        "a 10 KB label",
        f"/v1/models/iris_lr/labels/{'x' * LONG}:predict",
        good["iris_lr"],
        404,
        ["no version label", "bytes cut"],
    )
    predict(
        "long-signature",
        "a 10 KB signature name",
        "iris_lr",
        {"signature_name": "s" * LONG, "instances": [row("iris_lr")]},
        404,
        ["signature", "bytes cut", "s' (available: serving_default)"],
    )
    predict(
        "long-input-name",
        "an instance field named with 10 KB",
        "iris_lr",
        {"instances": [{"features": row("iris_lr"), "f" * LONG: 1}]},
        needles=["bytes cut"],
    )

    # Timeout header.
    for label, value in [
        ("negative", "-5"),
        ("word", "soon"),
        ("zero", "0"),
        ("fraction", "1.5"),
        ("empty", ""),
        ("overflow", "99999999999999999999999"),
        ("unit", "100ms"),
        ("hex", "0x10"),
        ("latin1", "\u00ff"),
    ]:
        predict(
            f"timeout-{label}",
            f"serval-timeout-ms: {value!r}",
            "iris_lr",
            good["iris_lr"],
            400,
            ["serval-timeout-ms", "at least 1"],
            headers={"serval-timeout-ms": value},
        )

    # :classify and :regress.
    def examples(id, what, model, body, status=400, needles=(), verb="classify"):
        rest(out, f"tf/{verb}-{id}", what, f"/v1/models/{model}:{verb}", body, status, needles)

    examples("malformed-json", "body ends early", "iris_lr", '{"examples": [{"features": [1', needles=["malformed JSON", "EOF"])
    examples("top-level-list", "the examples field as a one-element list", "iris_lr", [[{"features": row("iris_lr")}]], needles=NOT_OBJECT)
    examples(
        "examples-object",
        "examples is an object",
        "iris_lr",
        {"examples": {"features": row("iris_lr")}},
        needles=["invalid type: map", "expected a sequence"],
    )
    examples(
        "example-list",
        "an example is a list, not features by name",
        "iris_forest",
        {"examples": [row("iris_forest")]},
        needles=["invalid type: sequence", "expected a map"],
    )
    examples("examples-empty", "no examples", "iris_lr", {"examples": []}, needles=["empty", "no instances"])
    examples(
        "examples-missing", "no examples field", "iris_lr", {"context": {"features": row("iris_lr")}}, needles=["missing field `examples`"]
    )
    examples(
        "duplicate-examples",
        "'examples' twice in one object",
        "iris_lr",
        '{"examples": [], "examples": []}',
        needles=["duplicate field `examples`"],
    )
    examples(
        "context-list",
        "context is a list",
        "iris_lr",
        {"examples": [{"features": row("iris_lr")}], "context": [1]},
        needles=["invalid type: sequence", "expected a map"],
    )
    examples(
        "unknown-field",
        "'instances' is :predict's field",
        "iris_lr",
        {"examples": [{"features": row("iris_lr")}], "instances": []},
        needles=["unknown field `instances`"],
    )
    examples(
        "missing-features",
        "an example without the input",
        "iris_forest",
        {"examples": [{"key": "a"}]},
        needles=["missing input", "features"],
    )
    examples(
        "wrong-width", "two features where four belong", "iris_lr", {"examples": [{"features": [1, 2]}]}, needles=["features", "[2]", "[4]"]
    )
    examples(
        "non-finite",
        "NaN in an example",
        "iris_logits",
        {"signature_name": "classify", "examples": [{"features": [1, 2, 3, "NaN"]}]},
        needles=["features", "contains NaN"],
    )
    examples(
        "unknown-signature",
        "signature 'score' does not exist",
        "iris_lr",
        {"signature_name": "score", "examples": [{"features": row("iris_lr")}]},
        404,
        ["'score'"],
    )
    examples(
        "unknown-model",
        "the model does not exist",
        "iris_classifier",
        {"examples": [{"features": row("iris_lr")}]},
        404,
        ["iris_classifier", "is not in the repository"],
    )
    examples(
        "regressor",
        "diabetes_linear has no [N, C] scores",
        "diabetes_linear",
        {"examples": [{"features": row("diabetes_linear")}]},
        needles=["':classify'", "[N, C] float output", "diabetes_linear"],
    )
    examples(
        "classifier",
        "iris_lr has no [N] value",
        "iris_lr",
        {"examples": [{"features": row("iris_lr")}]},
        needles=["':regress'", "[N] or [N, 1] float output", "iris_lr"],
        verb="regress",
    )
    examples(
        "logits-default",
        "iris_logits' default signature has no [N] value",
        "iris_logits",
        {"examples": [{"features": row("iris_logits")}]},
        needles=["':regress'", "serving_default"],
        verb="regress",
    )
    examples(
        "key-number",
        "a key that is a number",
        "diabetes_linear",
        {"examples": [{"key": 1, "features": row("diabetes_linear")}]},
        needles=["key", "string"],
        verb="regress",
    )
    examples(
        "context-wrong-type",
        "context features are strings",
        "diabetes_linear",
        {"examples": [{}], "context": {"features": ["x"] * 10}},
        needles=["features", "FP32", "string"],
        verb="regress",
    )

    # Model status and metadata.
    def get(id, what, path, status, needles):
        rest(out, f"tf/get-{id}", what, path, "", status, needles, method="GET")

    get(
        "unknown-model",
        "status of a model that is not served",
        "/v1/models/no_such_model",
        404,
        ["no_such_model", "is not in the repository"],
    )
    get("unknown-model-metadata", "metadata of a model that is not served", "/v1/models/no_such_model/metadata", 404, ["no_such_model"])
    get("unknown-version", "status of version 3", "/v1/models/iris_lr/versions/3", 404, ["no version 3"])
    get("unknown-version-metadata", "metadata of version 3", "/v1/models/breast_cancer_lr/versions/3/metadata", 404, ["no version 3"])
    get("bad-version", "status of version 'latest'", "/v1/models/iris_lr/versions/latest", 400, ["'latest'", "positive integer"])
    get("bad-version-metadata", "metadata of version '-2'", "/v1/models/iris_lr/versions/-2/metadata", 400, ["'-2'", "positive integer"])
    get("unknown-label", "status of label 'canary'", "/v1/models/iris_lr/labels/canary", 404, ["no version label 'canary'"])
    get("extra-segment", "an unknown segment after the model", "/v1/models/iris_lr/signatures", 404, ["no route", "signatures"])
    get("long-label", "status of a 10 KB label", f"/v1/models/iris_lr/labels/{'c' * LONG}", 404, ["no version label", "bytes cut"])
    get("long-model", "status of a 10 KB model name", f"/v1/models/{'m' * LONG}", 404, ["bytes cut", "m' is not in the repository"])
    get("no-model", "GET /v1/models", "/v1/models", 400, ["Missing model name"])
    get("verb", "a GET with a verb", "/v1/models/iris_lr:predict", 404, ["iris_lr:predict", "is not in the repository"])

    # Ground-truth labels: refused before anything is recorded.
    def labels(id, what, body, needles, model="iris_lr"):
        rest(out, f"tf/labels-{id}", what, f"/v1/models/{model}/labels", body, 400, needles)

    labels("malformed-json", "body ends early", '{"labels": [{"key": "a", ', ["malformed JSON", "EOF"])
    labels("empty-body", "no body", "", ["malformed JSON", "EOF"])
    labels("top-level-list", "the request wrapped in a list", [{"labels": [{"key": "a", "label": 1}]}], NOT_OBJECT)
    labels("top-level-list-of-fields", "the labels field as a one-element list", [[{"key": "a", "label": 1}]], NOT_OBJECT)
    labels("labels-object", "labels is an object", {"labels": {"a": 1}}, ["invalid type: map", "expected a sequence"])
    labels("labels-null", "labels is null", {"labels": None}, ["invalid type: null", "expected a sequence"])
    labels("labels-missing", "no labels field", {}, ["missing field `labels`"])
    labels("unknown-top-level", "a field besides labels", {"labels": [], "model": "iris_lr"}, ["unknown field `model`"])
    labels("duplicate-labels", "'labels' twice in one object", '{"labels": [], "labels": []}', ["duplicate field `labels`"])
    labels("entry-string", "an entry that is a string", {"labels": ["a=1"]}, ["invalid type: string", "expected a map"])
    labels("entry-list", "an entry that is a list", {"labels": [["a", 1]]}, ["invalid type: sequence", "expected a map"])
    labels("key-number", "a key that is a number", {"labels": [{"key": 5, "label": 1}]}, ["labels[0]", "'key' must be a string"])
    labels("key-null", "a key that is null", {"labels": [{"key": None, "label": 1}]}, ["labels[0]", "'key' must be a string"])
    labels("key-list", "a key that is a list", {"labels": [{"key": ["a"], "label": 1}]}, ["labels[0]", "'key' must be a string"])
    labels("key-empty", "an empty key", {"labels": [{"key": "", "label": 1}]}, ["labels[0]", "'key' is empty"])
    labels("key-missing", "no key", {"labels": [{"label": 1}]}, ["labels[0]", "'key' is missing"])
    labels("label-missing", "no label", {"labels": [{"key": "a"}]}, ["labels[0]", "'label' is missing"])
    labels("label-object", "a label that is an object", {"labels": [{"key": "a", "label": {"class": 1}}]}, ["labels[0]", "not an object"])
    labels("label-list", "a label that is a list", {"labels": [{"key": "a", "label": [1]}]}, ["labels[0]", "not an array"])
    labels("label-null", "a label that is null", {"labels": [{"key": "a", "label": None}]}, ["labels[0]", "not null"])
    labels(
        "unknown-entry-field",
        "an entry with a 'value' field",
        {"labels": [{"key": "a", "label": 1, "value": 2}]},
        ["labels[0]", "unknown field 'value'"],
    )
    labels(
        "second-entry-bad",
        "the second entry has no key",
        {"labels": [{"key": "a", "label": 1}, {"label": 2}]},
        ["labels[1]", "'key' is missing", "no label of this request was recorded"],
    )
    labels(
        "deep-nesting",
        "10000 nested '[' as a label",
        '{"labels": [{"key": "a", "label": ' + "[" * 10_000,
        ["malformed JSON", "recursion limit"],
    )
    labels(
        "invalid-utf8",
        "a key with byte 0xff",
        b'{"labels": [{"key": "\xff", "label": 1}]}',
        ["malformed JSON", "unicode"],
        model="breast_cancer_lr",
    )

    # Methods a route lacks.
    for method, path in [("DELETE", "/v1/models/iris_lr"), ("PUT", "/v1/models/iris_lr:predict"), ("PATCH", "/v1/models/iris_lr/labels")]:
        rest(out, f"tf/method-{method}", f"{method} on {path}", path, "", 405, [method, path, "(allowed: GET,HEAD,POST)"], method=method)
    return out


# ---------------------------------------------------------------- v2 REST, JSON


def v2_json() -> list[dict]:
    out: list[dict] = []

    def infer(id, what, model, body, status=400, needles=(), version=None, headers=None):
        path = f"/v2/models/{model}/infer" if version is None else f"/v2/models/{model}/versions/{version}/infer"
        rest(out, f"v2/{id}", what, path, body, status, needles, headers=headers)

    def req(*inputs, **extra):
        return {"inputs": list(inputs), **extra}

    good = {m: text(req(features(m))) for m in WIDTH}
    F = features("iris_lr")

    # Not JSON, or not the JSON of a request.
    infer(
        "truncated",
        "body ends inside the inputs",
        "iris_lr",
        '{"inputs": [{"name": "features", "shape": [1, ',
        needles=["malformed JSON", "EOF"],
    )
    infer(
        "truncated-string", "body ends inside a string", "breast_cancer_lr", '{"inputs": [{"name": "feat', needles=["malformed JSON", "EOF"]
    )
    infer(
        "trailing-garbage",
        "a valid request followed by text",
        "diabetes_linear",
        good["diabetes_linear"] + "garbage",
        needles=["malformed JSON", "trailing characters"],
    )
    infer(
        "two-objects",
        "two requests back to back",
        "iris_forest",
        good["iris_forest"] + good["iris_forest"],
        needles=["malformed JSON", "trailing characters"],
    )
    infer(
        "byte-order-mark",
        "a UTF-8 BOM before the JSON",
        "iris_lr",
        "\ufeff" + good["iris_lr"],
        needles=["malformed JSON", "line 1 column 1"],
    )
    infer(
        "nul-inside",
        "a NUL byte before the first key",
        "digits_phase1",
        "{\x00" + good["digits_phase1"][1:],
        needles=["malformed JSON", "column 2"],
    )
    infer(
        "nul-in-string",
        "a raw NUL byte inside a name",
        "iris_lr",
        '{"inputs": [{"name": "feat\x00ures", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}',
        needles=["malformed JSON", "control character"],
    )
    infer("empty-body", "no body at all", "iris_lr", "", needles=["malformed JSON", "EOF"])
    infer("whitespace-body", "only whitespace", "digits_cascade", "\n\n", needles=["malformed JSON", "EOF"])
    infer("top-level-string", "a JSON string", "iris_lr", '"infer"', needles=["malformed JSON", "invalid type: string"])
    infer("top-level-number", "a JSON number", "iris_logits", "1", needles=["malformed JSON", "invalid type: integer"])
    infer("top-level-null", "JSON null", "breast_cancer_gbt", "null", needles=["malformed JSON", "invalid type: null"])
    infer("top-level-list", "the request wrapped in a list", "iris_lr", [req(F)], needles=NOT_OBJECT)
    infer(
        "top-level-list-of-fields",
        "the request's fields as a list, in declaration order",
        "iris_lr",
        [None, {}, [F], None],
        needles=NOT_OBJECT,
    )
    infer("top-level-empty-list", "an empty list instead of an object", "diabetes_linear", [], needles=NOT_OBJECT)
    infer(
        "deep-nesting-data",
        "10000 nested '[' as data",
        "iris_lr",
        '{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ' + "[" * 10_000,
        needles=["malformed JSON", "EOF while parsing"],
    )
    infer(
        "deep-nesting-parameters",
        "5000 nested objects as a parameter",
        "iris_lr",
        '{"parameters": {"p": ' + '{"p": ' * 5_000,
        needles=["malformed JSON", "EOF while parsing"],
    )
    infer(
        "deep-nesting-tensor-parameters",
        "10000 nested '[' as an input's parameter",
        "breast_cancer_lr",
        '{"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32", "parameters": {"p": ' + "[" * 10_000,
        needles=["malformed JSON", "EOF while parsing"],
    )
    infer(
        "invalid-utf8-name",
        "an input name with bytes 0xc3 0x28",
        "iris_lr",
        b'{"inputs": [{"name": "\xc3\x28", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}',
        needles=["malformed JSON", "unicode"],
    )
    infer(
        "invalid-utf8-datatype",
        "a datatype with byte 0xff",
        "diabetes_linear",
        b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP\xff", "data": []}]}',
        needles=["malformed JSON", "unicode"],
    )
    infer(
        "invalid-utf8-surrogate-bytes",
        "CESU-style surrogate bytes in the id",
        "iris_forest",
        b'{"id": "\xed\xa0\x80", "inputs": []}',
        needles=["malformed JSON", "unicode"],
    )
    infer(
        "lone-surrogate",
        "a lone UTF-16 surrogate escape in the id",
        "iris_lr",
        '{"id": "\\udc00", "inputs": []}',
        needles=["malformed JSON", "surrogate"],
    )
    infer("single-quotes", "single-quoted keys", "iris_lr", "{'inputs': []}", needles=["malformed JSON", "key must be a string"])
    infer("trailing-comma", "a comma before '}'", "iris_lr", '{"inputs": [],}', needles=["malformed JSON", "trailing comma"])
    infer(
        "bare-nan",
        "unquoted NaN in data",
        "iris_lr",
        '{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, NaN]}]}',
        needles=["malformed JSON", "expected value"],
    )
    infer(
        "number-out-of-range",
        "1e400, beyond f64",
        "diabetes_linear",
        '{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP64", "data": [1e400]}]}',
        needles=["features", "number out of range"],
    )

    # Fields of the wrong type.
    infer(
        "duplicate-inputs-field",
        "'inputs' twice in one object",
        "iris_lr",
        '{"inputs": [], "inputs": []}',
        needles=["duplicate field `inputs`"],
    )
    infer(
        "duplicate-name-field",
        "'name' twice in one input",
        "iris_lr",
        '{"inputs": [{"name": "features", "name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}',
        needles=["duplicate field `name`"],
    )
    infer("inputs-object", "inputs is an object", "iris_lr", {"inputs": F}, needles=["invalid type: map", "expected a sequence"])
    infer("inputs-string", "inputs is a string", "iris_lr", {"inputs": "features"}, needles=["invalid type: string", "expected a sequence"])
    infer("inputs-null", "inputs is null", "breast_cancer_lr", {"inputs": None}, needles=["invalid type: null", "expected a sequence"])
    infer(
        "input-string",
        "an input that is a string",
        "iris_lr",
        {"inputs": ["features"]},
        needles=["invalid type: string", "expected a JSON object"],
    )
    infer(
        "name-number",
        "an input name that is a number",
        "iris_lr",
        req({**F, "name": 0}),
        needles=["invalid type: integer `0`", "expected a string"],
    )
    infer(
        "name-null", "an input name that is null", "iris_lr", req({**F, "name": None}), needles=["invalid type: null", "expected a string"]
    )
    infer(
        "shape-string",
        "a shape that is a string",
        "iris_lr",
        req({**F, "shape": "1x4"}),
        needles=["invalid type: string", "expected a sequence"],
    )
    infer(
        "shape-float", "a dimension of 1.5", "iris_lr", req({**F, "shape": [1.5, 4]}), needles=["invalid type: floating point `1.5`", "i64"]
    )
    infer(
        "shape-string-dim",
        "a dimension that is a string",
        "digits_phase1",
        req({**features("digits_phase1"), "shape": ["1", 64]}),
        needles=["invalid type: string", "i64"],
    )
    infer("shape-null", "a shape that is null", "iris_lr", req({**F, "shape": None}), needles=["invalid type: null", "expected a sequence"])
    infer(
        "shape-overflows-u64",
        "a dimension beyond u64",
        "iris_forest",
        '{"inputs": [{"name": "features", "shape": [1, 99999999999999999999], "datatype": "FP32", "data": [1]}]}',
        needles=["malformed JSON", "i64"],
    )
    infer(
        "datatype-number",
        "a datatype that is a number",
        "iris_lr",
        req({**F, "datatype": 32}),
        needles=["invalid type: integer `32`", "expected a string"],
    )
    infer(
        "datatype-list",
        "a datatype that is a list",
        "iris_lr",
        req({**F, "datatype": ["FP32"]}),
        needles=["invalid type: sequence", "expected a string"],
    )
    infer(
        "data-string",
        "data that is a string",
        "iris_lr",
        req({**F, "data": "1,2,3,4"}),
        needles=["features", "expected FP32 value", 'got string "1,2,3,4"'],
    )
    infer("data-number", "data that is a bare number", "iris_lr", req({**F, "data": 5}), needles=["features", "needs 4"])
    infer(
        "data-object",
        "data that is an object",
        "iris_lr",
        req({**F, "data": {"values": [1, 2, 3, 4]}}),
        needles=["features", "expected FP32 value", "got an object"],
    )
    infer(
        "data-and-binary-size",
        "data and binary_data_size both, without a binary tail",
        "iris_lr",
        req({**F, "parameters": {"binary_data_size": 16}}),
        needles=["features", "has both data and binary_data_size"],
    )
    infer(
        "parameters-list",
        "parameters that are a list",
        "iris_lr",
        req(F, parameters=[1]),
        needles=["invalid type: sequence", "expected a map"],
    )
    infer(
        "tensor-parameters-string",
        "input parameters that are a string",
        "iris_lr",
        req({**F, "parameters": "binary"}),
        needles=["invalid type: string", "expected a map"],
    )
    infer("id-number", "an id that is a number", "iris_lr", req(F, id=7), needles=["invalid type: integer `7`", "expected a string"])
    infer(
        "outputs-object",
        "outputs is an object",
        "iris_lr",
        req(F, outputs={"name": "label"}),
        needles=["invalid type: map", "expected a sequence"],
    )
    infer(
        "output-string",
        "a requested output that is a string",
        "iris_lr",
        req(F, outputs=["label"]),
        needles=["invalid type: string", "expected a JSON object"],
    )
    infer(
        "output-name-missing",
        "a requested output without a name",
        "iris_lr",
        req(F, outputs=[{"parameters": {}}]),
        needles=["missing field `name`"],
    )
    infer(
        "output-name-number",
        "a requested output named 1",
        "iris_lr",
        req(F, outputs=[{"name": 1}]),
        needles=["invalid type: integer `1`", "expected a string"],
    )
    infer(
        "timeout-string",
        "parameter timeout is a string",
        "iris_lr",
        req(F, parameters={"timeout": "10"}),
        needles=["timeout", "non-negative integer"],
    )
    infer(
        "timeout-float",
        "parameter timeout is 1.5",
        "iris_lr",
        req(F, parameters={"timeout": 1.5}),
        needles=["timeout", "non-negative integer"],
    )
    infer(
        "timeout-negative",
        "parameter timeout is -1",
        "breast_cancer_lr",
        req(features("breast_cancer_lr"), parameters={"timeout": -1}),
        needles=["timeout", "non-negative"],
    )
    infer(
        "timeout-huge",
        "parameter timeout beyond i64",
        "iris_lr",
        req(F, parameters={"timeout": 2**64}),
        needles=["timeout", "non-negative integer"],
    )

    infer(
        "signature-number",
        "parameter signature_name is a number",
        "iris_lr",
        req(F, parameters={"signature_name": 5}),
        needles=["parameter 'signature_name' must be a string", "got number 5"],
    )
    infer(
        "signature-list",
        "parameter signature_name is a list",
        "iris_logits",
        req(features("iris_logits"), parameters={"signature_name": ["classify"]}),
        needles=["parameter 'signature_name' must be a string", "got a list"],
    )
    infer(
        "binary-data-output-string",
        "parameter binary_data_output is 'yes'",
        "iris_lr",
        req(F, parameters={"binary_data_output": "yes"}),
        needles=["parameter 'binary_data_output' must be a boolean", 'got string "yes"'],
    )
    infer(
        "binary-data-output-object",
        "parameter binary_data_output is an object",
        "breast_cancer_lr",
        req(features("breast_cancer_lr"), parameters={"binary_data_output": {"on": True}}),
        needles=["parameter 'binary_data_output' must be a boolean", "got an object"],
    )
    infer(
        "output-binary-data-string",
        "a requested output's binary_data is 'yes'",
        "iris_lr",
        req(F, outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]),
        needles=["parameter 'binary_data' must be a boolean", 'got string "yes"'],
    )
    infer(
        "timeout-word",
        "parameter timeout is 'abc'",
        "iris_lr",
        req(F, parameters={"timeout": "abc"}),
        needles=["parameter 'timeout' must be a non-negative integer", 'got string "abc"'],
    )

    # Fields that do not belong.
    infer(
        "unknown-field",
        "a field the protocol does not define",
        "iris_lr",
        req(F, bogus=1),
        needles=["unknown field `bogus`", "expected one of `id`, `model_name`"],
    )
    infer(
        "unknown-tensor-field",
        "an input with a field the protocol does not define",
        "iris_lr",
        req({**F, "bogus": 1}),
        needles=["unknown field `bogus`", "expected one of `name`, `shape`, `datatype`, `parameters`, `data`"],
    )
    infer(
        "unknown-output-field",
        "a requested output with a field the protocol does not define",
        "iris_lr",
        req(F, outputs=[{"name": "label", "bogus": 1}]),
        needles=["unknown field `bogus`", "expected `name` or `parameters`"],
    )

    # Missing fields.
    infer("empty-object", "an empty object", "iris_lr", {}, needles=["missing field `inputs`"])
    infer("only-id", "an id and nothing else", "diabetes_linear", {"id": "r1"}, needles=["missing field `inputs`"])
    infer("no-inputs", "an empty input list", "iris_lr", req(), needles=["missing input", "features"])
    for field in ["name", "shape", "datatype"]:
        t = dict(F)
        del t[field]
        infer(f"missing-{field}", f"an input without '{field}'", "iris_lr", req(t), needles=[f"missing field `{field}`"])
    infer(
        "no-data",
        "an input without data",
        "breast_cancer_gbt",
        req(tensor(shape=(1, 30))),
        needles=["features", "neither data nor binary_data_size"],
    )
    infer(
        "data-null",
        "an input whose data is null",
        "iris_lr",
        req({**F, "data": None}),
        needles=["features", "neither data nor binary_data_size"],
    )

    # Datatypes.
    for dt in ["FP33", "", "fp32", "float32", "FLOAT", "TYPE_FP32", "FP32 "]:
        infer(
            f"unknown-dtype-{dt.strip() or 'empty'}{'-space' if dt.endswith(' ') else ''}",
            f"datatype '{dt}'",
            "iris_lr",
            req({**F, "datatype": dt}),
            needles=["features", f"unknown datatype '{dt}'"],
        )
    for model, dt, data in [
        ("iris_lr", "INT64", [1, 2, 3, 4]),
        ("breast_cancer_lr", "FP64", row("breast_cancer_lr")),
        ("diabetes_linear", "FP16", row("diabetes_linear")),
        ("digits_phase1", "INT32", [1] * 64),
        ("iris_forest", "BYTES", ["a", "b", "c", "d"]),
        ("iris_logits", "BOOL", [True, False, True, False]),
    ]:
        infer(
            f"wrong-dtype-{model}-{dt}",
            f"{dt} where {model} takes FP32",
            model,
            req(tensor(shape=(1, WIDTH[model]), datatype=dt, data=data)),
            needles=["features", dt, "FP32"],
        )
    for dt, value, why in [
        ("UINT8", 300, "300 is out of range for UINT8"),
        ("UINT8", -1, "-1 is out of range for UINT8"),
        ("INT8", -129, "-129 is out of range for INT8"),
        ("INT16", 40000, "40000 is out of range for INT16"),
        ("UINT16", 65536, "65536 is out of range for UINT16"),
        ("INT32", 2**31, "2147483648 is out of range for INT32"),
        ("UINT32", -5, "-5 is out of range for UINT32"),
        ("INT64", 2**63, "INT64"),
        ("UINT64", -1, "-1 is out of range for UINT64"),
        ("INT32", 1.5, "INT32"),
        ("FP32", 1e39, "beyond the input type's range"),
        ("FP16", 70000.0, "FP16"),
    ]:
        infer(
            f"overflow-{dt}-{value}",
            f"{value} in a {dt} tensor",
            "iris_lr",
            req(tensor(datatype=dt, data=[value, 1, 2, 3])),
            needles=["features", why],
        )
    infer("bool-number", "2 in a BOOL tensor", "iris_lr", req(tensor(datatype="BOOL", data=[2, 1, 0, 1])), needles=["features", "BOOL"])
    infer(
        "bool-string",
        "'true' in a BOOL tensor",
        "iris_lr",
        req(tensor(datatype="BOOL", data=["true", True, False, True])),
        needles=["features", "BOOL", "string"],
    )
    infer("bytes-number", "a number in a BYTES tensor", "iris_lr", req(F, tensor("key", (1,), "BYTES", [17])), needles=["key", "BYTES"])

    # Shapes against data.
    for model, shape, data_len, needle in [
        ("iris_lr", (1, 3), 3, "[1, 3]"),
        ("breast_cancer_lr", (1, 29), 29, "[1, 29]"),
        ("digits_phase1", (2, 64), 64, "needs 128"),
        ("diabetes_linear", (1, 10), 11, "more values in data than the 10 its shape needs"),
        ("iris_forest", (4,), 4, "[4]"),
        ("iris_lr", (1, 4, 1), 4, "[1, 4, 1]"),
        ("iris_lr", (4, 1), 4, "[4, 1]"),
        ("iris_lr", (), 1, "[]"),
        ("breast_cancer_gbt", (30, 1), 30, "[30, 1]"),
    ]:
        infer(
            f"shape-{model}-{'x'.join(map(str, shape)) or 'scalar'}-{data_len}",
            f"shape {list(shape)} with {data_len} values",
            model,
            req(
                tensor(
                    shape=shape, data=row(model, data_len) if data_len <= WIDTH[model] else row(model) + [1.0] * (data_len - WIDTH[model])
                )
            ),
            needles=["features", needle],
        )
    infer("shape-zero-rows", "shape [0, 4]", "iris_lr", req(tensor(shape=(0, 4), data=[])), needles=["empty"])
    infer("shape-zero-width", "shape [1, 0]", "iris_lr", req(tensor(shape=(1, 0), data=[])), needles=["features", "[1, 0]"])
    for label, shape in [
        ("negative", (-1, 4)),
        ("negative-inner", (1, -4)),
        ("i64-min", (-(2**63), 4)),
        ("i64-max", (HUGE, 4)),
        ("i64-max-both", (HUGE, HUGE)),
        ("product-overflow", (2**32, 2**32)),
        ("product-overflow-3", (2**21, 2**21, 2**22)),
        ("huge-rank", (1,) * 64 + (2**62, 4)),
    ]:
        needle = "negative" if "negative" in label or "min" in label else "too many elements"
        infer(
            f"dims-{label}",
            f"shape {list(shape)[-3:]}",
            "iris_lr",
            req(tensor(shape=shape, data=[1, 2, 3, 4])),
            needles=["features", needle],
        )
    infer(
        "dims-large-little-data",
        "shape [1, 2^40] with a row of values",
        "breast_cancer_lr",
        req(tensor(shape=(1, 2**40), data=row("breast_cancer_lr"))),
        needles=["features", "needs"],
    )

    # Values.
    infer(
        "string-value", "a string among FP32 data", "iris_lr", req(tensor(data=[1, 2, "three", 4])), needles=["features", "FP32", "string"]
    )
    infer(
        "null-value",
        "null among FP32 data",
        "diabetes_linear",
        req(tensor(shape=(1, 10), data=[None] + row("diabetes_linear", 9))),
        needles=["features", "FP32", "null"],
    )
    infer("bool-value", "true among FP32 data", "iris_forest", req(tensor(data=[1, 2, 3, True])), needles=["features", "FP32", "bool"])
    infer("object-value", "an object among FP32 data", "iris_lr", req(tensor(data=[1, 2, 3, {"v": 4}])), needles=["features", "FP32"])
    for model, word, seen in [
        ("breast_cancer_lr", "NaN", "NaN"),
        ("diabetes_linear", "-Infinity", "-Infinity"),
        ("digits_phase1", "inf", "Infinity"),
        ("iris_logits", "-inf", "-Infinity"),
    ]:
        infer(
            f"non-finite-{model}-{word}",
            f"'{word}' where {model} allows no NaN",
            model,
            req(tensor(shape=(1, WIDTH[model]), data=row(model, WIDTH[model] - 1) + [word])),
            needles=["features", f"contains {seen}", "allow_nan"],
        )
    infer(
        "non-finite-fp64",
        "'NaN' in an FP64 tensor, which the FP32 model does not take",
        "iris_lr",
        req(tensor(datatype="FP64", data=[1, 2, 3, "NaN"])),
        needles=["features", "FP64", "FP32"],
    )
    infer(
        "nan-in-int",
        "'NaN' in an INT64 tensor",
        "iris_lr",
        req(tensor(datatype="INT64", data=[1, 2, 3, "NaN"])),
        needles=["features", "INT64", "string"],
    )
    infer(
        "nested-too-many",
        "nested data with five values",
        "iris_lr",
        req(tensor(data=[[1, 2], [3, 4, 5]])),
        needles=["features", "more values in data than the 4 its shape needs"],
    )

    # Input names.
    infer(
        "duplicate-input",
        "features twice",
        "breast_cancer_lr",
        req(features("breast_cancer_lr"), features("breast_cancer_lr")),
        needles=["features", "twice"],
    )
    infer("unknown-input", "an input the model lacks", "iris_lr", req(F, tensor("sepal", data=[1, 2, 3, 4])), needles=["sepal"])
    infer(
        "only-unknown-input",
        "only an input the model lacks",
        "digits_phase1",
        req(tensor("pixels", (1, 64), data=[0] * 64)),
        needles=["pixels"],
    )
    infer("empty-input-name", "an input named ''", "iris_lr", req(F, tensor("", data=[1, 2, 3, 4])), needles=["''"])
    infer("case-input-name", "'Features' is not 'features'", "iris_lr", req(tensor("Features", data=[1, 2, 3, 4])), needles=["Features"])
    infer(
        "long-input-name",
        "a 10 KB input name",
        "iris_lr",
        req(F, tensor("i" * LONG, data=[1, 2, 3, 4])),
        needles=["bytes cut", "i' (expected: features)"],
    )
    infer(
        "long-datatype",
        "a 10 KB datatype",
        "iris_lr",
        req(tensor(datatype="D" * LONG, data=[1, 2, 3, 4])),
        needles=["unknown datatype", "bytes cut"],
    )

    # Keys.
    infer(
        "key-count",
        "two keys for one instance",
        "iris_lr",
        req(F, tensor("key", (2,), "BYTES", ["a", "b"])),
        needles=["2 keys", "1 instances"],
    )
    infer(
        "key-int64",
        "keys as INT64",
        "diabetes_linear",
        req(features("diabetes_linear"), tensor("key", (1,), "INT64", [7])),
        needles=["key", "BYTES"],
    )
    infer(
        "key-no-data",
        "a key tensor without data",
        "iris_lr",
        req(F, tensor("key", (1,), "BYTES")),
        needles=["key", "neither data nor binary_data_size"],
    )

    # Outputs and signatures.
    infer("unknown-output", "an output the model lacks", "iris_lr", req(F, outputs=[{"name": "logits"}]), needles=["logits"])
    infer(
        "unknown-output-second",
        "a known and an unknown output",
        "iris_logits",
        req(features("iris_logits"), outputs=[{"name": "logits"}, {"name": "label"}]),
        needles=["label"],
    )
    infer(
        "long-output-name",
        "a 10 KB output name",
        "iris_lr",
        req(F, outputs=[{"name": "o" * LONG}]),
        needles=["requested output", "bytes cut", "o' is not an output of model 'iris_lr'"],
    )
    for model, sig in [("iris_lr", "classify"), ("breast_cancer_lr", "Screening"), ("iris_logits", "")]:
        infer(
            f"unknown-signature-{model}-{sig or 'empty'}",
            f"signature '{sig}'",
            model,
            req(features(model), parameters={"signature_name": sig}),
            404,
            [f"'{sig}'"],
        )
    infer(
        "long-signature",
        "a 10 KB signature name",
        "iris_lr",
        req(F, parameters={"signature_name": "s" * LONG}),
        404,
        ["signature", "bytes cut", "s' (available: serving_default)"],
    )

    # Models and versions.
    for name in ["no_such_model", "Iris_lr", "iris_lr%00", "%F0%9F%A6%8A", "iris_lr.onnx"]:
        infer(f"unknown-model-{name}", f"model '{name}'", name, good["iris_lr"], 404, ["is not in the repository"])
    infer("long-model", "a 10 KB model name", "m" * LONG, good["iris_lr"], 404, ["bytes cut", "m' is not in the repository"])
    infer("model-invalid-utf8", "a model name that decodes to invalid UTF-8", "%FF%FE", good["iris_lr"], 400, ["Invalid UTF-8", "model"])
    for v, status, needle in [
        ("2", 404, "no version 2"),
        ("4294967296", 404, "no version 4294967296"),
        ("0", 400, "'0'"),
        ("a.b", 400, "'a.b'"),
        ("1.0", 400, "'1.0'"),
        ("18446744073709551616", 400, "'18446744073709551616'"),
        ("stable", 404, "no version label 'stable'"),
        ("-1", 404, "no version label '-1'"),
    ]:
        infer(f"version-{v}", f"version '{v}'", "iris_lr", good["iris_lr"], status, [needle], version=v)
    infer("long-version", "a 10 KB version label", "iris_lr", good["iris_lr"], 404, ["no version label", "bytes cut"], version="v" * LONG)

    # Timeout header.
    for label, value in [
        ("negative", "-1"),
        ("word", "never"),
        ("zero", "0"),
        ("fraction", "0.5"),
        ("overflow", "184467440737095516160"),
        ("plus", "+-5"),
        ("spaces", "1 000"),
    ]:
        infer(
            f"timeout-header-{label}",
            f"serval-timeout-ms: {value!r}",
            "iris_lr",
            good["iris_lr"],
            400,
            ["serval-timeout-ms", "at least 1"],
            headers={"serval-timeout-ms": value},
        )

    # Other routes.
    def get(id, what, path, status, needles):
        rest(out, f"v2/get-{id}", what, path, "", status, needles, method="GET")

    get(
        "metadata-unknown-model",
        "metadata of a model that is not served",
        "/v2/models/no_such_model",
        404,
        ["no_such_model", "is not in the repository"],
    )
    get("metadata-long-model", "metadata of a 10 KB model name", f"/v2/models/{'m' * LONG}", 404, ["bytes cut", "m' is not in the repository"])
    get("metadata-unknown-version", "metadata of version 5", "/v2/models/iris_lr/versions/5", 404, ["no version 5"])
    get("metadata-bad-version", "metadata of version 'x.y'", "/v2/models/iris_lr/versions/x.y", 400, ["'x.y'"])
    get("metadata-zero-version", "metadata of version 0", "/v2/models/digits_phase1/versions/0", 400, ["'0'", "positive integer"])
    get(
        "ready-unknown-model",
        "readiness of a model that is not served",
        "/v2/models/nope/ready",
        404,
        ["'nope'", "is not in the repository"],
    )
    get("ready-unknown-version", "readiness of version 7", "/v2/models/iris_lr/versions/7/ready", 404, ["no version 7"])
    get("ready-bad-version", "readiness of version '1.1'", "/v2/models/iris_lr/versions/1.1/ready", 400, ["'1.1'"])
    get("ready-invalid-utf8", "readiness of a model named %FF", "/v2/models/%FF/ready", 400, ["Invalid UTF-8"])
    get("config-unknown-model", "config of a model that is not served", "/v2/models/nope/config", 404, ["'nope'"])
    get("config-unknown-version", "config of version 9", "/v2/models/breast_cancer_lr/versions/9/config", 404, ["no version 9"])
    get("stats-unknown-model", "statistics of a model that is not served", "/v2/models/nope/stats", 404, ["'nope'"])
    get("stats-bad-version", "statistics of version 'x.y'", "/v2/models/iris_lr/versions/x.y/stats", 400, ["'x.y'"])
    get("unknown-route", "a route that does not exist", "/v2/models/iris_lr/explain", 404, ["no route", "/v2/models/iris_lr/explain"])
    get(
        "unknown-route-versioned",
        "a route after a version that does not exist",
        "/v2/models/iris_lr/versions/1/metadata",
        404,
        ["no route", "/versions/1/metadata"],
    )
    for action in ["load", "unload"]:
        rest(
            out,
            f"v2/repository-{action}-unknown",
            f"{action} a model that is not in the repository",
            f"/v2/repository/models/no_such_model/{action}",
            "",
            404,
            ["no_such_model", "is not in the repository"],
        )
        rest(
            out,
            f"v2/repository-{action}-traversal",
            f"{action} '../..'",
            f"/v2/repository/models/..%2F..%2Fetc/{action}",
            "",
            404,
            ["../../etc", "is not in the repository"],
        )
    rest(
        out,
        "v2/log-malformed",
        "a prediction log report that ends early",
        "/v2/models/iris_lr/log",
        '{"predictions": [',
        400,
        ["malformed JSON", "EOF"],
    )
    rest(
        out,
        "v2/log-missing-predictions",
        "a prediction log report without predictions",
        "/v2/models/iris_lr/log",
        {},
        400,
        ["missing field `predictions`"],
    )
    rest(
        out,
        "v2/log-predictions-object",
        "predictions is an object",
        "/v2/models/iris_lr/log",
        {"predictions": {}},
        400,
        ["invalid type: map", "expected a sequence"],
    )
    rest(
        out,
        "v2/log-unknown-field",
        "a field besides predictions",
        "/v2/models/iris_lr/log",
        {"predictions": [], "source": "edge"},
        400,
        ["unknown field `source`"],
    )
    rest(
        out, "v2/log-bad-version", "a report for version 'a.b'", "/v2/models/iris_lr/versions/a.b/log", {"predictions": []}, 400, ["'a.b'"]
    )
    for method, path, allowed in [
        ("GET", "/v2/models/iris_lr/versions/1/infer", "POST"),
        ("DELETE", "/v2/models/iris_lr", "GET,HEAD"),
        ("PUT", "/v2/repository/models/iris_lr/load", "POST"),
        ("POST", "/v2/models/iris_lr/ready", "GET,HEAD"),
    ]:
        rest(
            out,
            f"v2/method-{method}-{path.rsplit('/', 1)[1]}",
            f"{method} on {path}",
            path,
            "",
            405,
            [method, path, f"(allowed: {allowed})"],
            method=method,
        )
    return out


# ---------------------------------------------------------------- v2 REST, binary extension


def f32(*values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def bytes_tensor(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def v2_binary() -> list[dict]:
    out: list[dict] = []
    raw4 = f32(5.0, 3.0, 1.5, 0.2)

    def binary(id, what, tensors, tail, needles, model="iris_lr", version=None, header_length=None, status=400, head=None):
        head = text({"inputs": tensors}).encode() if head is None else head
        length = str(len(head)) if header_length is None else header_length
        headers = {HEADER_LENGTH: length, "Content-Type": "application/octet-stream"}
        path = f"/v2/models/{model}/infer" if version is None else f"/v2/models/{model}/versions/{version}/infer"
        rest(out, f"bin/{id}", what, path, head + tail, status, needles, headers=headers)

    T = tensor(binary_data_size=16)
    BDS = "parameter 'binary_data_size' must be a non-negative integer"

    # The header length.
    head = text({"inputs": [T]}).encode()
    not_integer = [HEADER_LENGTH.lower(), "non-negative integer"]
    for label, value, needles in [
        ("too-big", "100000", ["is 100000", "only"]),
        ("one-too-big", str(len(head) + 17), ["is", "but the body has only"]),
        ("negative", "-1", not_integer),
        ("word", "lots", not_integer),
        ("empty", "", not_integer),
        ("fraction", "10.5", not_integer),
        ("hex", "0x20", not_integer),
        ("inner-space", "4 0", not_integer),
        ("overflow", "99999999999999999999999", not_integer),
        ("zero", "0", ["header length 0"]),
        ("cuts-json", "5", ["malformed JSON", "EOF"]),
        ("into-tail", str(len(head) + 4), ["malformed JSON", "trailing characters"]),
    ]:
        binary(f"header-length-{label}", f"{HEADER_LENGTH}: {value!r}", [T], raw4, needles, header_length=value, head=head)
    binary("header-length-latin1", f"{HEADER_LENGTH} with byte 0xe9", [T], raw4, not_integer, header_length="1\u00e9")

    # The JSON header itself.
    binary(
        "header-bom",
        "a BOM before the JSON header",
        [T],
        raw4,
        ["malformed JSON", "line 1 column 1"],
        head=b"\xef\xbb\xbf" + text({"inputs": [T]}).encode(),
    )
    binary(
        "header-invalid-utf8",
        "byte 0xff inside the JSON header",
        [T],
        raw4,
        ["malformed JSON", "unicode"],
        head=b'{"inputs": [{"name": "\xff", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}',
    )
    binary("header-top-level-number", "a JSON number as header", [T], raw4, ["malformed JSON", "invalid type: integer"], head=b"16")
    binary(
        "header-list-of-fields",
        "the header's fields as a list, in declaration order",
        [T],
        raw4,
        NOT_OBJECT,
        head=text([None, {}, [T], None]).encode(),
    )
    binary(
        "header-unknown-field",
        "a header field the protocol does not define",
        [T],
        raw4,
        ["unknown field `bogus`", "expected one of `id`, `model_name`"],
        head=text({"inputs": [T], "bogus": 1}).encode(),
    )
    binary(
        "header-binary-data-output-string",
        "parameter binary_data_output is 'yes'",
        [T],
        raw4,
        ["parameter 'binary_data_output' must be a boolean", 'got string "yes"'],
        head=text({"inputs": [T], "parameters": {"binary_data_output": "yes"}}).encode(),
    )
    binary(
        "header-nul",
        "a NUL byte ends the header",
        [T],
        raw4,
        ["malformed JSON", "trailing characters"],
        head=text({"inputs": [T]}).encode() + b"\x00",
    )
    binary(
        "header-deep-nesting",
        "10000 nested '[' as header",
        [T],
        raw4,
        ["malformed JSON", "EOF while parsing"],
        head=b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": ' + b"[" * 10_000,
    )

    # binary_data_size.
    for label, size, tail, needles in [
        ("too-big", 32, raw4, ["features", "binary_data_size 32", "16 bytes"]),
        ("short-tail", 16, raw4[:8], ["features", "binary_data_size 16", "8 bytes"]),
        ("leftover", 16, raw4 + b"\0" * 8, ["8 bytes", "not claimed"]),
        ("vs-shape-long", 20, raw4 + b"\0" * 4, ["features", "20 bytes", "needs 16"]),
        ("vs-shape-short", 12, raw4[:12], ["features", "12 bytes", "needs 16"]),
        ("zero", 0, b"", ["features", "0 bytes", "needs 16"]),
        ("negative", -16, raw4, ["features", BDS, "got number -16"]),
        ("string", "16", raw4, ["features", BDS, 'got string "16"']),
        ("float", 16.0, raw4, ["features", BDS, "got number 16.0"]),
        ("null", None, raw4, ["features", BDS, "got null"]),
        ("bool", True, raw4, ["features", BDS, "got boolean true"]),
        ("list", [16], raw4, ["features", BDS, "got a list"]),
        ("u64-max", 2**64 - 1, raw4, ["features", "exceeds"]),
        ("beyond-u64", 2**64, raw4, ["features", BDS, "got number"]),
    ]:
        binary(f"size-{label}", f"binary_data_size {size!r} with {len(tail)} bytes", [tensor(binary_data_size=size)], tail, needles)
    binary("no-data-no-size", "a tail but no binary_data_size", [tensor()], raw4, ["features", "neither data nor binary_data_size"])
    binary(
        "data-and-size",
        "JSON data and binary_data_size for one input",
        [tensor(data=[1, 2, 3, 4], binary_data_size=16)],
        raw4,
        ["features", "has both data and binary_data_size"],
    )
    binary(
        "data-and-size-zero",
        "JSON data and binary_data_size 0 for one input",
        [tensor(data=[1, 2, 3, 4], binary_data_size=0)],
        b"",
        ["features", "has both data and binary_data_size"],
    )
    binary(
        "key-data-and-size",
        "the key in JSON and in the tail",
        [T, tensor("key", (1,), "BYTES", data=["a"], binary_data_size=5)],
        raw4 + bytes_tensor(b"a"),
        ["key", "has both data and binary_data_size"],
    )
    binary("json-data-and-tail", "JSON data, and a tail nobody claims", [tensor(data=[1, 2, 3, 4])], raw4, ["16 bytes", "not claimed"])
    binary(
        "two-inputs-claim-too-much",
        "the second input claims more than is left",
        [T, tensor("key", (1,), "BYTES", binary_data_size=9)],
        raw4 + bytes_tensor(b"ab"),
        ["key", "binary_data_size 9", "6 bytes"],
    )

    # Tensors against the tail.
    binary(
        "rows-vs-bytes", "shape [2, 4] with one row of bytes", [tensor(shape=(2, 4), binary_data_size=16)], raw4, ["features", "needs 32"]
    )
    binary(
        "wrong-dtype",
        "INT64 where FP32 belongs",
        [tensor(datatype="INT64", binary_data_size=32)],
        struct.pack("<4q", 1, 2, 3, 4),
        ["features", "INT64", "FP32"],
    )
    binary("fp16", "FP16 where FP32 belongs", [tensor(datatype="FP16", binary_data_size=8)], b"\x00\x3c" * 4, ["features", "FP16", "FP32"])
    binary("unknown-dtype", "datatype FP33", [tensor(datatype="FP33", binary_data_size=16)], raw4, ["features", "unknown datatype 'FP33'"])
    binary("negative-dim", "shape [-1, 4]", [tensor(shape=(-1, 4), binary_data_size=16)], raw4, ["features", "negative"])
    binary("huge-dim", "shape [i64::MAX, 4]", [tensor(shape=(HUGE, 4), binary_data_size=16)], raw4, ["features", "too many elements"])
    binary(
        "overflowing-bytes",
        "2^62 elements of 4 bytes overflow the byte count",
        [tensor(shape=(2, 2**61), binary_data_size=16)],
        raw4,
        ["features", "too large"],
    )
    binary("nan-bytes", "a NaN in the tail", [T], f32(1.0, 2.0, float("nan"), 4.0), ["features", "contains NaN", "allow_nan"])
    binary(
        "inf-bytes",
        "+Infinity in the tail",
        [T],
        f32(float("inf"), 2.0, 3.0, 4.0),
        ["features", "contains Infinity", "allow_nan"],
        model="iris_forest",
    )
    binary(
        "wrong-width",
        "3 floats for diabetes_linear's 10",
        [tensor(shape=(1, 3), binary_data_size=12)],
        f32(1, 2, 3),
        ["features", "[1, 3]"],
        model="diabetes_linear",
    )
    binary(
        "unknown-model",
        "binary request to an unknown model",
        [T],
        raw4,
        ["no_such_model", "is not in the repository"],
        model="no_such_model",
        status=404,
    )
    binary(
        "long-model",
        "binary request to a 10 KB model name",
        [T],
        raw4,
        ["bytes cut", "m' is not in the repository"],
        model="m" * LONG,
        status=404,
    )
    binary("unknown-input", "a second input the model lacks", [T, tensor("petal", binary_data_size=16)], raw4 * 2, ["petal"])

    # BYTES tensors (the key) in the tail.
    def key(size, shape=(1,)):
        return tensor("key", shape, "BYTES", binary_data_size=size)

    for label, tail, size, shape, needles in [
        ("prefix-truncated", b"\x01\x00", 2, (1,), ["key", "truncated BYTES length prefix"]),
        ("prefix-claims-more", struct.pack("<I", 9) + b"ab", 6, (1,), ["key", "claims 9 bytes", "only 2 remain"]),
        ("prefix-huge", struct.pack("<I", 0xFFFFFFFF) + b"ab", 6, (1,), ["key", "claims 4294967295 bytes"]),
        ("second-prefix-truncated", bytes_tensor(b"a") + b"\x05", 6, (2,), ["key", "truncated BYTES length prefix"]),
        ("not-utf8", bytes_tensor(b"\xff\xfe"), 6, (1,), ["key", "not valid UTF-8"]),
        ("too-few", bytes_tensor(b"a"), 5, (2,), ["key", "1 BYTES elements", "needs 2"]),
        ("too-many", bytes_tensor(b"a", b"b"), 10, (1,), ["key", "2 BYTES elements", "needs 1"]),
        ("empty", b"", 0, (1,), ["key", "0 BYTES elements", "needs 1"]),
    ]:
        binary(f"key-{label}", f"key tensor: {label.replace('-', ' ')}", [T, key(size, shape)], raw4 + tail, needles)
    binary(
        "key-before-features",
        "the tail holds features then key, the header says key then features",
        [key(5), T],
        raw4 + bytes_tensor(b"a"),
        ["key", "claims 1084227584 bytes", "only 1 remain"],
    )
    binary("bad-version", "a binary request to version 'a.b'", [T], raw4, ["'a.b'"], version="a.b")
    binary(
        "bytes-features",
        "features sent as BYTES",
        [tensor(datatype="BYTES", binary_data_size=20)],
        bytes_tensor(b"1", b"2", b"3", b"4"),
        ["features", "BYTES", "FP32"],
    )
    return out


# ---------------------------------------------------------------- v2 gRPC


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def grpc_entries() -> list[dict]:
    out: list[dict] = []

    def call(id, what, rpc, message, code, needles):
        raw = message if isinstance(message, bytes) else message.SerializeToString(deterministic=True)
        out.append(
            {
                "id": f"grpc/{id}",
                "what": what,
                "rpc": rpc,
                "request_b64": base64.b64encode(raw).decode("ascii"),
                "expect_code": code,
                "expect_in_error": list(needles),
            }
        )

    def infer_req(
        model="iris_lr", version="", inputs=(("features", "FP32", (1, 4)),), raw=(f32(5.0, 3.0, 1.5, 0.2),), outputs=(), **parameters
    ):
        r = service_pb2.ModelInferRequest(model_name=model, model_version=version)
        for name, datatype, shape in inputs:
            r.inputs.add(name=name, datatype=datatype, shape=list(shape))
        r.raw_input_contents.extend(raw)
        for name in outputs:
            r.outputs.add(name=name)
        for name, (field, value) in parameters.items():
            setattr(r.parameters[name], field, value)
        return r

    def rows(model, n=1, **kw):
        return infer_req(model, inputs=[("features", "FP32", (n, WIDTH[model]))], raw=[f32(*row(model) * n)], **kw)

    INVALID, NOT_FOUND = "INVALID_ARGUMENT", "NOT_FOUND"
    bad_pb = "not a valid protobuf message"

    # Bytes that are no protobuf of the method's request type.
    garbage = [
        ("ff", b"\xff" * 64, "invalid varint"),
        ("wrong-wire-type", b"\x08\xff\x01", "invalid wire type"),
        ("unterminated-varint", b"\x0a\x80\x80", "invalid varint"),
        ("length-too-short", b"\x0a\x05iris_lr", "end group"),
        ("truncated-length", b"\x0a\x10iris", "buffer underflow"),
        ("wire-type-7", b"\x0f\x00", "invalid wire type"),
        ("field-zero", b"\x02\x00", "invalid tag value: 0"),
        ("group-unclosed", b"\x0b\x08\x01", "StartGroup"),
    ]
    for rpc in ["ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady", "ServerMetadata"]:
        for label, raw, why in garbage:
            if rpc in ("ServerLive", "ServerReady", "ServerMetadata") and label not in ("ff", "truncated-length", "wire-type-7"):
                continue
            call(f"{rpc}-garbage-{label}", f"{rpc} with bytes that are no protobuf ({label})", rpc, raw, INVALID, [bad_pb, why])
    for rpc, field in [
        ("ModelInfer", 1),
        ("ModelInfer", 2),
        ("ModelInfer", 3),
        ("ModelMetadata", 1),
        ("ModelMetadata", 2),
        ("ModelReady", 1),
    ]:
        call(
            f"{rpc}-field{field}-not-utf8",
            f"{rpc} string field {field} with bytes 0xff 0xfe",
            rpc,
            ld(field, b"\xff\xfe"),
            INVALID,
            [bad_pb, "UTF-8"],
        )
    good_infer = infer_req().SerializeToString(deterministic=True)
    for cut in [1, 5, 20, len(good_infer) - 3]:
        call(
            f"ModelInfer-truncated-{cut}",
            f"a valid request cut to {len(good_infer) - cut} of {len(good_infer)} bytes",
            "ModelInfer",
            good_infer[:-cut],
            INVALID,
            [bad_pb],
        )
    shape = ld(3, varint(1) + varint(4))
    call(
        "input-name-not-utf8",
        "an input name with byte 0xff",
        "ModelInfer",
        ld(1, b"iris_lr") + ld(5, ld(1, b"\xff") + ld(2, b"FP32") + shape),
        INVALID,
        [bad_pb, "UTF-8"],
    )
    call(
        "datatype-not-utf8",
        "a datatype with byte 0xc0",
        "ModelInfer",
        ld(1, b"iris_lr") + ld(5, ld(1, b"features") + ld(2, b"FP\xc0") + shape),
        INVALID,
        [bad_pb, "UTF-8"],
    )
    call(
        "parameter-key-not-utf8",
        "a parameter name with byte 0xff",
        "ModelInfer",
        ld(1, b"iris_lr") + ld(4, ld(1, b"\xff") + ld(2, b"\x10\x01")),
        INVALID,
        [bad_pb, "UTF-8"],
    )
    call(
        "output-name-not-utf8",
        "a requested output name with byte 0xff",
        "ModelInfer",
        ld(1, b"iris_lr") + ld(6, ld(1, b"\xff")),
        INVALID,
        [bad_pb, "UTF-8"],
    )
    call(
        "shape-truncated",
        "a packed shape cut inside a varint",
        "ModelInfer",
        ld(1, b"iris_lr") + ld(5, ld(1, b"features") + ld(3, b"\x01\xff")),
        INVALID,
        [bad_pb],
    )
    call(
        "input-length-beyond",
        "an input whose length runs past the message",
        "ModelInfer",
        ld(1, b"iris_lr") + b"\x2a\x7f" + b"\x0a\x02ab",
        INVALID,
        [bad_pb, "buffer underflow"],
    )

    # Models and versions.
    call("infer-empty", "an empty ModelInferRequest", "ModelInfer", b"", NOT_FOUND, ["model ''", "is not in the repository"])
    for name in ["no_such_model", "IRIS_LR", " iris_lr", "iris_lr/1"]:
        call(
            f"infer-unknown-model-{name.strip().replace('/', '-')}{'-space' if name.startswith(' ') else ''}",
            f"model '{name}'",
            "ModelInfer",
            infer_req(model=name),
            NOT_FOUND,
            [f"'{name}'", "is not in the repository"],
        )
    for v, code, needle in [
        ("2", NOT_FOUND, "no version 2"),
        ("0", INVALID, "'0'"),
        ("1.5", INVALID, "'1.5'"),
        ("-3", NOT_FOUND, "no version label '-3'"),
        ("99999999999999999999", INVALID, "'99999999999999999999'"),
        ("canary", NOT_FOUND, "no version label 'canary'"),
        (" 1", INVALID, "' 1'"),
    ]:
        call(f"infer-version-{v.replace(' ', '_')}", f"model_version '{v}'", "ModelInfer", infer_req(version=v), code, [needle])
    call(
        "infer-long-version",
        "a 10 KB version label",
        "ModelInfer",
        infer_req(version="v" * LONG),
        NOT_FOUND,
        ["no version label", "bytes cut"],
    )
    call(
        "metadata-long-version",
        "metadata of a 10 KB version label",
        "ModelMetadata",
        service_pb2.ModelMetadataRequest(name="iris_lr", version="w" * LONG),
        NOT_FOUND,
        ["no version label", "bytes cut"],
    )
    long_model = ["bytes cut", "m' is not in the repository"]
    call("infer-long-model", "a 10 KB model name", "ModelInfer", infer_req(model="m" * LONG), NOT_FOUND, long_model)
    call(
        "metadata-long-model",
        "metadata of a 10 KB model name",
        "ModelMetadata",
        service_pb2.ModelMetadataRequest(name="m" * LONG),
        NOT_FOUND,
        long_model,
    )
    call("metadata-empty", "an empty ModelMetadataRequest", "ModelMetadata", b"", NOT_FOUND, ["model ''", "is not in the repository"])
    call(
        "metadata-unknown-model",
        "metadata of a model that is not served",
        "ModelMetadata",
        service_pb2.ModelMetadataRequest(name="no_such_model"),
        NOT_FOUND,
        ["no_such_model"],
    )
    call(
        "metadata-unknown-version",
        "metadata of version 4",
        "ModelMetadata",
        service_pb2.ModelMetadataRequest(name="breast_cancer_lr", version="4"),
        NOT_FOUND,
        ["no version 4"],
    )
    call(
        "metadata-bad-version",
        "metadata of version 'a.b'",
        "ModelMetadata",
        service_pb2.ModelMetadataRequest(name="iris_lr", version="a.b"),
        INVALID,
        ["'a.b'"],
    )
    call(
        "metadata-zero-version",
        "metadata of version 0",
        "ModelMetadata",
        service_pb2.ModelMetadataRequest(name="iris_lr", version="0"),
        INVALID,
        ["'0'"],
    )

    # Tensors.
    for model, n in [("iris_lr", 3), ("breast_cancer_lr", 31), ("diabetes_linear", 1), ("digits_phase1", 8)]:
        call(
            f"infer-width-{model}-{n}",
            f"{n} features where {model} takes {WIDTH[model]}",
            "ModelInfer",
            infer_req(model, inputs=[("features", "FP32", (1, n))], raw=[f32(*row(model, n))]),
            INVALID,
            ["features", f"[1, {n}]"],
        )
    call("infer-rank-1", "shape [4]", "ModelInfer", infer_req(inputs=[("features", "FP32", (4,))]), INVALID, ["features", "shape"])
    call(
        "infer-rank-3", "shape [1, 1, 4]", "ModelInfer", infer_req(inputs=[("features", "FP32", (1, 1, 4))]), INVALID, ["features", "shape"]
    )
    for label, shape, needle in [
        ("negative", (-1, 4), "negative"),
        ("negative-inner", (1, -4), "negative"),
        ("i64-min", (-(2**63), 4), "negative"),
        ("i64-max", (HUGE, 4), "too many elements"),
        ("product-overflow", (2**32, 2**32), "too many elements"),
        ("large", (1, 2**40), "needs"),
    ]:
        call(
            f"infer-dims-{label}",
            f"shape {list(shape)}",
            "ModelInfer",
            infer_req(inputs=[("features", "FP32", shape)]),
            INVALID,
            ["features", needle],
        )
    call(
        "infer-dims-rows-past-limit",
        "shape [2^40, 4]: more instances than allowed, refused before the data is read",
        "ModelInfer",
        infer_req(inputs=[("features", "FP32", (2**40, 4))]),
        "RESOURCE_EXHAUSTED",
        ["instances exceed the limit"],
    )
    for dt in ["FP33", "", "fp32", "TYPE_FP32"]:
        call(
            f"infer-unknown-dtype-{dt or 'empty'}",
            f"datatype '{dt}'",
            "ModelInfer",
            infer_req(inputs=[("features", dt, (1, 4))]),
            INVALID,
            ["features", f"unknown datatype '{dt}'"],
        )
    call(
        "infer-long-dtype",
        "a 10 KB datatype",
        "ModelInfer",
        infer_req(inputs=[("features", "T" * LONG, (1, 4))]),
        INVALID,
        ["unknown datatype", "bytes cut"],
    )
    call(
        "infer-wrong-dtype",
        "INT64 where FP32 belongs",
        "ModelInfer",
        infer_req(inputs=[("features", "INT64", (1, 4))], raw=[struct.pack("<4q", 1, 2, 3, 4)]),
        INVALID,
        ["features", "INT64", "FP32"],
    )
    call(
        "infer-fp64",
        "FP64 where FP32 belongs",
        "ModelInfer",
        infer_req("diabetes_linear", inputs=[("features", "FP64", (1, 10))], raw=[struct.pack("<10d", *row("diabetes_linear"))]),
        INVALID,
        ["features", "FP64", "FP32"],
    )
    call(
        "infer-raw-short", "12 raw bytes for 16", "ModelInfer", infer_req(raw=[f32(1, 2, 3)]), INVALID, ["features", "12 bytes", "needs 16"]
    )
    call(
        "infer-raw-long",
        "20 raw bytes for 16",
        "ModelInfer",
        infer_req(raw=[f32(1, 2, 3, 4, 5)]),
        INVALID,
        ["features", "20 bytes", "needs 16"],
    )
    call(
        "infer-raw-empty",
        "no raw bytes for one row",
        "ModelInfer",
        infer_req(raw=[b""], inputs=[("features", "FP32", (1, 4)), ("key", "BYTES", (1,))]),
        INVALID,
        ["1 raw_input_contents for 2 inputs"],
    )
    call(
        "infer-raw-extra",
        "two raw_input_contents for one input",
        "ModelInfer",
        infer_req(raw=[f32(1, 2, 3, 4), b"extra"]),
        INVALID,
        ["2 raw_input_contents for 1 inputs"],
    )
    call(
        "infer-raw-without-inputs",
        "raw bytes but no input",
        "ModelInfer",
        infer_req(inputs=[]),
        INVALID,
        ["1 raw_input_contents for 0 inputs"],
    )
    call(
        "infer-nan",
        "a NaN in the raw bytes",
        "ModelInfer",
        infer_req(raw=[f32(1, float("nan"), 3, 4)]),
        INVALID,
        ["features", "contains NaN", "allow_nan"],
    )
    call(
        "infer-neg-inf",
        "-Infinity in the raw bytes",
        "ModelInfer",
        infer_req("breast_cancer_lr", inputs=[("features", "FP32", (1, 30))], raw=[f32(*row("breast_cancer_lr", 29), float("-inf"))]),
        INVALID,
        ["features", "contains -Infinity"],
    )

    def typed(model="iris_lr", datatype="FP32", shape=(1, 4), **contents):
        r = infer_req(model, inputs=[("features", datatype, shape)], raw=[])
        for field, values in contents.items():
            getattr(r.inputs[0].contents, field).extend(values)
        return r

    call("typed-short", "three typed values for four", "ModelInfer", typed(fp32_contents=[1, 2, 3]), INVALID, ["features", "needs 4"])
    call("typed-long", "five typed values for four", "ModelInfer", typed(fp32_contents=[1, 2, 3, 4, 5]), INVALID, ["features", "needs 4"])
    call("typed-none", "an input with no contents at all", "ModelInfer", typed(), INVALID, ["features", "needs 4"])
    call(
        "typed-wrong-field",
        "FP32 values in int64_contents",
        "ModelInfer",
        typed(int64_contents=[1, 2, 3, 4]),
        INVALID,
        ["features", "needs 4"],
    )
    call(
        "typed-int64",
        "typed INT64 where FP32 belongs",
        "ModelInfer",
        typed(datatype="INT64", int64_contents=[1, 2, 3, 4]),
        INVALID,
        ["features", "INT64", "FP32"],
    )
    call(
        "typed-bytes",
        "typed BYTES where FP32 belongs",
        "ModelInfer",
        typed(datatype="BYTES", bytes_contents=[b"1", b"2", b"3", b"4"]),
        INVALID,
        ["features", "BYTES", "FP32"],
    )
    call(
        "typed-fp16",
        "typed FP16, which has no contents field",
        "ModelInfer",
        typed(datatype="FP16"),
        INVALID,
        ["features", "FP16 must be sent in raw_input_contents"],
    )
    call(
        "typed-uint8-300",
        "300 in a UINT8 tensor",
        "ModelInfer",
        typed(datatype="UINT8", uint_contents=[300, 1, 2, 3]),
        INVALID,
        ["features", "does not fit UINT8"],
    )
    call(
        "typed-int8-overflow",
        "-129 in an INT8 tensor",
        "ModelInfer",
        typed(datatype="INT8", int_contents=[-129, 1, 2, 3]),
        INVALID,
        ["features", "does not fit INT8"],
    )
    call(
        "typed-uint16-overflow",
        "65536 in a UINT16 tensor",
        "ModelInfer",
        typed(datatype="UINT16", uint_contents=[65536, 1, 2, 3]),
        INVALID,
        ["features", "does not fit UINT16"],
    )
    call(
        "typed-int16-overflow",
        "40000 in an INT16 tensor",
        "ModelInfer",
        typed(datatype="INT16", int_contents=[40000, 1, 2, 3]),
        INVALID,
        ["features", "does not fit INT16"],
    )
    call(
        "typed-bytes-not-utf8",
        "BYTES contents with byte 0xff",
        "ModelInfer",
        typed(datatype="BYTES", shape=(1,), bytes_contents=[b"\xff"]),
        INVALID,
        ["features", "not valid UTF-8"],
    )
    call(
        "typed-inf",
        "Infinity in typed contents",
        "ModelInfer",
        typed("iris_forest", fp32_contents=[1, 2, float("inf"), 4]),
        INVALID,
        ["features", "contains Infinity"],
    )

    # Input and output names, keys, signatures, parameters.
    call(
        "infer-no-inputs",
        "a model name and nothing else",
        "ModelInfer",
        infer_req(inputs=[], raw=[]),
        INVALID,
        ["missing input", "features"],
    )
    call(
        "infer-duplicate-input",
        "features twice",
        "ModelInfer",
        infer_req(inputs=[("features", "FP32", (1, 4))] * 2, raw=[f32(1, 2, 3, 4)] * 2),
        INVALID,
        ["features", "twice"],
    )
    call(
        "infer-unknown-input",
        "an input the model lacks",
        "ModelInfer",
        infer_req(inputs=[("features", "FP32", (1, 4)), ("sepal", "FP32", (1, 4))], raw=[f32(1, 2, 3, 4)] * 2),
        INVALID,
        ["sepal"],
    )
    call(
        "infer-misnamed-input",
        "'input' instead of 'features'",
        "ModelInfer",
        infer_req(inputs=[("input", "FP32", (1, 4))]),
        INVALID,
        ["input"],
    )
    call(
        "infer-empty-input-name",
        "an input named ''",
        "ModelInfer",
        infer_req(inputs=[("features", "FP32", (1, 4)), ("", "FP32", (1, 4))], raw=[f32(1, 2, 3, 4)] * 2),
        INVALID,
        ["''"],
    )
    call(
        "infer-long-input-name",
        "a 10 KB input name",
        "ModelInfer",
        infer_req(inputs=[("features", "FP32", (1, 4)), ("n" * LONG, "FP32", (1, 4))], raw=[f32(1, 2, 3, 4)] * 2),
        INVALID,
        ["bytes cut", "n' (expected: features)"],
    )
    key_inputs = [("features", "FP32", (1, 4)), ("key", "BYTES", (1,))]
    call(
        "key-count",
        "two keys for one instance",
        "ModelInfer",
        infer_req(inputs=[key_inputs[0], ("key", "BYTES", (2,))], raw=[f32(1, 2, 3, 4), bytes_tensor(b"a", b"b")]),
        INVALID,
        ["2 keys", "1 instances"],
    )
    call(
        "key-not-utf8",
        "a key with bytes 0xff 0xfe",
        "ModelInfer",
        infer_req(inputs=key_inputs, raw=[f32(1, 2, 3, 4), bytes_tensor(b"\xff\xfe")]),
        INVALID,
        ["key", "not valid UTF-8"],
    )
    call(
        "key-prefix-truncated",
        "a key whose length prefix is cut",
        "ModelInfer",
        infer_req(inputs=key_inputs, raw=[f32(1, 2, 3, 4), b"\x03\x00"]),
        INVALID,
        ["key", "truncated BYTES length prefix"],
    )
    call(
        "key-prefix-claims-more",
        "a key claiming 100 bytes",
        "ModelInfer",
        infer_req(inputs=key_inputs, raw=[f32(1, 2, 3, 4), struct.pack("<I", 100) + b"abc"]),
        INVALID,
        ["key", "claims 100 bytes", "only 3 remain"],
    )
    call(
        "key-int64",
        "keys as INT64",
        "ModelInfer",
        infer_req(inputs=[key_inputs[0], ("key", "INT64", (1,))], raw=[f32(1, 2, 3, 4), struct.pack("<q", 1)]),
        INVALID,
        ["key", "BYTES"],
    )
    call("unknown-output", "an output the model lacks", "ModelInfer", infer_req(outputs=["logits"]), INVALID, ["logits"])
    call(
        "long-output-name",
        "a 10 KB output name",
        "ModelInfer",
        infer_req(outputs=["o" * LONG]),
        INVALID,
        ["requested output", "bytes cut", "o' is not an output of model 'iris_lr'"],
    )
    call("empty-output-name", "a requested output named ''", "ModelInfer", infer_req(outputs=[""]), INVALID, ["requested output ''"])
    call(
        "unknown-signature",
        "signature 'classify' on iris_lr",
        "ModelInfer",
        infer_req(signature_name=("string_param", "classify")),
        NOT_FOUND,
        ["'classify'"],
    )
    call(
        "long-signature",
        "a 10 KB signature name",
        "ModelInfer",
        infer_req(signature_name=("string_param", "s" * LONG)),
        NOT_FOUND,
        ["signature", "bytes cut", "s' (available: serving_default)"],
    )
    call(
        "signature-wrong-shape",
        "iris_logits' classify signature with 3 features",
        "ModelInfer",
        infer_req("iris_logits", inputs=[("features", "FP32", (1, 3))], raw=[f32(1, 2, 3)], signature_name=("string_param", "classify")),
        INVALID,
        ["features", "[1, 3]"],
    )
    call("timeout-negative", "timeout -1 µs", "ModelInfer", infer_req(timeout=("int64_param", -1)), INVALID, ["timeout", "non-negative"])
    call(
        "timeout-i64-min",
        "timeout i64::MIN µs",
        "ModelInfer",
        rows("digits_phase1", timeout=("int64_param", -(2**63))),
        INVALID,
        ["timeout", "-9223372036854775808"],
    )
    timeout_type = ["parameter 'timeout' must be an int64 or uint64"]
    for label, value in [("string", ("string_param", "10")), ("bool", ("bool_param", True)), ("double", ("double_param", 1.5))]:
        call(f"timeout-{label}", f"timeout as a {value[0]}", "ModelInfer", infer_req(timeout=value), INVALID, timeout_type)
    for label, value in [("int64", ("int64_param", 5)), ("bool", ("bool_param", True))]:
        call(
            f"signature-{label}",
            f"signature_name as a {value[0]}",
            "ModelInfer",
            infer_req(signature_name=value),
            INVALID,
            ["parameter 'signature_name' must be a string"],
        )
    return out


FILES = {"tfserving.jsonl": tfserving, "v2_json.jsonl": v2_json, "v2_binary.jsonl": v2_binary, "grpc.jsonl": grpc_entries}


def render() -> dict[str, str]:
    """File name -> the JSON Lines text it should hold."""
    return {name: "".join(json.dumps(e, sort_keys=False) + "\n" for e in build()) for name, build in FILES.items()}


if __name__ == "__main__":
    for name, content in render().items():
        (HERE / name).write_text(content, encoding="utf-8")
        print(f"{name}: {content.count(chr(10))} entries, {len(content.encode())} bytes")

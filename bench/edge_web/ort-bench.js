// onnxruntime-web running phase 1 (examples/models/digits_phase1) as Serval's /edge page does,
// so that bench/edge_web/bench.mjs can compare the two in one browser. It reports on <body>
// what crates/serval-edge-web/assets/edge.js reports:
//   data-state      loading, done or error (#status says why)
//   data-ready-ms   runtime and model ready (InferenceSession created), ms since navigation start
//   data-first-ms   first one-instance prediction finished, ms since navigation start
//   data-median-us  with ?bench=N, the median of N one-instance predictions, in microseconds
//   data-model-bytes
// #instances=<JSON Lines, URL-encoded> in the address are the instances ({"features": [64]});
// they are answered at the end in one batch, one line per instance in #answers
// ({"key", "label"}), so that the bench can check both pages give the same classes.

// The wasm-only build without its glue bundled in: it imports ort-wasm-simd-threaded.mjs and
// instantiates ort-wasm-simd-threaded.wasm from wasmPaths, each one more request the bench sees.
import * as ort from "/ort/ort.wasm.min.mjs";

// One thread: Serval's module is single-threaded, and ORT's threads would need
// SharedArrayBuffer, i.e. a cross-origin-isolated page. SIMD on (the default, said here).
ort.env.wasm.numThreads = 1;
ort.env.wasm.simd = true;
ort.env.wasm.proxy = false;
ort.env.wasm.wasmPaths = "/ort/";

const MODEL = "/model.onnx";
const FEATURES = 64;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function status(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state;
}

function parseLines(text) {
  return text.split("\n").map((l) => l.trim()).filter((l) => l).map((line) => JSON.parse(line));
}

// A float32 [rows, 64] tensor of the instances' features.
function tensor(instances) {
  const data = new Float32Array(instances.length * FEATURES);
  instances.forEach((instance, i) => data.set(instance.features, i * FEATURES));
  return new ort.Tensor("float32", data, [instances.length, FEATURES]);
}

// One call, outputs read back (label int64 [rows], probabilities float32 [rows, 11]), as
// Serval's page reads its engine's answers.
async function predict(session, instances) {
  const out = await session.run({ features: tensor(instances) });
  return { label: out.label.data, probabilities: out.probabilities.data };
}

// The median of `n` one-instance predictions, in microseconds (as edge.js computes it).
async function bench(session, instances, n) {
  const times = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    await predict(session, [instances[i % instances.length]]);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return 1000 * times[Math.floor(times.length / 2)];
}

async function main() {
  const instances = parseLines(new URLSearchParams(location.hash.slice(1)).get("instances") ?? "");
  if (instances.length === 0) throw new Error("no #instances= in the address");
  const response = await fetch(MODEL);
  if (!response.ok) throw new Error(`${MODEL}: ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  // The first session downloads and instantiates the runtime, then loads the model.
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  document.body.dataset.readyMs = performance.now().toFixed(1);
  document.body.dataset.modelBytes = bytes.byteLength;

  await predict(session, [instances[0]]);
  document.body.dataset.firstMs = performance.now().toFixed(1);

  const n = Number(params.get("bench") ?? 0);
  if (n > 0) document.body.dataset.medianUs = (await bench(session, instances, n)).toFixed(1);

  const { label } = await predict(session, instances);
  $("answers").textContent = instances
    .map((instance, i) => JSON.stringify({ key: instance.key, label: Number(label[i]) }))
    .join("\n");
  status(`Answered ${instances.length} instances.`, "done");
}

main().catch((e) => status(String(e.message ?? e), "error"));

// The /edge page: phase 1 in this page (Serval's edge runtime compiled to WebAssembly), phase 2
// on the server for what the policy forwards. The engine builds the phase-2 request and reads
// the reply; this script only moves bytes and draws.
//
// For tests and benchmarks the page reports on <body>: data-state (loading, ready, done,
// error), data-ready-ms (engine and model ready) and data-first-ms (first phase-1 answer), both
// from navigation start, and with ?bench=N data-median-us, the median time of N one-instance
// phase-1 predictions. #instances=<JSON Lines, URL-encoded> in the address runs those at once;
// #answers then holds the final answers as JSON Lines.
import init, { Edge } from "/edge/pkg/serval_edge_wasm.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let edge = null;
let model = null;

function status(text, state) {
  $("status").textContent = text;
  if (state) document.body.dataset.state = state;
}

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.text();
  if (!response.ok) {
    let message = body;
    try { message = JSON.parse(body).error ?? body; } catch { /* not JSON: show as is */ }
    throw new Error(`${url}: ${response.status} ${message}`);
  }
  return JSON.parse(body);
}

function parseLines(text) {
  return text.split("\n").map((l) => l.trim()).filter((l) => l).map((line, i) => {
    try { return JSON.parse(line); } catch (e) { throw new Error(`line ${i + 1} is not JSON: ${e.message}`); }
  });
}

// Phase 1 on a JSON array of instances; the first call's end is the time to first prediction.
function judge(instances) {
  const judged = edge.judge(instances);
  if (!document.body.dataset.firstMs) document.body.dataset.firstMs = performance.now().toFixed(1);
  return judged;
}

// Phase 1 here, then phase 2 on the server for the forwarded ones; answers in input order.
async function answer(instances) {
  const judged = JSON.parse(judge(JSON.stringify(instances)));
  const answers = judged.answers;
  render(answers);
  const forward = judged.forward;
  if (forward) {
    const forwarded = forward.at.map((i) => answers[i]);
    try {
      if (!model.phase2) throw new Error("this model's [edge] section names no phase2 model");
      const response = await fetch(model.phase2.infer, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(forward.request),
      });
      const reply = await response.text();
      if (!response.ok) throw new Error(`phase 2 answered ${response.status}: ${reply}`);
      const phase2 = JSON.parse(edge.phase2(JSON.stringify(forwarded), reply));
      forward.at.forEach((i, j) => { answers[i] = phase2[j]; });
    } catch (e) {
      // No queue in a page: the provisional phase-1 answer stands, with the reason.
      for (const a of forwarded) a.error = String(e.message ?? e);
    }
  }
  render(answers);
  return answers;
}

function render(answers) {
  const rows = $("rows");
  rows.replaceChildren(...answers.map((a) => {
    const tr = document.createElement("tr");
    const cell = (text, cls) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
      return td;
    };
    cell(a.key);
    const phase = cell("");
    const badge = document.createElement("span");
    badge.className = a.provisional ? "phase provisional" : `phase phase-${a.phase}`;
    badge.textContent = a.phase === 2 ? "phase 2 · server" : a.provisional ? "phase 1 · provisional" : "phase 1 · this device";
    phase.append(badge);
    tr.dataset.phase = a.phase;
    const label = a.outputs.label ?? a.outputs.classes ?? a.phase1.class;
    cell(Array.isArray(label) ? label.join(", ") : String(label));
    cell(`${a.phase1.class} (${a.phase1.confidence.toFixed(3)})`);
    cell(a.error ?? (a.forwarded ? `forwarded: ${a.forwarded.replaceAll("_", " ")}` : ""), "note");
    return tr;
  }));
  $("results").hidden = answers.length === 0;
  $("answers").textContent = answers.map((a) => JSON.stringify(a)).join("\n");
  document.body.dataset.answered1 = answers.filter((a) => a.phase === 1).length;
  document.body.dataset.answered2 = answers.filter((a) => a.phase === 2).length;
}

// The median of `n` one-instance phase-1 predictions, in microseconds.
function bench(instances, n) {
  const times = [];
  for (let i = 0; i < n; i++) {
    const one = JSON.stringify([instances[i % instances.length]]);
    const start = performance.now();
    judge(one);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return 1000 * times[Math.floor(times.length / 2)];
}

// A drawing pad for a model whose one input is 64 pixels (8 x 8, 0-16, as scikit-learn's digits).
function drawingPad(input) {
  const features = input.shape.slice(1).reduce((a, b) => a * b, 1);
  if (input.shape.length !== 2 || features !== 64) return;
  $("pad-box").hidden = false;
  const pixels = new Array(64).fill(0);
  const cells = [];
  let drawing = false;
  const paint = (i, erase) => {
    pixels[i] = erase ? 0 : Math.min(16, pixels[i] + 8);
    cells[i].style.background = `rgb(${255 - 15 * pixels[i]}, ${255 - 15 * pixels[i]}, ${255 - 15 * pixels[i]})`;
    $("instances").value = JSON.stringify({ [input.name]: pixels });
  };
  for (let i = 0; i < 64; i++) {
    const cell = document.createElement("div");
    cell.addEventListener("mousedown", (e) => { drawing = true; paint(i, e.shiftKey); });
    cell.addEventListener("mouseenter", (e) => { if (drawing) paint(i, e.shiftKey); });
    cells.push(cell);
  }
  document.addEventListener("mouseup", () => { drawing = false; });
  $("pad").replaceChildren(...cells);
  $("clear").addEventListener("click", () => { for (let i = 0; i < 64; i++) paint(i, true); });
}

async function load(name) {
  status(`Loading phase 1 (${name})…`, "loading");
  model = await getJson(`/edge/api/models/${encodeURIComponent(name)}`);
  const [, bytes] = await Promise.all([
    init({ module_or_path: "/edge/pkg/serval_edge_wasm_bg.wasm" }),
    fetch(model.file).then((r) => {
      if (!r.ok) throw new Error(`${model.file}: ${r.status}`);
      return r.arrayBuffer();
    }),
  ]);
  edge?.free();
  edge = new Edge(name, new Uint8Array(bytes), JSON.stringify(model.config), model.phase2?.key ?? "key");
  document.body.dataset.readyMs = performance.now().toFixed(1);
  document.body.dataset.modelBytes = bytes.byteLength;
  const described = JSON.parse(edge.describe());
  if (described.inputs.length === 1) drawingPad(described.inputs[0]);
  const phase2 = model.phase2 ? `phase 2: ${model.phase2.model} on this server` : "no phase 2 configured";
  status(`Ready: ${name} version ${model.version} runs in this page; ${phase2}.`, "ready");
  $("input").hidden = false;
}

async function main() {
  const list = await getJson("/edge/api/models");
  if (!list.engine.available) {
    status(`This server was built without the browser engine: ${list.engine.why}`, "error");
    return;
  }
  if (list.models.length === 0) {
    status("No model in this repository is offered to browsers: give phase 1 an [edge] section in its config.toml.", "error");
    return;
  }
  const select = $("model");
  select.replaceChildren(...list.models.map((m) => new Option(`${m.name} (version ${m.version})`, m.name)));
  // The address may name a model the list does not offer: the server then says why.
  const name = params.get("model") ?? list.models[0].name;
  select.value = name;
  select.addEventListener("change", () => load(select.value).catch(fail));
  await load(name);

  const hash = new URLSearchParams(location.hash.slice(1));
  const given = hash.get("instances");
  if (given !== null) {
    $("instances").value = given;
    const instances = parseLines(given);
    const n = Number(params.get("bench") ?? 0);
    if (n > 0) document.body.dataset.medianUs = bench(instances, n).toFixed(1);
    await answer(instances);
    status(`Answered ${instances.length} instances.`, "done");
  }
  $("predict").addEventListener("click", async () => {
    try {
      const instances = parseLines($("instances").value);
      await answer(instances);
      status(`Answered ${instances.length} instances.`, "done");
    } catch (e) { fail(e); }
  });
}

function fail(e) {
  status(String(e.message ?? e), "error");
}

main().catch(fail);

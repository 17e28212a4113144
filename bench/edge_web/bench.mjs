// Helper of bench/edge_web.sh: Serval's /edge page and ort.html (onnxruntime-web) on the same
// phase-1 model, in one headless Chromium, each run in a fresh browser context (cold cache).
//
//   node bench.mjs --serval URL [--only serval] [--runs R (5)] [--bench N (500)]
//                  [--instances I (200)] [--chromium PATH (/usr/bin/chromium)]
//                  [--json OUT.json] [--md OUT.md] [--command CMD] [--serval-bin DESCRIPTION]
//   node bench.mjs --only ort [...]      # onnxruntime-web alone (no Serval server)
//
// The report goes to stdout (and OUT.md), the results with every run's requests to OUT.json;
// the exit status is 1 when a run did not end in data-state done (its #status, console and
// requests are printed).
//
// ort.html, ort-bench.js, onnxruntime-web's wasm build and the model are served by a static
// server here (127.0.0.1, OS-picked port) that serves them as Serval's server serves their
// counterparts: the .wasm gzip-compressed (zlib level 9, compressed once at start) to requests
// that accept gzip, with Content-Encoding: gzip; JavaScript, HTML and the model uncompressed.
// The byte counts therefore differ by the runtimes' files, not by the servers' policies; the
// gzip -9 size of every file is printed too, for what compressing the rest would save.
//
// Per run: navigate to the page with ?bench=N and #instances= (the first I lines of
// examples/data/digits_two_phase.jsonl), wait (at most 60 s) for <body data-state> done or
// error, then read data-ready-ms, data-first-ms and data-median-us, and the bytes of every
// request from the DevTools protocol: Network.loadingFinished's encodedDataLength (what came
// over the wire: body as sent, gzip where served so, plus response headers) and the sum of
// Network.dataReceived's dataLength (the decoded body), grouped by wasm / js / model / other
// (the page, CSS, Serval's JSON API and its phase-2 reply). Either page's document gets
// Cross-Origin-Opener-Policy and -Embedder-Policy headers on its way in (the DevTools Fetch
// domain), so that performance.now() has 5 µs steps rather than 100. Runs alternate between
// the two pages; the report gives the medians over runs.
import { createServer } from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";
import os from "node:os";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const DIST = join(HERE, "node_modules/onnxruntime-web/dist");
const MODEL = join(ROOT, "examples/models/digits_phase1/1/model.onnx");
const DATA = join(ROOT, "examples/data/digits_two_phase.jsonl");
const TIMEOUT_MS = 60_000;
const ISOLATION = [
  { name: "Cross-Origin-Opener-Policy", value: "same-origin" },
  { name: "Cross-Origin-Embedder-Policy", value: "require-corp" },
];

const { values: opt } = parseArgs({
  options: {
    serval: { type: "string" },
    only: { type: "string" },
    runs: { type: "string", default: "5" },
    bench: { type: "string", default: "500" },
    instances: { type: "string", default: "200" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    json: { type: "string" },
    md: { type: "string" },
    command: { type: "string" },
    "serval-bin": { type: "string" },
  },
});
const SYSTEMS = opt.only ? [opt.only] : ["serval", "ort"];
if (!SYSTEMS.every((s) => s === "serval" || s === "ort")) throw new Error(`--only ort or --only serval, not ${opt.only}`);
if (SYSTEMS.includes("serval") && !opt.serval) throw new Error("--serval URL is required (or --only ort)");
const RUNS = Number(opt.runs);
const N = Number(opt.bench);

const version = (pkg) => JSON.parse(readFileSync(join(HERE, "node_modules", pkg, "package.json"), "utf8")).version;
const gzip9 = (bytes) => gzipSync(bytes, { level: 9 }).length;

// ----------------------------------------------------------------------------- the static server

// What ort.html loads, by path; anything else is a 404 (and logged: a file the page asks for
// that is not here would be a change in onnxruntime-web to look at).
const FILES = {
  "/ort.html": [join(HERE, "ort.html"), "text/html; charset=utf-8"],
  "/ort-bench.js": [join(HERE, "ort-bench.js"), "text/javascript; charset=utf-8"],
  "/ort/ort.wasm.min.mjs": [join(DIST, "ort.wasm.min.mjs"), "text/javascript; charset=utf-8"],
  "/ort/ort-wasm-simd-threaded.mjs": [join(DIST, "ort-wasm-simd-threaded.mjs"), "text/javascript; charset=utf-8"],
  "/ort/ort-wasm-simd-threaded.wasm": [join(DIST, "ort-wasm-simd-threaded.wasm"), "application/wasm"],
  "/model.onnx": [MODEL, "application/octet-stream"],
};
const served = Object.fromEntries(
  Object.entries(FILES).map(([path, [file, type]]) => {
    const body = readFileSync(file);
    return [path, { type, body, gz: type === "application/wasm" ? gzipSync(body, { level: 9 }) : null }];
  }),
);

function serve() {
  const server = createServer((req, res) => {
    const file = served[new URL(req.url, "http://x").pathname];
    if (!file) {
      console.error(`static server: 404 ${req.url}`);
      res.writeHead(404).end();
      return;
    }
    const headers = { "content-type": file.type };
    let body = file.body;
    if (file.gz) {
      headers.vary = "accept-encoding";
      if (/\bgzip\b/.test(req.headers["accept-encoding"] ?? "")) {
        headers["content-encoding"] = "gzip";
        body = file.gz;
      }
    }
    headers["content-length"] = body.length;
    res.writeHead(200, headers).end(body);
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

// ----------------------------------------------------------------------------- one run

function kind(url) {
  const path = new URL(url).pathname;
  if (path.endsWith(".wasm")) return "wasm";
  if (path.endsWith(".js") || path.endsWith(".mjs")) return "js";
  if (path.endsWith(".onnx")) return "model";
  return "other";
}

// One page load in a fresh context: its data attributes, #status and #answers, its requests'
// bytes, and what it wrote to the console.
async function run(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const console_ = [];
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console_.push(`${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => console_.push(`uncaught: ${e.message}`));
  const cdp = await context.newCDPSession(page);
  const requests = new Map();
  cdp.on("Network.requestWillBeSent", (e) => {
    requests.set(e.requestId, { url: e.request.url, method: e.request.method, encoded: 0, decoded: 0, finished: false });
  });
  cdp.on("Network.responseReceived", (e) => { const r = requests.get(e.requestId); if (r) r.status = e.response.status; });
  cdp.on("Network.dataReceived", (e) => { const r = requests.get(e.requestId); if (r) r.decoded += e.dataLength; });
  cdp.on("Network.loadingFinished", (e) => {
    const r = requests.get(e.requestId);
    if (r) Object.assign(r, { encoded: e.encodedDataLength, finished: true });
  });
  cdp.on("Network.loadingFailed", (e) => {
    const r = requests.get(e.requestId);
    if (r) Object.assign(r, { failed: e.errorText, finished: true });
  });
  await cdp.send("Network.enable");
  // Cross-origin isolation for the page: outside it Chromium rounds performance.now() to
  // 100 µs, too coarse for one prediction; inside, to 5 µs. Neither server sends the headers,
  // so either page's document gets the same two on its way in (fulfilled with its own body:
  // Fetch.continueResponse's header changes do not make a page isolated).
  cdp.on("Fetch.requestPaused", async (e) => {
    const { body } = await cdp.send("Fetch.getResponseBody", { requestId: e.requestId });
    await cdp.send("Fetch.fulfillRequest", {
      requestId: e.requestId,
      responseCode: e.responseStatusCode,
      responseHeaders: [...e.responseHeaders, ...ISOLATION],
      body,
    });
  });
  await cdp.send("Fetch.enable", { patterns: [{ resourceType: "Document", requestStage: "Response" }] });
  await page.goto(url);
  let result;
  try {
    await page.waitForFunction(() => ["done", "error"].includes(document.body?.dataset.state), null, { timeout: TIMEOUT_MS });
    result = await page.evaluate(() => ({
      ...document.body.dataset,
      isolated: crossOriginIsolated,
      status: document.getElementById("status")?.textContent,
      answers: document.getElementById("answers")?.textContent ?? "",
    }));
  } catch (e) {
    result = { state: "timeout", status: `no data-state done or error after ${TIMEOUT_MS / 1000} s: ${e.message}` };
  }
  // The last loadingFinished events may still be on their way.
  for (let i = 0; i < 20 && [...requests.values()].some((r) => !r.finished); i++) await new Promise((ok) => setTimeout(ok, 100));
  await context.close();

  const bytes = { encoded: {}, decoded: {} };
  for (const k of ["wasm", "js", "model", "other", "total"]) bytes.encoded[k] = bytes.decoded[k] = 0;
  for (const r of requests.values()) {
    for (const [which, n] of [["encoded", r.encoded], ["decoded", r.decoded]]) {
      bytes[which][kind(r.url)] += n;
      bytes[which].total += n;
    }
  }
  return {
    state: result.state,
    status: result.status,
    isolated: result.isolated,
    ready_ms: num(result.readyMs),
    first_ms: num(result.firstMs),
    median_us: num(result.medianUs),
    model_bytes: num(result.modelBytes),
    bytes,
    requests: [...requests.values()].map(({ url, method, status, encoded, decoded, finished, failed }) =>
      ({ path: new URL(url).pathname, method, status, encoded, decoded, ...(finished ? {} : { unfinished: true }), ...(failed ? { failed } : {}) })),
    console: console_,
    answers: result.answers ?? "",
  };
}

const num = (s) => (s === undefined || s === "" ? null : Number(s));

function median(xs) {
  const s = xs.filter((x) => x !== null).sort((a, b) => a - b);
  if (s.length === 0) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// ----------------------------------------------------------------------------- the bench

// Both pages must give phase 1's classes for the same instances: Serval's answers carry
// phase1.class (a label); onnxruntime's the model's label output (an index into class_labels).
function agreement(servalAnswers, ortAnswers, labels) {
  const ort = new Map(ortAnswers.split("\n").filter((l) => l).map((l) => JSON.parse(l)).map((a) => [a.key, labels[a.label]]));
  const serval = servalAnswers.split("\n").filter((l) => l).map((l) => JSON.parse(l));
  return { same: serval.filter((a) => ort.get(a.key) === a.phase1.class).length, of: serval.length };
}

async function main() {
  const lines = readFileSync(DATA, "utf8").split("\n").filter((l) => l.trim()).slice(0, Number(opt.instances));
  const hash = `#instances=${encodeURIComponent(lines.join("\n"))}`;
  const server = await serve();
  const urls = {
    serval: `${opt.serval}/edge?model=digits_phase1&bench=${N}${hash}`,
    ort: `http://127.0.0.1:${server.address().port}/ort.html?bench=${N}${hash}`,
  };

  // Every file's bytes and gzip -9 bytes (zlib, here), Serval's as its server sends them to a
  // client that accepts no encoding.
  const files = [];
  if (SYSTEMS.includes("ort")) {
    for (const [path, f] of Object.entries(served)) if (path !== "/model.onnx") files.push({ system: "ort", path, bytes: f.body.length, gzip9: gzip9(f.body) });
  }
  let labels = null;
  if (SYSTEMS.includes("serval")) {
    for (const path of ["/edge", "/edge/edge.js", "/edge/edge.css", "/edge/pkg/serval_edge_wasm.js", "/edge/pkg/serval_edge_wasm_bg.wasm"]) {
      const r = await fetch(opt.serval + path, { headers: { "accept-encoding": "identity" } });
      if (!r.ok) throw new Error(`${opt.serval}${path}: ${r.status}`);
      const body = Buffer.from(await r.arrayBuffer());
      files.push({ system: "serval", path, bytes: body.length, gzip9: gzip9(body) });
    }
    labels = (await (await fetch(`${opt.serval}/edge/api/models/digits_phase1`)).json()).config.class_labels;
  }
  const model = readFileSync(MODEL);
  files.push({ system: "both", path: "examples/models/digits_phase1/1/model.onnx", bytes: model.length, gzip9: gzip9(model) });
  console.log("file bytes and gzip -9 bytes (Node zlib):");
  for (const f of files) console.log(`  ${f.system.padEnd(6)} ${f.path.padEnd(44)} ${String(f.bytes).padStart(10)} ${String(f.gzip9).padStart(10)}`);

  const load_at_start = os.loadavg();
  const browser = await chromium.launch({ executablePath: opt.chromium, headless: true, args: ["--no-sandbox"] });
  const runs = Object.fromEntries(SYSTEMS.map((s) => [s, []]));
  for (let i = 0; i < RUNS; i++) {
    for (const system of SYSTEMS) {
      const r = await run(browser, urls[system]);
      runs[system].push(r);
      console.log(`run ${i + 1}/${RUNS} ${system.padEnd(6)} ${r.state}: ready ${r.ready_ms} ms, first ${r.first_ms} ms, ` +
        `median ${r.median_us} µs, ${r.bytes.encoded.total} B over the wire (wasm ${r.bytes.encoded.wasm}, model ${r.bytes.encoded.model})`);
      if (r.state !== "done") {
        console.log(`  #status: ${r.status}`);
        for (const c of r.console) console.log(`  console ${c}`);
        for (const q of r.requests) console.log(`  ${q.method} ${q.path} ${q.status ?? ""} ${q.failed ?? ""}${q.unfinished ? " (unfinished)" : ""}`);
      }
    }
  }
  const chromiumVersion = browser.version();
  await browser.close();
  server.close();

  const failed = SYSTEMS.flatMap((s) => runs[s].filter((r) => r.state !== "done").map(() => s));
  const summary = Object.fromEntries(SYSTEMS.map((s) => {
    const rs = runs[s].filter((r) => r.state === "done");
    const m = (f) => median(rs.map(f));
    return [s, {
      runs_done: rs.length,
      encoded: Object.fromEntries(["total", "wasm", "model", "js", "other"].map((k) => [k, m((r) => r.bytes.encoded[k])])),
      decoded: Object.fromEntries(["total", "wasm", "model", "js", "other"].map((k) => [k, m((r) => r.bytes.decoded[k])])),
      wasm_and_model: m((r) => r.bytes.encoded.wasm + r.bytes.encoded.model),
      first_ms: m((r) => r.first_ms),
      ready_ms: m((r) => r.ready_ms),
      median_us: m((r) => r.median_us),
    }];
  }));
  const done = (s) => runs[s]?.find((r) => r.state === "done");
  const agree = done("serval") && done("ort") ? agreement(done("serval").answers, done("ort").answers, labels) : null;
  if (agree) console.log(`same phase-1 class on both pages: ${agree.same} of ${agree.of} instances`);

  const results = {
    date: new Date().toISOString(),
    command: opt.command ?? null,
    serval: opt["serval-bin"] ?? null,
    chromium: `${chromiumVersion} (${opt.chromium}, headless)`,
    onnxruntime_web: version("onnxruntime-web"),
    playwright_core: version("playwright-core"),
    machine: { cpu: os.cpus()[0]?.model, nproc: os.cpus().length, load_at_start, load_at_end: os.loadavg() },
    settings: { runs: RUNS, bench: N, instances: lines.length, timeout_s: TIMEOUT_MS / 1000 },
    bytes_measure: "DevTools protocol: Network.loadingFinished encodedDataLength (wire: body as sent plus response headers), " +
      "sum of Network.dataReceived dataLength (decoded body)",
    files,
    agreement: agree,
    summary,
    runs: Object.fromEntries(SYSTEMS.map((s) => [s, runs[s].map(({ answers, ...r }) => r)])),
  };
  if (opt.json) writeFileSync(opt.json, JSON.stringify(results, null, 2) + "\n");
  if (opt.md) writeFileSync(opt.md, report(results));
  console.log(report(results));
  if (failed.length) {
    console.error(`error: ${failed.length} run(s) did not end in data-state done: ${failed.join(", ")}`);
    process.exit(1);
  }
}

// ----------------------------------------------------------------------------- the report

const NAMES = { serval: "Serval /edge (tract → wasm)", ort: "onnxruntime-web (wasm build)" };
const n0 = (x) => (x === null ? "–" : Math.round(x).toLocaleString("en-US"));
const n1 = (x) => (x === null ? "–" : x.toFixed(1));

function report(r) {
  const s = r.settings;
  const out = [
    "# Phase 1 in the browser: Serval's /edge page against onnxruntime-web",
    "",
    `- machine: ${r.machine.cpu}, nproc ${r.machine.nproc}; load average ${r.machine.load_at_start.map((l) => l.toFixed(2)).join(" ")} at start, ` +
      `${r.machine.load_at_end.map((l) => l.toFixed(2)).join(" ")} at end`,
    `- Chromium ${r.chromium}, driven by playwright-core ${r.playwright_core}`,
    `- onnxruntime-web ${r.onnxruntime_web}: dist/ort.wasm.min.mjs with ort-wasm-simd-threaded.{mjs,wasm}, numThreads 1, SIMD, no proxy worker`,
  ];
  if (r.serval) {
    const debug = r.serval.includes("/debug/") ? "a debug server binary: " : "";
    out.push(`- serval: ${r.serval}; ${debug}the page's module is always built with the workspace's \`wasm\` profile ` +
      "(crates/serval-edge-web/build.rs), whatever the profile of the server binary");
  }
  if (r.command) out.push(`- command: \`${r.command}\``);
  out.push(
    "",
    `The phase-1 model examples/models/digits_phase1 (${n0(r.files.at(-1).bytes)} bytes, an sklearn MLP) in both pages; ${s.runs} runs of each page, ` +
      "alternating, each in a fresh browser context (cold cache); medians over the runs. " +
      `Each run: ${s.bench} one-instance predictions (the median time of one), then the first ${s.instances} lines of ` +
      "examples/data/digits_two_phase.jsonl answered (Serval: phase 2 on the server for what its policy forwards). " +
      "Bytes: what came over the wire (DevTools protocol, Network.loadingFinished encodedDataLength: the body as sent, " +
      "plus response headers); both servers send the .wasm gzip-compressed and everything else uncompressed. " +
      "Times from navigation start; ready: runtime and model loaded; first prediction: the first one-instance prediction done. " +
      "One prediction: Serval, `edge.judge` on the instance as JSON (phase 1 and its policy, answers back as JSON); " +
      "onnxruntime-web, a Float32Array [1, 64] tensor, `await session.run`, both outputs read. Both pages are made " +
      "cross-origin isolated (COOP and COEP headers added to their documents by the bench) so that performance.now() " +
      "has 5 µs steps, not 100 µs.",
    "",
    "| system | downloaded (total) | wasm | model | js | time to first prediction (ms) | ready (ms) | median latency (µs) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  );
  for (const [system, m] of Object.entries(r.summary)) {
    out.push(`| ${NAMES[system]} | ${n0(m.encoded.total)} | ${n0(m.encoded.wasm)} | ${n0(m.encoded.model)} | ${n0(m.encoded.js)} | ` +
      `${n1(m.first_ms)} | ${n1(m.ready_ms)} | ${n1(m.median_us)} |`);
  }
  out.push(
    "",
    "Decoded (uncompressed) bytes of the same requests:",
    "",
    "| system | total | wasm | model | js | other |",
    "|---|---:|---:|---:|---:|---:|",
  );
  for (const [system, m] of Object.entries(r.summary)) {
    out.push(`| ${NAMES[system]} | ${n0(m.decoded.total)} | ${n0(m.decoded.wasm)} | ${n0(m.decoded.model)} | ${n0(m.decoded.js)} | ${n0(m.decoded.other)} |`);
  }
  out.push("", "Each file and its gzip -9 size (Node zlib), to check the above against:", "", "| system | file | bytes | gzip -9 |", "|---|---|---:|---:|");
  for (const f of r.files) out.push(`| ${f.system} | ${f.path} | ${n0(f.bytes)} | ${n0(f.gzip9)} |`);
  if (r.agreement) out.push("", `Both pages give the same phase-1 class for ${r.agreement.same} of the ${r.agreement.of} instances.`);
  return out.join("\n") + "\n";
}

await main();

#!/usr/bin/env bash
# Phase 1 in the browser: Serval's /edge page (tract compiled to WebAssembly, the module built
# into the serval binary) against onnxruntime-web's WebAssembly build on the same model
# (examples/models/digits_phase1), in the same headless Chromium (examples/README.md,
# "Two-phase predictions (digits)").
#
#   bash bench/edge_web.sh      # writes bench/results/edge_web.json and edge_web.md (~1 min)
#
# 1. `npm ci` in bench/edge_web (exact-pinned onnxruntime-web and playwright-core; Playwright
#    drives the Chromium installed here and never downloads a browser).
# 2. `serval serve examples/models` on loopback (OS-picked ports, ready when /v2/health/ready
#    and digits_phase2's ready answer 200).
# 3. bench/edge_web/bench.mjs (its header says exactly what it measures): a static server for
#    bench/edge_web/ort.html, onnxruntime-web's dist files and the model, serving the .wasm
#    gzip-compressed (level 9) as Serval serves its module; then BENCH_RUNS runs of each page,
#    alternating, each in a fresh browser context (cold cache): Serval's
#    /edge?model=digits_phase1&bench=500 and ort.html?bench=500, both with the first 200 lines
#    of examples/data/digits_two_phase.jsonl in #instances=. Each page reports on <body> when the
#    runtime and model were ready and when its first prediction was done (ms since navigation
#    start) and the median of 500 one-instance predictions (µs); the DevTools protocol gives
#    the bytes of every request, over the wire and decoded. Both documents get COOP and COEP
#    headers on their way in, for performance.now() in 5 µs steps (100 µs outside cross-origin
#    isolation). Medians over the runs, and every file's gzip -9 size (Node zlib) to check them
#    against.
#
# The page's module is always built with the workspace's `wasm` profile (crates/serval-edge-web/
# build.rs), so a debug serval binary measures the same module; only the server is slower, and
# it only serves files here, and phase 2 for the instances phase 1 forwards (not timed).
#
# Environment:
#   SERVAL_BIN   the serval binary (default: ${CARGO_TARGET_DIR:-target}/release/serval)
#   CHROMIUM     the browser (default /usr/bin/chromium; apt-get install -y chromium)
#   BENCH_RUNS   runs of each page (5; the medians are reported)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
# The command as run, with the settings that came from the environment.
COMMAND=$(for v in SERVAL_BIN CHROMIUM BENCH_RUNS; do [[ -z ${!v:-} ]] || printf '%s=%q ' "$v" "${!v}"; done
  printf '%q ' bash bench/edge_web.sh "$@")
COMMAND=${COMMAND% }
[[ ${1:-} != -h && ${1:-} != --help ]] || { sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
(($# == 0)) || die "no arguments (see --help); settings come from the environment"

QUICK=0
RUNS=${BENCH_RUNS:-5}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
bench_init edge_web serval-edge-web

log "tools"
for tool in node npm curl; do command -v "$tool" >/dev/null || die "$tool is required"; done
[[ -x $CHROMIUM ]] || die "no browser at $CHROMIUM: apt-get install -y chromium, or CHROMIUM=PATH"
BIN=${SERVAL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/serval}
[[ -x $BIN ]] || die "no serval binary at $BIN: cargo build --release -p serval-cli --bin serval, or SERVAL_BIN=PATH"
# A private copy: a concurrent build must not swap it mid-run.
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/serval"
SERVAL=$WORK/bin/serval
VERSION=$("$SERVAL" --version 2>/dev/null | head -1 || true)
log "  serval: $BIN ($VERSION); browser: $CHROMIUM"
# No install scripts: none of the two packages needs one (Playwright's core downloads nothing).
(cd bench/edge_web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

log "serval serve examples/models"
start_server "$WORK/serval.log" env SERVAL_LOG=warn "$SERVAL" serve examples/models --host 127.0.0.1 \
  --http-port 0 --grpc-port 0
ADDR=$(wait_for_line "$WORK/serval.log" 'serval listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
wait_for_url "http://$ADDR/v2/health/ready" "$SERVER_PID"
wait_for_url "http://$ADDR/v2/models/digits_phase2/ready" "$SERVER_PID"
log "  at $ADDR"

log "$RUNS runs of each page"
mkdir -p "$OUT_DIR"
node bench/edge_web/bench.mjs --serval "http://$ADDR" --runs "$RUNS" --chromium "$CHROMIUM" \
  --json "$RESULTS" --md "$REPORT" --command "$COMMAND" --serval-bin "$BIN ($VERSION)"
stop_server "$SERVER_PID"
log "wrote $RESULTS and $REPORT"

#!/usr/bin/env bash
# The server-side cascade against phase 2 alone, in one run on one server: what digits_cascade
# (examples/models/digits_cascade: `kind = "cascade"`, phase 1 digits_phase1 and its [edge]
# policy, phase 2 digits_phase2) answers and saves, and what it costs against sending
# everything to the big model (examples/README.md, "Two-phase predictions (digits)").
#
#   bash bench/cascade.sh        # writes bench/results/cascade.json and cascade.md (~1 min)
#
# Throughput, latencies and compute times must be taken with a release binary (cargo build
# --release -p serval-cli --bin serval; this script never builds). A debug binary runs the whole
# script (the answers, accuracy and the share answered by phase 2 do not depend on the build) but
# its timings mean nothing: the results say so when the binary's path has /debug/ in it or
# BENCH_DEBUG_BINARY=1.
#
# One `serval serve examples/models` on loopback (OS-picked ports, read from its `serval
# listening http=...` line; ready when /v2/health/ready answers and POST /v2/repository/index
# has digits_cascade, digits_phase1 and digits_phase2 READY), then:
# 1. Answers: the 1080 lines of examples/data/digits_two_phase.jsonl to digits_cascade,
#    digits_phase2 and digits_phase1 by v2 REST JSON (POST /v2/models/M/infer, `features` FP32
#    [64, 64] and `key` BYTES), 64 instances per request, one request at a time. The share
#    answered by phase 2 (the cascade's `phase` output); end-to-end accuracy of the cascade, of
#    phase 2 alone and of phase 1 alone (the top of `probabilities` as its class_labels) against
#    examples/data/digits_two_phase_labels.jsonl, joined by key; the cascade's answers checked
#    against the phases' own with the policy applied by the helper; the server's compute per
#    instance (GET /v2/models/M/stats before and after).
# 2. Cost: a closed loop of CASCADE_CLIENTS clients (Python threads, keep-alive http.client) for
#    CASCADE_SECONDS s on each of digits_cascade, digits_phase2 and digits_phase1, requests of 64
#    instances cycling over the 1080 rows: requests/s, instances/s, p50/p99 latency, and the
#    server's compute per instance (Δ compute_infer.ns / Δ inference_count of /stats).
#
# Environment:
#   SERVAL_BIN          the serval binary (default: ${CARGO_TARGET_DIR:-target}/release/serval)
#   PY                  a Python with numpy and onnxruntime (default python3; pip install -r
#                       tests/protocol/requirements.txt); its onnxruntime's library is the server's
#   CASCADE_CLIENTS     concurrent clients of the closed loop (4)
#   CASCADE_SECONDS     seconds of closed loop per model (10)
#   BENCH_LOAD_MAX (0.7), BENCH_LOAD_WAIT (60 s): before the closed loops, wait until the 1-minute
#                       load average is below BENCH_LOAD_MAX, at most BENCH_LOAD_WAIT s, then
#                       measure anyway and record the load.
#   BENCH_DEBUG_BINARY  1: the binary is a debug build (when its path does not say so)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
# The command as run, with the settings that came from the environment.
COMMAND=$(for v in SERVAL_BIN PY CASCADE_CLIENTS CASCADE_SECONDS BENCH_LOAD_MAX BENCH_LOAD_WAIT BENCH_DEBUG_BINARY; do
  [[ -z ${!v:-} ]] || printf '%s=%q ' "$v" "${!v}"
done; printf '%q ' bash bench/cascade.sh "$@")
COMMAND=${COMMAND% }
[[ ${1:-} != -h && ${1:-} != --help ]] || { sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
(($# == 0)) || die "no arguments (see --help); settings come from the environment"

QUICK=0
CLIENTS=${CASCADE_CLIENTS:-4}
RUN_S=${CASCADE_SECONDS:-10}
BATCH=64
LOAD_MAX=${BENCH_LOAD_MAX:-0.7}
LOAD_WAIT=${BENCH_LOAD_WAIT:-60}
CASCADE=digits_cascade
PHASE1=digits_phase1
PHASE2=digits_phase2
bench_init cascade serval-cascade
HELPER=$ROOT/bench/python/cascade_bench.py

log "tools"
command -v curl >/dev/null || die "curl is required"
PY=${PY:-python3}
"$PY" -c 'import numpy, onnxruntime' 2>/dev/null ||
  die "$PY lacks numpy or onnxruntime: pip install -r tests/protocol/requirements.txt, or PY=..."
# serval loads the same ONNX Runtime build as the Python side (for the server's ort models).
ORT_DYLIB_PATH=$(ort_lib)
[[ -n $ORT_DYLIB_PATH ]] || die "the onnxruntime package of $PY ships no libonnxruntime.so"
export ORT_DYLIB_PATH

BIN=${SERVAL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/serval}
[[ -x $BIN ]] || die "no serval binary at $BIN: cargo build --release -p serval-cli --bin serval, or SERVAL_BIN=PATH"
# The server runs a private copy: a build finishing meanwhile must not swap it mid-run.
SERVAL=$WORK/serval
cp "$BIN" "$SERVAL"
DEBUG_BINARY=false
if [[ $(readlink -f "$BIN") == */debug/* || ${BENCH_DEBUG_BINARY:-0} == 1 ]]; then
  DEBUG_BINARY=true
  log "warning: $BIN is a debug build: its throughput, latencies and compute times mean nothing"
fi
VERSION=$("$SERVAL" --version 2>/dev/null | head -1 || true)
log "  serval: $BIN ($VERSION); python: $PY"

"$PY" "$HELPER" machine "$WORK/machine.json" clients="$CLIENTS" seconds="$RUN_S" batch="$BATCH" \
  load_max="$LOAD_MAX" load_wait_s="$LOAD_WAIT" quick=false
# set_field KEY JSON / set_text KEY TEXT: one field of the results file's head.
set_field() { "$PY" "$HELPER" set "$WORK/machine.json" "$1" "$2"; }
set_text() { set_field "$1" "$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$2")"; }
set_text command "$COMMAND"
set_text serval "$BIN ($VERSION)"
set_field debug_binary "$DEBUG_BINARY"

log "serval serve examples/models"
start_server "$WORK/serval.log" env SERVAL_LOG=warn "$SERVAL" serve examples/models --host 127.0.0.1 \
  --http-port 0 --grpc-port 0
ADDR=$(wait_for_line "$WORK/serval.log" 'serval listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
URL=http://$ADDR
wait_for_url "$URL/v2/health/ready" "$SERVER_PID"
"$PY" "$HELPER" ready "$URL" "$CASCADE" "$PHASE1" "$PHASE2"
log "  at $ADDR"

# ----------------------------------------------------------------------------- 1. answers

log "1. answers of $CASCADE, $PHASE2 and $PHASE1 ($BATCH instances per request)"
"$PY" "$HELPER" accuracy "$RECORDS" --server "$URL" --batch "$BATCH" \
  --cascade "$CASCADE" --phase1 "$PHASE1" --phase2 "$PHASE2"

# ----------------------------------------------------------------------------- 2. cost

log "2. closed loop, $CLIENTS clients, $RUN_S s per model"
wait_quiet
set_field cost_load1 "$SERIES_LOAD"
for run in cascade:$CASCADE phase2:$PHASE2 phase1:$PHASE1; do
  role=${run%%:*} model=${run#*:}
  "$PY" "$HELPER" load "$RECORDS" --server "$URL" --model "$model" --watch "$CASCADE" --watch "$PHASE1" \
    --watch "$PHASE2" -c "$CLIENTS" --seconds "$RUN_S" --batch "$BATCH" role="$role" load1="$(load1)"
done
stop_server "$SERVER_PID"

# ----------------------------------------------------------------------------- results

bench_finish "$HELPER"

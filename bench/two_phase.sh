#!/usr/bin/env bash
# Two-phase predictions in one run: what quantization does to the phase-1 file, what phase 1 costs
# on one core, and what the two-phase system gives end to end (examples/README.md, "Two-phase
# predictions (digits)").
#
#   bash bench/two_phase.sh      # writes bench/results/two_phase.json and two_phase.md (~1-2 min)
#
# Latencies must be taken with a release binary (cargo build --release -p serval-cli --bin
# serval; this script never builds). A debug binary runs the whole script (sizes, accuracy,
# forwarded share and bytes do not depend on the build) but its latencies mean nothing: the
# results say so when the binary's path has /debug/ in it or BENCH_DEBUG_BINARY=1.
#
# 1. Quantization of examples/models/digits_phase1 and breast_cancer_mlp_large: the float file;
#    `serval quantize` --mode weights-int8 (the default: TF Lite's scales, one per weight for
#    MatMul/Gemm and per output channel for Conv), weights-int8 --per-channel,
#    dynamic-int8, fp16; onnxruntime.quantization.quantize_dynamic with QInt8 and QUInt8 weights.
#    Bytes, gzip bytes (Python gzip, level 9), ratios, accuracy on labelled rows and agreement
#    with the float file, all by onnxruntime with one thread (bench/python/labelled.py: the 1080
#    two-phase digits joined with their labels by key; load_breast_cancer, all rows and the
#    held-out split).
# 2. Phase-1 latency on one core, digits_phase1 float, weights-int8 and dynamic-int8:
#    a. `taskset -c CPU serval edge` over examples/data/digits_two_phase.jsonl (1080 lines) with a
#       policy that forwards nothing (`confidence = [0.0, 0.000001]`: phase 1's top probability is
#       at least 1/11) and no server, --batch-size 1 and 64: the median wall clock (GNU time's
#       supervisor of bench/python/eval_bench.py) minus that of a 1-line run, over 1079;
#    b. onnxruntime in Python (1 intra-op, 1 inter-op thread, pinned to CPU) on the same files
#       (and onnxruntime's own QInt8 file): median per-call time at batch 1 and batch 64.
# 3. The two-phase system: `serval serve examples/models` on loopback (OS-picked ports, ready
#    when /v2/health/ready answers), `serval edge --phase1 <float | weights-int8> --server
#    <proxy> --model digits_phase2 --policy ...` over the 1080 lines, through a counting proxy
#    (a thread of the helper), under: digits only and confidence < 0.95 with when = "all" (the
#    example's policy), confidence < 0.95 alone, and every class forwarded (phase 2 alone; also by
#    direct v2 requests of 64 instances), each with --report-sample 0; then the example's policy
#    with the default sample of phase-1 predictions reported to the server's prediction log.
#    Forwarded share, end-to-end accuracy, phase 1 alone, the request bodies' bytes (counted, and
#    checked against the bodies rebuilt from the answers) against sending all 1080.
#
# Environment:
#   SERVAL_BIN          the serval binary (default: ${CARGO_TARGET_DIR:-target}/release/serval)
#   PY                  a Python with numpy, onnxruntime, onnx and scikit-learn (default python3;
#                       pip install -r tests/protocol/requirements.txt onnx==1.23.2)
#   TWO_PHASE_CPU       the core of the latency runs (0)
#   TWO_PHASE_REPEAT    runs of each `serval edge` latency measurement (5; the median is reported)
#   TWO_PHASE_ORT_SECONDS  seconds of onnxruntime calls per file and batch size (2)
#   BENCH_LOAD_MAX (0.7), BENCH_LOAD_WAIT (60 s): before the latency runs, wait until the 1-minute
#                       load average is below BENCH_LOAD_MAX, at most BENCH_LOAD_WAIT s, then
#                       measure anyway and record the load.
#   BENCH_DEBUG_BINARY  1: the binary is a debug build (when its path does not say so)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
# The command as run, with the settings that came from the environment.
COMMAND=$(for v in SERVAL_BIN PY TWO_PHASE_CPU TWO_PHASE_REPEAT TWO_PHASE_ORT_SECONDS BENCH_LOAD_MAX BENCH_LOAD_WAIT \
  BENCH_DEBUG_BINARY; do [[ -z ${!v:-} ]] || printf '%s=%q ' "$v" "${!v}"; done; printf '%q ' bash bench/two_phase.sh "$@")
COMMAND=${COMMAND% }
[[ ${1:-} != -h && ${1:-} != --help ]] || { sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
(($# == 0)) || die "no arguments (see --help); settings come from the environment"

QUICK=0
CPU=${TWO_PHASE_CPU:-0}
REPEAT=${TWO_PHASE_REPEAT:-5}
ORT_SECONDS=${TWO_PHASE_ORT_SECONDS:-2}
LOAD_MAX=${BENCH_LOAD_MAX:-0.7}
LOAD_WAIT=${BENCH_LOAD_WAIT:-60}
DATA=examples/data/digits_two_phase.jsonl
PHASE1=examples/models/digits_phase1/1/model.onnx
bench_init two_phase serval-two-phase
export TWO_PHASE_WORK=$WORK  # the helper writes $WORK/... for paths in it
HELPER=$ROOT/bench/python/two_phase_bench.py

log "tools"
for tool in taskset curl; do command -v "$tool" >/dev/null || die "$tool is required"; done
time_v=$(/usr/bin/time -v true 2>&1 || true)
[[ $time_v == *'Maximum resident set size'* ]] || die "/usr/bin/time is not GNU time (apt-get install time)"
PY=${PY:-python3}
"$PY" -c 'import numpy, onnxruntime, onnx, sklearn' 2>/dev/null ||
  die "$PY lacks numpy, onnxruntime, onnx or scikit-learn: pip install -r tests/protocol/requirements.txt onnx==1.23.2, or PY=..."
# serval loads the same ONNX Runtime build as the Python side (for the server's ort models).
ORT_DYLIB_PATH=$(ort_lib)
[[ -n $ORT_DYLIB_PATH ]] || die "the onnxruntime package of $PY ships no libonnxruntime.so"
export ORT_DYLIB_PATH

BIN=${SERVAL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/serval}
[[ -x $BIN ]] || die "no serval binary at $BIN: cargo build --release -p serval-cli --bin serval, or SERVAL_BIN=PATH"
# A private copy: a concurrent build must not swap it mid-run.
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/serval"
SERVAL=$WORK/bin/serval
DEBUG_BINARY=false
[[ $(readlink -f "$BIN") != */debug/* && ${BENCH_DEBUG_BINARY:-0} != 1 ]] || DEBUG_BINARY=true
[[ $DEBUG_BINARY == false ]] || log "warning: $BIN is a debug build: its latencies mean nothing"
VERSION=$("$SERVAL" --version 2>/dev/null | head -1 || true)
log "  serval: $BIN ($VERSION); python: $PY"

json_str() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
"$PY" "$HELPER" machine "$WORK/machine.json" cpu="$CPU" repeat="$REPEAT" ort_seconds="$ORT_SECONDS" \
  load_max="$LOAD_MAX" load_wait_s="$LOAD_WAIT" quick=false
set_json() { "$PY" "$HELPER" set "$WORK/machine.json" "$1" "$2"; }
set_json command "$(json_str "$COMMAND")"
set_json serval "$(json_str "$BIN ($VERSION)")"
set_json debug_binary "$DEBUG_BINARY"

# ----------------------------------------------------------------------------- 1. quantization

log "1. quantization"
Q=$WORK/quantized
"$PY" "$HELPER" quantize "$RECORDS" --serval "$SERVAL" --work "$Q"
P1_INT8=$Q/digits_phase1/weights-int8/model.onnx
P1_DYN=$Q/digits_phase1/dynamic-int8/model.onnx
P1_ORT=$Q/digits_phase1/ort-qint8/model.onnx
[[ -f $(dirname "$P1_INT8")/config.toml ]] || die "no config.toml beside $P1_INT8"

# ----------------------------------------------------------------------------- 2. latency

log "2. phase-1 latency on core $CPU"
wait_quiet
set_json latency_load1 "$SERIES_LOAD"
"$PY" "$HELPER" edge-latency "$RECORDS" --serval "$SERVAL" --input "$DATA" --cpu "$CPU" --repeat "$REPEAT" \
  --batch-size 1 --batch-size 64 --work "$WORK/edge-latency" \
  --phase1 float="$PHASE1" --phase1 weights-int8="$P1_INT8" --phase1 dynamic-int8="$P1_DYN"
"$PY" "$HELPER" ort-latency "$RECORDS" --cpu "$CPU" --seconds "$ORT_SECONDS" \
  --phase1 float="$PHASE1" --phase1 weights-int8="$P1_INT8" --phase1 dynamic-int8="$P1_DYN" \
  --phase1 "onnxruntime QInt8"="$P1_ORT"

# ----------------------------------------------------------------------------- 3. the system

log "3. the two-phase system"
# A prediction log, so that the edge's reports of phase-1 predictions are taken.
start_server "$WORK/serval.log" env SERVAL_LOG=warn "$SERVAL" serve examples/models --host 127.0.0.1 \
  --http-port 0 --grpc-port 0 --prediction-log "$WORK/prediction-log"
ADDR=$(wait_for_line "$WORK/serval.log" 'serval listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
wait_for_url "http://$ADDR/v2/health/ready" "$SERVER_PID"
wait_for_url "http://$ADDR/v2/models/digits_phase2/ready" "$SERVER_PID"
log "  serval serve examples/models at $ADDR"
"$PY" "$HELPER" system "$RECORDS" --serval "$SERVAL" --server "http://$ADDR" --model digits_phase2 \
  --input "$DATA" --work "$WORK/system" --batch-size 64 --forward-batch 64 \
  --phase1 float="$PHASE1" --phase1 weights-int8="$P1_INT8"
stop_server "$SERVER_PID"

# ----------------------------------------------------------------------------- results

bench_finish "$HELPER"

#!/usr/bin/env bash
# Third-party corpus models (tests/models/build_corpus.py), a CNN and a tree ensemble: single-request
# latency and saturated throughput of `serval serve` against raw onnxruntime in-process with the
# same session settings (issue 12). Loopback only; every run is time-bounded.
#
#   bash bench/corpus.sh            # full run (~5-10 min, plus waiting for a quiet machine)
#   bash bench/corpus.sh --quick    # smoke test: 2 s runs, no waiting; writes target/bench-quick/
#
# Options:
#   --bin PATH       the serval binary (default: <cargo target dir>/release/serval, the target dir
#                    from $CARGO_TARGET_DIR or `cargo metadata`; this script never builds it:
#                    `cargo build --release -p serval-cli --bin serval` first)
#   --python PATH    the Python with numpy, onnxruntime and the corpus packages (default:
#                    $BENCH_PYTHON, else the virtualenv target/bench-corpus-venv, created with
#                    tests/protocol/requirements.txt and tests/models/requirements.txt)
#   --models LIST    model:case,... (default ocr_cls:one_line,lgbm_digits:one_row); each case must
#                    be one row of a batched model
#   --python-client  measure with the Python load generator even if oha is there
#   --no-install     do not `cargo install` oha when it is missing (the Python client is used)
#
# What it measures, per model:
# - raw onnxruntime in one Python process (bench/python/corpus_bench.py raw), sessions set as
#   Serval's (intra_op = inter_op = 1, ORT_ENABLE_ALL, sequential): (a) latency of one call at a
#   time at batch 1; (b) rows/s with one session per core, each driven by its own thread, at
#   batch 1 (the comparison) and bigger batches (reference);
# - the HTTP floor: GET /v2/health/live of the same server, one connection;
# - Serval with its defaults (the corpus has no config.toml): one request at a time (c=1), and
#   closed loops at c=16 and 64, one row per request, over OIP v2 REST JSON (the request a client
#   sends with tritonclient.http and binary_data=False), OIP v2 with binary tensors, and TF REST.
#
# Full runs write bench/results/corpus.json (every run, machine, commit, command) and
# bench/results/corpus.md (the tables, also printed).
#
# Environment: BENCH_LOAD_MAX (0.7) and BENCH_LOAD_WAIT (120 s): before the raw runs of each
# model and after starting the server, wait until the 1-minute load average is below
# BENCH_LOAD_MAX, polling every 10 s, for at most BENCH_LOAD_WAIT s, then measure anyway and record
# the load. BENCH_SOURCE_REV: what to record as the measured source when the tree is not a git
# checkout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
COMMAND=$(printf '%q ' bash bench/corpus.sh "$@")
COMMAND=${COMMAND% }

QUICK=0
BIN=
PY=${BENCH_PYTHON:-}
MODEL_CASES=ocr_cls:one_line,lgbm_digits:one_row
FORCE_PY_CLIENT=0
NO_INSTALL=0
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --bin) BIN=${2:?--bin needs a path}; shift ;;
    --python) PY=${2:?--python needs a path}; shift ;;
    --models) MODEL_CASES=${2:?--models needs model:case,...}; shift ;;
    --python-client) FORCE_PY_CLIENT=1 ;;
    --no-install) NO_INSTALL=1 ;;
    -h | --help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done

LOAD_MAX=${BENCH_LOAD_MAX:-0.7}
LOAD_WAIT=${BENCH_LOAD_WAIT:-120}
CORPUS=$ROOT/target/bench-corpus
SATURATION=(16 64)
if ((QUICK)); then
  DURATION=2
  RAW_SECONDS=1
  RAW_BATCHES=1,8
  WARMUP=1
  LOAD_WAIT=0
else
  DURATION=10
  RAW_SECONDS=5
  RAW_BATCHES=1,8,32
  WARMUP=2
fi
bench_init corpus serval-corpus-bench

# ----------------------------------------------------------------------------- HTTP runs

# http_run OUT SECONDS C URL [BODY CONTENT-TYPE [HEADER]]: one closed-loop run of SECONDS at
# concurrency C (GET without a body, else POST), oha's JSON in OUT.
http_run() {
  local out=$1 secs=$2 c=$3 url=$4 body=${5:-} ctype=${6:-} header=${7:-}
  local -a args=()
  if [[ $CLIENT == oha ]]; then
    if [[ -n $body ]]; then
      args=(-m POST -T "$ctype" -D "$body")
      [[ -z $header ]] || args+=(-H "$header")
    fi
    timeout $((secs + 60)) "$OHA" --no-tui --output-format json --stats-success-breakdown \
      -z "${secs}s" -c "$c" "${args[@]}" "$url" >"$out"
  else
    if [[ -n $body ]]; then
      args=(--body "$body" --header "Content-Type: $ctype")
      [[ -z $header ]] || args+=(--header "$header")
    fi
    timeout $((secs + 120)) "$PY" "$HELPER" client "$url" "$out" -c "$c" --seconds "$secs" "${args[@]}"
  fi
}

# ----------------------------------------------------------------------------- setup

log "tools"
command -v curl >/dev/null || die "curl is required"

if [[ -z $PY ]]; then
  bench_venv "$ROOT/target/bench-corpus-venv" tests/protocol/requirements.txt tests/models/requirements.txt
fi
[[ -x $PY ]] || PY=$(command -v "$PY" || true)
[[ -n $PY && -x $PY ]] || die "no Python at ${PY:-(none)}"
"$PY" -c 'import numpy, onnxruntime' 2>/dev/null ||
  die "$PY lacks numpy or onnxruntime: pip install -r tests/protocol/requirements.txt -r tests/models/requirements.txt"
HELPER=$ROOT/bench/python/corpus_bench.py
# Serval loads the same ONNX Runtime build as the raw baseline: the wheel of this Python.
ORT_LIB=$(ort_lib)
[[ -n $ORT_LIB ]] || die "the onnxruntime package of $PY ships no libonnxruntime.so"

if [[ -z $BIN ]]; then
  TARGET_DIR=${CARGO_TARGET_DIR:-$(cargo_target_dir)}
  BIN=$TARGET_DIR/release/serval
fi
[[ -x $BIN ]] || die "no serval binary at $BIN: cargo build --release -p serval-cli --bin serval, or --bin PATH"
# A private copy: a concurrent build in the same target directory must not swap it mid-run.
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/serval"
SERVAL=$WORK/bin/serval
DEBUG_BINARY=false
[[ $(readlink -f "$BIN") != */debug/* ]] || DEBUG_BINARY=true
[[ $DEBUG_BINARY == false ]] || log "warning: $BIN is a debug build: its figures mean nothing"

CLIENT=python
if ((!FORCE_PY_CLIENT)); then
  find_oha
  if [[ ! -x $OHA ]] && ((!NO_INSTALL)) && command -v cargo >/dev/null; then
    install_oha || log "cargo install oha failed"
  fi
  if [[ -x $OHA ]]; then
    CLIENT=oha
  else
    log "oha is missing: falling back to the Python load generator (corpus_bench.py client)"
  fi
fi
if [[ $CLIENT == oha ]]; then
  CLIENT_DESC=$("$OHA" --version | head -1)
else
  CLIENT_DESC="python $("$PY" -c 'import platform; print(platform.python_version())') http.client, $(nproc) processes (oha missing or --python-client: at high concurrency the client, not the server, may set the pace)"
fi
log "load generator: $CLIENT_DESC"

log "corpus in $CORPUS"
if [[ ! -f $CORPUS/cases.json || ! -f $CORPUS/cases.npz ]]; then
  "$PY" tests/models/build_corpus.py "$CORPUS"
fi

IFS=, read -r -a PAIRS <<<"$MODEL_CASES"
MODELS=()
CASES=()
mkdir -p "$WORK/repo"
for pair in "${PAIRS[@]}"; do
  m=${pair%%:*}
  c=${pair#*:}
  [[ -n $m && -n $c && $pair == *:* ]] || die "--models wants model:case, got $pair"
  [[ -f $CORPUS/$m/1/model.onnx ]] || die "no model $m in $CORPUS"
  MODELS+=("$m")
  CASES+=("$c")
  # The repository holds only the measured models, with no config.toml (the corpus' defaults).
  cp -r "$CORPUS/$m" "$WORK/repo/$m"
  rm -f "$WORK/repo/$m/config.toml"
  log "request bodies for $m ($c)"
  "$PY" "$HELPER" bodies "$CORPUS" "$m" "$c" "$WORK/body/$m"
done

"$PY" "$HELPER" machine "$WORK/machine.json" duration_s="$DURATION" \
  raw_seconds="$RAW_SECONDS" load_max="$LOAD_MAX" load_wait_s="$LOAD_WAIT"
"$PY" "$HELPER" set "$WORK/machine.json" quick "$( ((QUICK)) && echo true || echo false)"
"$PY" "$HELPER" set "$WORK/machine.json" command "$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$COMMAND")"
"$PY" "$HELPER" set "$WORK/machine.json" serval "$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$BIN ($("$SERVAL" --version 2>/dev/null | head -1))")"
"$PY" "$HELPER" set "$WORK/machine.json" debug_binary "$DEBUG_BINARY"
"$PY" "$HELPER" set "$WORK/machine.json" client "$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$CLIENT_DESC")"
"$PY" "$HELPER" set "$WORK/machine.json" saturation_concurrency "[$(IFS=,; echo "${SATURATION[*]}")]"

# ----------------------------------------------------------------------------- raw onnxruntime

THREADS=$(nproc)
for i in "${!MODELS[@]}"; do
  m=${MODELS[$i]}
  log "raw onnxruntime $m (${CASES[$i]}): latency at batch 1, then $THREADS threads at batch $RAW_BATCHES"
  wait_quiet
  l=$(load1)
  timeout $((RAW_SECONDS * 8 + 120)) "$PY" "$HELPER" raw "$CORPUS" "$m" "${CASES[$i]}" "$WORK/raw.json" \
    --seconds "$RAW_SECONDS" --threads "$THREADS" --batches "$RAW_BATCHES"
  "$PY" "$HELPER" add-raw "$RECORDS" "$WORK/raw.json" load1="$l" series_load1="$SERIES_LOAD" \
    series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET"
done

# ----------------------------------------------------------------------------- serval

log "serval serve ($SERVAL)"
start_server "$WORK/serval.log" env ORT_DYLIB_PATH="$ORT_LIB" "$SERVAL" serve "$WORK/repo" \
  --host 127.0.0.1 --http-port 0 --grpc-port 0
ADDR=$(wait_for_line "$WORK/serval.log" 'serval listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
BASE=http://$ADDR
for i in "${!MODELS[@]}"; do
  # At most 300 s: a debug build loads and warms up slowly.
  wait_for_url "$BASE/v2/models/${MODELS[$i]}/ready" "$SERVER_PID" 300
  "$PY" "$HELPER" model-info "$RECORDS" "$CORPUS" "${MODELS[$i]}" "${CASES[$i]}" "$BASE" \
    "$WORK/body/${MODELS[$i]}"
done
log "serval at $BASE, every model ready"

# measure MODEL WHAT C URL [BODY CTYPE [HEADER]]: one run, recorded; for a model, with the rows
# per engine run over the run (from /v2/models/{m}/stats).
measure() {
  local model=$1 what=$2 c=$3 url=$4 body=${5:-} ctype=${6:-} header=${7:-} l before after
  local -a extra=()
  l=$(load1)
  [[ $what == health ]] || before=$("$PY" "$HELPER" stats "$BASE/v2/models/$model/stats")
  http_run "$WORK/http.json" "$DURATION" "$c" "$url" "$body" "$ctype" "$header"
  if [[ $what != health ]]; then
    after=$("$PY" "$HELPER" stats "$BASE/v2/models/$model/stats")
    extra=("$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " ");
      runs = y[2] - x[2]; printf "rows_per_run=%.2f", (runs > 0 ? (y[1] - x[1]) / runs : 0) }')")
  fi
  "$PY" "$HELPER" add "$RECORDS" "$WORK/http.json" model="$model" what="$what" concurrency="$c" \
    load1="$l" series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED" \
    series_quiet="$SERIES_QUIET" "${extra[@]}"
}

wait_quiet
for i in "${!MODELS[@]}"; do
  m=${MODELS[$i]}
  b=$WORK/body/$m
  log "$m: HTTP floor (GET /v2/health/live, c=1)"
  measure "$m" health 1 "$BASE/v2/health/live"
  for what in oip oip_bin tf; do
    header=
    case $what in
      oip) url=$BASE/v2/models/$m/infer; ctype=application/json ;;
      oip_bin) url=$BASE/v2/models/$m/infer; ctype=application/octet-stream
        header=$(tr -d '\n' <"$b/oip_bin.headers") ;;
      tf) url="$BASE/v1/models/$m:predict"; ctype=application/json ;;
    esac
    log "$m: $what, c=1 and ${SATURATION[*]}"
    check_post "$url" "$b/$what.body" "$ctype" "$header"
    # Warm-up: a short run at c=8 (not recorded).
    http_run "$WORK/warmup.json" "$WARMUP" 8 "$url" "$b/$what.body" "$ctype" "$header"
    measure "$m" "$what" 1 "$url" "$b/$what.body" "$ctype" "$header"
    for c in "${SATURATION[@]}"; do
      measure "$m" "$what" "$c" "$url" "$b/$what.body" "$ctype" "$header"
    done
  done
done
stop_server "$SERVER_PID"

# ----------------------------------------------------------------------------- results

bench_finish "$HELPER"

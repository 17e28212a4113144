#!/usr/bin/env bash
# Online serving under load: Serval against an HTTP ceiling (axum hello), FastAPI + ONNX Runtime,
# MLServer + scikit-learn, and the raw in-process engine. Loopback only; every run is time-bounded.
#
#   bash bench/load.sh            # full run (~30-80 min, most of it waiting for a quiet machine)
#   bash bench/load.sh --quick    # smoke test: 2 s runs, c=1 and 64, no waiting
#
# Full runs write bench/results/load.json (every run, machine description) and
# bench/results/load.md (the tables, also printed); --quick writes under target/bench-quick/.
#
# Environment: BENCH_LOAD_MAX (0.7) and BENCH_LOAD_WAIT (300 s): after starting each server (and
# before the raw-engine runs) wait until the 1-minute load average is below BENCH_LOAD_MAX, polling every 10 s,
# for at most BENCH_LOAD_WAIT s, then measure anyway and record the load. BENCH_VENV
# (target/bench-venv): the Python environment for the peers. BENCH_SOURCE_REV: what to record as
# the measured source when the tree is not a git checkout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh

QUICK=0
case "${1:-}" in
  --quick) QUICK=1 ;;
  "") ;;
  *) echo "usage: bash bench/load.sh [--quick]" >&2; exit 2 ;;
esac

# The heavy model is built at bench time (bench/python/make_heavy_model.py): the committed ones
# are too light to be compute-bound one row per request.
MODELS=(breast_cancer_lr breast_cancer_mlp_xl)
TINY=breast_cancer_lr
HEAVY=breast_cancer_mlp_xl
LOAD_MAX=${BENCH_LOAD_MAX:-0.7}
LOAD_WAIT=${BENCH_LOAD_WAIT:-300}
VENV=${BENCH_VENV:-$ROOT/target/bench-venv}
# The heavy model's best batch on tract: 3,235 rows/s at 64 rows, 757 at 128 (measured with the
# throughput example; tract falls off a cliff there on 4096-wide layers).
BATCH_ON_SIZE=64
BATCH_ON_DELAY_US=500
# Queue slots beyond the busy workers: the knob that bounds an admitted request's wait. 0: a
# request is admitted only while an engine thread is free to start it.
OVERLOAD_QUEUE=0
OVERLOAD_CONNECTIONS=512
OPEN_CONNECTIONS=256
if ((QUICK)); then
  DURATION=2
  CONCURRENCY=(1 64)
  RAW_SECONDS=1
  RAW_BATCHES=1,64
  LOAD_WAIT=0
else
  DURATION=10
  CONCURRENCY=(1 8 64 256)
  RAW_SECONDS=3
  RAW_BATCHES=1,8,32,64,128,256
fi
bench_init load serval-bench

# ----------------------------------------------------------------------------- requests

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# check_predict URL BODY: one JSON request must answer 200.
check_predict() {
  check_post "$1" "$2" application/json
  log "  check: $(head -c 160 "$WORK/check.out")"
}

# ----------------------------------------------------------------------------- load

# oha_run OUT URL BODY OHA-ARGS...: one time-bounded run.
oha_run() {
  local out=$1 url=$2 body=$3
  shift 3
  timeout $((DURATION + 60)) "$OHA" --no-tui --output-format json --stats-success-breakdown \
    -m POST -T application/json -D "$body" -z "${DURATION}s" "$@" "$url" >"$out"
}

warmup() {
  timeout 30 "$OHA" --no-tui --output-format quiet -m POST -T application/json -D "$2" \
    -z 2s -c 8 "$1" >/dev/null
}

# series SERVER MODEL PROTOCOL BATCHING URL BODY: closed loop at each concurrency, then an open
# loop at half the best closed-loop throughput. The caller has run wait_quiet for this server.
series() {
  local server=$1 model=$2 protocol=$3 batching=$4 url=$5 body=$6 c best rate
  local meta=(server="$server" model="$model" protocol="$protocol" batching="$batching")
  log "series $server $model $protocol batching=$batching"
  check_predict "$url" "$body"
  warmup "$url" "$body"
  meta+=(series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET")
  for c in "${CONCURRENCY[@]}"; do
    local l
    l=$(load1)
    oha_run "$WORK/oha.json" "$url" "$body" -c "$c"
    "$PY" "$RESULTS_PY" add "$RECORDS" "$WORK/oha.json" "${meta[@]}" mode=closed concurrency="$c" load1="$l"
  done
  best=$("$PY" "$RESULTS_PY" max-rps "$RECORDS" "${meta[@]}")
  rate=$((best / 2))
  ((rate > 0)) || rate=1
  local l
  l=$(load1)
  oha_run "$WORK/oha.json" "$url" "$body" -c "$OPEN_CONNECTIONS" -q "$rate" --latency-correction
  "$PY" "$RESULTS_PY" add "$RECORDS" "$WORK/oha.json" "${meta[@]}" mode=open \
    concurrency="$OPEN_CONNECTIONS" rate="$rate" load1="$l"
}

# one_run SERVER MODEL PROTOCOL BATCHING URL BODY C: a single closed-loop run (no open loop).
one_run() {
  local server=$1 model=$2 protocol=$3 batching=$4 url=$5 body=$6 c=$7 l
  log "run $server $model $protocol batching=$batching c=$c"
  check_predict "$url" "$body"
  l=$(load1)
  oha_run "$WORK/oha.json" "$url" "$body" -c "$c"
  "$PY" "$RESULTS_PY" add "$RECORDS" "$WORK/oha.json" server="$server" model="$model" \
    protocol="$protocol" batching="$batching" mode=closed concurrency="$c" load1="$l" \
    series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET"
}

# ----------------------------------------------------------------------------- setup

log "tools"
command -v curl >/dev/null || die "curl is required"
find_oha
[[ -x $OHA ]] || install_oha
[[ -x $OHA ]] || die "oha is not installed"
bench_venv "$VENV" bench/requirements.txt
RESULTS_PY=$ROOT/bench/python/results.py

log "building release binaries"
cargo build --release -q -p serval-cli --bin serval
cargo build --release -q -p serval-server --example hello
cargo build --release -q -p serval-core --example throughput
TARGET_DIR=$(cargo_target_dir)
# Private copies: a concurrent build in the same target directory must not swap them mid-run.
mkdir -p "$WORK/bin"
cp "$TARGET_DIR/release/serval" "$TARGET_DIR/release/examples/hello" \
  "$TARGET_DIR/release/examples/throughput" "$WORK/bin/"
SERVAL=$WORK/bin/serval
HELLO=$WORK/bin/hello
THROUGHPUT=$WORK/bin/throughput

# Every model the bench serves, in one place: the tiny example model and the heavy one built here
# (its MLServer copy comes from the same fitted estimator). Both take the breast-cancer features,
# so both use the tiny model's rows.
log "building $HEAVY"
mkdir -p "$WORK/models" "$WORK/mlserver" "$WORK/data"
cp -r "examples/models/$TINY" "$WORK/models/$TINY"
"$PY" bench/python/make_heavy_model.py "$WORK/models" "$WORK/mlserver"
for m in "${MODELS[@]}"; do
  cp "examples/data/$TINY.jsonl" "$WORK/data/$m.jsonl"
done

# Bench repositories: copies of the bench models with a [batching] section appended.
make_repo() {
  local dir=$1 max_batch=$2 delay=$3 queue=$4 m
  shift 4
  for m in "$@"; do
    mkdir -p "$dir/$m"
    cp -r "$WORK/models/$m/1" "$dir/$m/1"
    if [[ -f $WORK/models/$m/config.toml ]]; then
      cp "$WORK/models/$m/config.toml" "$dir/$m/config.toml"
    fi
    printf '\n[batching]\nmax_batch_size = %s\nmax_queue_delay_us = %s\nmax_queue_size = %s\n' \
      "$max_batch" "$delay" "$queue" >>"$dir/$m/config.toml"
  done
}
make_repo "$WORK/repo-off" 1 0 1024 "${MODELS[@]}"
make_repo "$WORK/repo-on" "$BATCH_ON_SIZE" "$BATCH_ON_DELAY_US" 1024 "${MODELS[@]}"
make_repo "$WORK/repo-overload-default" 1 0 "$OVERLOAD_QUEUE" "$HEAVY"
make_repo "$WORK/repo-overload-1" 1 0 "$OVERLOAD_QUEUE" "$HEAVY"
# One engine thread leaves a core to the HTTP side and the load generator.
sed -i '1i instances = 1' "$WORK/repo-overload-1/$HEAVY/config.toml"

# Request bodies: one real row (the first of examples/data/<model>.jsonl), batch of 1.
for m in "${MODELS[@]}"; do
  "$PY" - "$m" "$WORK" <<'EOF'
import json, sys
model, work = sys.argv[1], sys.argv[2]
with open(f"{work}/data/{model}.jsonl") as f:
    row = json.loads(f.readline())["features"]
oip = {"inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
bodies = {
    "tf": {"instances": [{"features": row}]},
    "oip": oip,
    # MLServer's scikit-learn runtime: ask for both outputs, as Serval and FastAPI return both.
    "mlserver": dict(oip, outputs=[{"name": "predict"}, {"name": "predict_proba"}]),
}
for name, body in bodies.items():
    with open(f"{work}/{model}.{name}.json", "w") as f:
        json.dump(body, f)
EOF
done

# Machine description.
"$PY" "$RESULTS_PY" machine "$WORK/machine.json" "$OHA" "$QUICK" "$DURATION" "$LOAD_MAX" "$LOAD_WAIT"

# ----------------------------------------------------------------------------- raw engine

log "raw engine"
wait_quiet
for m in "${MODELS[@]}"; do
  log "raw engine $m"
  "$THROUGHPUT" "$WORK/repo-off" "$m" --data "$WORK/data/$m.jsonl" --seconds "$RAW_SECONDS" \
    --batches "$RAW_BATCHES" --json "$WORK/raw.json"
  "$PY" "$RESULTS_PY" raw "$RECORDS" "$WORK/raw.json" series_load1="$SERIES_LOAD" \
    series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET"
done

# ----------------------------------------------------------------------------- serval

serval_start() {
  start_server "$WORK/serval.log" "$SERVAL" serve "$1" --host 127.0.0.1 --http-port 0 --grpc-port 0
  SERVAL_ADDR=$(wait_for_line "$WORK/serval.log" 'serval listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
  log "serval $1 at $SERVAL_ADDR"
  wait_quiet
}

for batching in off on; do
  serval_start "$WORK/repo-$batching"
  for m in "${MODELS[@]}"; do
    series serval "$m" tf "$batching" "http://$SERVAL_ADDR/v1/models/$m:predict" "$WORK/$m.tf.json"
    # Same protocol as MLServer (OIP v2 JSON), at one concurrency.
    one_run serval "$m" oip "$batching" "http://$SERVAL_ADDR/v2/models/$m/infer" "$WORK/$m.oip.json" 64
  done
  stop_server "$SERVER_PID"
done

# Overload: the heavy model without batching (the lowest capacity, so 10x is reachable), no
# waiting room, and an open loop at 10x the capacity of the configuration under test: first with
# the default engine threads (one per core), then with one engine thread.
overload_run() {
  local threads=$1 capacity rate l probe retry_after first_line
  local -a meta
  serval_start "$WORK/repo-overload-$threads"
  local url="http://$SERVAL_ADDR/v1/models/$HEAVY:predict"
  check_predict "$url" "$WORK/$HEAVY.tf.json"
  warmup "$url" "$WORK/$HEAVY.tf.json"
  meta=(server=serval model="$HEAVY" protocol=tf batching=off max_queue_size="$OVERLOAD_QUEUE"
    engine_threads="$threads" series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED"
    series_quiet="$SERIES_QUIET")
  log "overload $HEAVY, engine threads $threads: unloaded c=1"
  l=$(load1)
  oha_run "$WORK/oha.json" "$url" "$WORK/$HEAVY.tf.json" -c 1
  "$PY" "$RESULTS_PY" add "$RECORDS" "$WORK/oha.json" "${meta[@]}" table=overload mode=closed \
    concurrency=1 load1="$l"
  if [[ $threads == default ]]; then
    capacity=$("$PY" "$RESULTS_PY" max-rps "$RECORDS" server=serval model="$HEAVY" protocol=tf batching=off)
  else
    # With no waiting room, a closed loop deeper than the one thread only collects 429s: the
    # unloaded run is this configuration's capacity.
    capacity=$("$PY" "$RESULTS_PY" max-rps "$RECORDS" engine_threads="$threads" table=overload)
  fi
  rate=$((capacity * 10))
  log "overload $HEAVY, engine threads $threads: -q $rate -c $OVERLOAD_CONNECTIONS"
  l=$(load1)
  # Halfway through, catch one 429 with curl to record its Retry-After header.
  rm -f "$WORK/headers"
  (
    sleep $((DURATION / 2))
    for _ in $(seq 200); do
      code=$(curl -s -o /dev/null -D "$WORK/headers" -w '%{http_code}' \
        -H 'content-type: application/json' --data-binary "@$WORK/$HEAVY.tf.json" "$url" || true)
      [[ $code == 429 ]] && break
    done
  ) &
  probe=$!
  oha_run "$WORK/oha.json" "$url" "$WORK/$HEAVY.tf.json" -c "$OVERLOAD_CONNECTIONS" -q "$rate"
  wait "$probe" || true
  retry_after=$(tr -d '\r' <"$WORK/headers" 2>/dev/null | awk -F': *' 'tolower($1) == "retry-after" { print $2 }')
  first_line=$(head -1 "$WORK/headers" 2>/dev/null | tr -d '\r')
  log "  probe: ${first_line:-no answer}, Retry-After: ${retry_after:-none}"
  "$PY" "$RESULTS_PY" add "$RECORDS" "$WORK/oha.json" "${meta[@]}" mode=overload \
    concurrency="$OVERLOAD_CONNECTIONS" rate="$rate" max_rps="$capacity" load1="$l" \
    probe_status="${first_line:-none}" retry_after="${retry_after:-none}"
  stop_server "$SERVER_PID"
}
overload_run default
overload_run 1

# ----------------------------------------------------------------------------- hello (HTTP ceiling)

start_server "$WORK/hello.log" "$HELLO" --host 127.0.0.1 --port 0
HELLO_ADDR=$(wait_for_line "$WORK/hello.log" 'hello listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
wait_quiet
series hello "$TINY" tf - "http://$HELLO_ADDR/v1/models/$TINY:predict" "$WORK/$TINY.tf.json"
stop_server "$SERVER_PID"

# ----------------------------------------------------------------------------- FastAPI + ORT

for m in "${MODELS[@]}"; do
  port=$(free_port)
  start_server "$WORK/fastapi.log" env BENCH_ONNX_MODEL="$WORK/models/$m/1/model.onnx" \
    "$VENV/bin/uvicorn" fastapi_server:app --app-dir "$ROOT/bench/python" --host 127.0.0.1 \
    --port "$port" --workers 2 --no-access-log --log-level warning
  wait_for_url "http://127.0.0.1:$port/health" "$SERVER_PID"
  wait_quiet
  series fastapi "$m" tf - "http://127.0.0.1:$port/v1/models/$m:predict" "$WORK/$m.tf.json"
  stop_server "$SERVER_PID"
done

# ----------------------------------------------------------------------------- MLServer + sklearn

"$PY" bench/python/train_sklearn.py "$WORK/mlserver" "$TINY"
http_port=$(free_port)
grpc_port=$(free_port)
metrics_port=$(free_port)
cat >"$WORK/mlserver/settings.json" <<EOF
{"host": "127.0.0.1", "http_port": $http_port, "grpc_port": $grpc_port,
 "metrics_port": $metrics_port, "parallel_workers": 2, "debug": false}
EOF
start_server "$WORK/mlserver.log" "$VENV/bin/mlserver" start "$WORK/mlserver"
for m in "${MODELS[@]}"; do
  wait_for_url "http://127.0.0.1:$http_port/v2/models/$m/ready" "$SERVER_PID"
done
wait_quiet
for m in "${MODELS[@]}"; do
  series mlserver "$m" oip - "http://127.0.0.1:$http_port/v2/models/$m/infer" "$WORK/$m.mlserver.json"
done
stop_server "$SERVER_PID"

# ----------------------------------------------------------------------------- results

bench_finish "$RESULTS_PY"

#!/usr/bin/env bash
# What maximal request bodies do to the server's memory: bodies just under --max-body-bytes on
# every protocol, MEMORY_REQUESTS of them at once, and connections holding all of a maximal body
# but its last byte. Each case runs on a fresh `serval serve` on a repository of iris_lr alone
# (input `features` [-1,4] FP32).
#
#   bash bench/memory.sh      # writes bench/results/memory.json and memory.md
#
# The cases (bench/python/memory.py; bodies of zeros, 1 KiB under the limit):
#   tf-one-long-instance    TF REST `{"instances": [[0,0,...]]}`: one instance of millions of values
#   tf-many-instances       TF REST `{"instances": [[0,0,0,0],[0,0,0,0],...]}`
#   v2-json-shape-matches   v2 REST JSON, shape [N,4] and N*4 values
#   v2-json-shape-mismatch  v2 REST JSON, shape [1,4] and millions of values
#   v2-binary               v2 REST binary extension, shape [N,4], a raw tail of N*16 bytes
#   grpc-raw                gRPC ModelInfer, raw_input_contents
#   grpc-fp32               gRPC ModelInfer, fp32_contents
#   grpc-bytes-empty        gRPC ModelInfer, millions of empty bytes_contents of the BYTES `key`
#                           input every model takes (iris_lr itself has no BYTES input)
#   held-bodies             MEMORY_CONNECTIONS connections each sending a head with Content-Length
#                           = the limit and the body but its last byte, held 5 s, then closed; one
#                           normal v2 inference on a fresh connection meanwhile
# For each: the server's VmRSS sampled every 20 ms (peak, before, 2 s after the last answer, and
# VmHWM then), the statuses or gRPC codes and the time until the last answer, and GET
# /v2/health/live every 20 ms on a keep-alive connection (p50/p99/max, probes slower than 100 ms).
# A watchdog kills the server when its VmRSS exceeds MEMORY_CAP_MIB; the case is recorded as
# stopped by it and the next case goes on with a fresh server.
#
# Environment:
#   SERVAL_BIN            the serval binary (default: ${CARGO_TARGET_DIR:-target}/release/serval)
#   PY                    a Python with onnxruntime (its library is the server's) and grpcio
#                         (default python3)
#   MEMORY_REQUESTS       concurrent requests per case (16)
#   MEMORY_CONNECTIONS    held connections of held-bodies (100)
#   MEMORY_CAP_MIB        the watchdog's VmRSS cap (12000)
#   MEMORY_MAX_BODY_BYTES the server's --max-body-bytes, which the bodies fill (67108864, its default)
#   MEMORY_CASES          the cases to run, space-separated (default: all, in the order above)
#   BENCH_DEBUG_BINARY    1: the binary is a debug build (when its path does not say so)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
bench_command bench/memory.sh SERVAL_BIN PY MEMORY_REQUESTS MEMORY_CONNECTIONS MEMORY_CAP_MIB MEMORY_MAX_BODY_BYTES \
  MEMORY_CASES BENCH_DEBUG_BINARY
bench_no_args "$0" "$@"

QUICK=0
REQUESTS=${MEMORY_REQUESTS:-16}
CONNECTIONS=${MEMORY_CONNECTIONS:-100}
CAP=${MEMORY_CAP_MIB:-12000}
LIMIT=${MEMORY_MAX_BODY_BYTES:-67108864}
MODEL=iris_lr
bench_init memory serval-memory
HELPER=$ROOT/bench/python/memory.py

log "tools"
command -v curl >/dev/null || die "curl is required (apt-get install curl)"
PY=${PY:-python3}
"$PY" -c 'import onnxruntime, grpc' 2>/dev/null ||
  die "$PY lacks onnxruntime or grpcio: pip install -r tests/protocol/requirements.txt, or PY=..."
bench_ort
bench_serval
CASES=${MEMORY_CASES:-$("$PY" "$HELPER" cases)}
# The held connections and the client's own sockets.
ulimit -n "$(ulimit -Hn)"

"$PY" "$HELPER" machine "$WORK/machine.json" requests="$REQUESTS" connections="$CONNECTIONS" cap_mib="$CAP" \
  limit_bytes="$LIMIT" model="$MODEL"
set_text command "$COMMAND"
set_text serval "$BIN ($VERSION)"
set_field debug_binary "$DEBUG_BINARY"

REPO=$WORK/repo
mkdir -p "$REPO"
cp -r "examples/models/$MODEL" "$REPO/"

for case in $CASES; do
  log "$case"
  start_server "$WORK/$case.log" env SERVAL_LOG=warn "$SERVAL" serve "$REPO" --host 127.0.0.1 --http-port 0 \
    --grpc-port 0 --max-body-bytes "$LIMIT"
  addrs=$(wait_for_line "$WORK/$case.log" 'serval listening (http=[0-9.]+:[0-9]+ grpc=[0-9.]+:[0-9]+)' "$SERVER_PID")
  read -r http grpc <<<"$addrs"
  wait_for_url "http://${http#http=}/v2/models/$MODEL/ready" "$SERVER_PID"
  "$PY" "$HELPER" run "$RECORDS" --case "$case" --http "${http#http=}" --grpc "${grpc#grpc=}" --pid "$SERVER_PID" \
    --model "$MODEL" --limit "$LIMIT" --requests "$REQUESTS" --connections "$CONNECTIONS" --cap "$CAP"
  stop_server "$SERVER_PID"
done

bench_finish "$HELPER"

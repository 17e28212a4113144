#!/usr/bin/env bash
# What securing and bounding the connections costs, in one run on loopback: TLS and bearer tokens
# against plain HTTP, and what slow clients (slowloris) do to the others, to the memory and to
# the connection limit. Every server is `serval serve` on a repository of iris_lr alone.
#
#   bash bench/transport.sh      # writes bench/results/transport.json and transport.md (~3 min)
#
# Timings must be taken with a release binary (this script never builds); a debug binary runs it
# all but the results say its timings mean nothing.
#
# 1. Throughput: four servers started side by side, measured one after the other in each of
#    TRANSPORT_ROUNDS rounds with wrk (2 threads, TRANSPORT_CONNECTIONS keep-alive connections,
#    TRANSPORT_SECONDS s; a 2 s warm-up before a server's first run) POSTing one iris row to
#    /v2/models/iris_lr/infer (v2 REST JSON, bench/transport.lua): plain HTTP; TLS
#    (--tls-cert/--tls-key, a self-signed ECDSA P-256 certificate made here with openssl); bearer
#    tokens (--auth-tokens, a file of one `<token> infer bench` line, the header
#    `Authorization: Bearer <token>` on every request); TLS and tokens. Each server is checked
#    first (200 with the token, 401 without it, no answer over plain HTTP when TLS is on).
#    Requests/s, p50/p99/max latency, the server's CPU per request (/proc/PID/stat) and wrk's own;
#    the report gives each server's medians over the rounds.
# 2. Slow clients: a server with --header-read-timeout-secs 10. With no other client, then while
#    TRANSPORT_SLOW_CONNECTIONS connections each hold an unfinished request head (`POST
#    /v2/models/iris_lr/infer HTTP/1.1\r\nHost: a\r\n` and nothing more), then after the server
#    has closed them: 200 sequential GET /v2/health/ready on a fresh keep-alive connection
#    (p50/p99/max), one v2 inference on a fresh connection, the server's VmRSS and
#    serval_connections_open{listener="http"}; and how long until every slow connection is closed.
# 3. The limit: a server with --max-connections 1000 (and the same header timeout) and
#    TRANSPORT_SLOW_CONNECTIONS slow connections attempted: how many are refused (client side and
#    serval_connections_refused_total), and health on a connection opened before them, on a fresh
#    one while they are held, and after.
# The open-files limit of this shell (so of the servers and the helper) is raised to its hard limit.
#
# Environment:
#   SERVAL_BIN          the serval binary (default: ${CARGO_TARGET_DIR:-target}/release/serval)
#   PY                  a Python with onnxruntime (its library is the server's; default python3)
#   TRANSPORT_CONNECTIONS       wrk's connections (64)
#   TRANSPORT_SECONDS           seconds of each wrk run (10)
#   TRANSPORT_ROUNDS            rounds of the four wrk runs (3; medians are reported)
#   TRANSPORT_SLOW_CONNECTIONS  slowloris connections (2000)
#   BENCH_LOAD_MAX (0.7), BENCH_LOAD_WAIT (60 s): before the wrk runs, wait until the 1-minute load
#                       average is below BENCH_LOAD_MAX, at most BENCH_LOAD_WAIT s, then measure
#                       anyway and record the load.
#   BENCH_DEBUG_BINARY  1: the binary is a debug build (when its path does not say so)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
bench_command bench/transport.sh SERVAL_BIN PY TRANSPORT_CONNECTIONS TRANSPORT_SECONDS TRANSPORT_ROUNDS \
  TRANSPORT_SLOW_CONNECTIONS BENCH_LOAD_MAX BENCH_LOAD_WAIT BENCH_DEBUG_BINARY
bench_no_args "$0" "$@"

QUICK=0
CONNS=${TRANSPORT_CONNECTIONS:-64}
RUN_S=${TRANSPORT_SECONDS:-10}
ROUNDS=${TRANSPORT_ROUNDS:-3}
SLOW=${TRANSPORT_SLOW_CONNECTIONS:-2000}
HEADER_S=10
LIMIT=1000
MODEL=iris_lr
LOAD_MAX=${BENCH_LOAD_MAX:-0.7}
LOAD_WAIT=${BENCH_LOAD_WAIT:-60}
bench_init transport serval-transport
HELPER=$ROOT/bench/python/transport_bench.py

log "tools"
for tool in curl wrk openssl; do command -v "$tool" >/dev/null || die "$tool is required (apt-get install $tool)"; done
PY=${PY:-python3}
"$PY" -c 'import onnxruntime' 2>/dev/null || die "$PY lacks onnxruntime: pip install -r tests/protocol/requirements.txt, or PY=..."
bench_ort
bench_serval
ulimit -n "$(ulimit -Hn)"
WRK_VERSION=$(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2 || true)
log "  open files: $(ulimit -n); $WRK_VERSION"

"$PY" "$HELPER" machine "$WORK/machine.json" connections="$CONNS" seconds="$RUN_S" rounds="$ROUNDS" \
  slow_connections="$SLOW" header_read_timeout_s="$HEADER_S" max_connections="$LIMIT" model="$MODEL" load_max="$LOAD_MAX" \
  load_wait_s="$LOAD_WAIT" nofile="$(ulimit -n)" quick=false
set_text command "$COMMAND"
set_text serval "$BIN ($VERSION)"
set_text wrk "$WRK_VERSION"
set_text openssl "$(openssl version)"
set_field debug_binary "$DEBUG_BINARY"

REPO=$WORK/repo
mkdir -p "$REPO"
cp -r "examples/models/$MODEL" "$REPO/"
BODY=$WORK/body.json
"$PY" "$HELPER" body "$BODY"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN infer bench" >"$WORK/tokens.txt"

# serve NAME ARG...: a server on the repository with these flags, ready (over TLS when they have
# --tls-cert, trusting the certificate made above); sets SERVER_PID and URL.
serve() {
  local name=$1 addr scheme=http
  shift
  [[ " $* " != *" --tls-cert "* ]] || scheme=https
  start_server "$WORK/$name.log" env SERVAL_LOG=warn "$SERVAL" serve "$REPO" --host 127.0.0.1 --http-port 0 \
    --grpc-port 0 "$@"
  addr=$(wait_for_line "$WORK/$name.log" 'serval listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
  URL=$scheme://$addr
  wait_for_url "$URL/v2/models/$MODEL/ready" "$SERVER_PID" 120 --cacert "$WORK/cert.pem"
}

# ----------------------------------------------------------------------------- 1. throughput

log "1. v2 REST infer, wrk -c $CONNS, $RUN_S s per server and round, $ROUNDS rounds"
VARIANTS=(plain tls tokens tls+tokens)
declare -A PIDS URLS FLAGS TOKENS
for variant in "${VARIANTS[@]}"; do
  flags=() token=
  [[ $variant != *tls* ]] || flags+=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
  [[ $variant != *tokens* ]] || { flags+=(--auth-tokens "$WORK/tokens.txt"); token=$TOKEN; }
  serve "$variant" "${flags[@]}"
  "$PY" "$HELPER" check "$URL" --model "$MODEL" --ca "$WORK/cert.pem" --token "$token"
  PIDS[$variant]=$SERVER_PID URLS[$variant]=$URL FLAGS[$variant]=${flags[*]//$WORK\//} TOKENS[$variant]=$token
done
wait_quiet
set_field throughput_load1 "$SERIES_LOAD"
export TRANSPORT_BODY=$BODY
for round in $(seq "$ROUNDS"); do
  for variant in "${VARIANTS[@]}"; do
    export TRANSPORT_TOKEN=${TOKENS[$variant]}
    infer=${URLS[$variant]}/v2/models/$MODEL/infer
    ((round > 1)) || wrk -t 2 -c "$CONNS" -d 2s -s bench/transport.lua "$infer" >/dev/null  # warm-up
    "$PY" "$HELPER" wrk "$RECORDS" --pid "${PIDS[$variant]}" variant="$variant" flags="${FLAGS[$variant]}" \
      round="$round" load1="$(load1)" -- wrk -t 2 -c "$CONNS" -d "${RUN_S}s" -s bench/transport.lua "$infer"
  done
done
for variant in "${VARIANTS[@]}"; do stop_server "${PIDS[$variant]}"; done

# ----------------------------------------------------------------------------- 2. slow clients

log "2. $SLOW slowloris connections, --header-read-timeout-secs $HEADER_S"
serve slow --header-read-timeout-secs "$HEADER_S"
"$PY" "$HELPER" slow "$RECORDS" --url "$URL" --pid "$SERVER_PID" --model "$MODEL" -n "$SLOW" --timeout "$HEADER_S"
stop_server "$SERVER_PID"

# ----------------------------------------------------------------------------- 3. the limit

log "3. $SLOW slowloris connections against --max-connections $LIMIT"
serve limit --header-read-timeout-secs "$HEADER_S" --max-connections "$LIMIT"
"$PY" "$HELPER" limit "$RECORDS" --url "$URL" --pid "$SERVER_PID" --model "$MODEL" -n "$SLOW" --timeout "$HEADER_S" \
  --limit "$LIMIT"
stop_server "$SERVER_PID"

# ----------------------------------------------------------------------------- results

bench_finish "$HELPER"

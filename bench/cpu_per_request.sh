#!/usr/bin/env bash
# Server CPU per request: serve the tiny model (or the hello ceiling) and drive it with one oha run,
# then print req/s, server CPU µs per request (from /proc/<pid>/stat) and p99. For A/B runs of
# one knob at a time; bench/load.sh is the full comparison.
#
#   bash bench/cpu_per_request.sh [--hello] [--v2] [--top TOML] [--append TOML] [--bin PATH] [-c C] [-z SECONDS]
#
# --v2 sends the same instance as an Open Inference Protocol v2 REST request instead of TF Serving's.
# --top puts lines at the top of the model's config.toml (e.g. 'instances = 2'), --append at its
# end (e.g. '[batching]\nmax_batch_size = 1'; \n is a newline). --bin picks another serval binary
# (default: target/release/serval, built first). Environment: SERVAL_IO_THREADS and the like pass
# through to the server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
MODEL=breast_cancer_lr
HELLO=0 V2=0 TOP="" APPEND="" BIN="" C=64 DURATION=5
while (($#)); do
  case $1 in
    --hello) HELLO=1 ;;
    --v2) V2=1 ;;
    --top) TOP=$2; shift ;;
    --append) APPEND=$2; shift ;;
    --bin) BIN=$2; shift ;;
    -c) C=$2; shift ;;
    -z) DURATION=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
OHA=$(command -v oha || echo "${CARGO_HOME:-$HOME/.cargo}/bin/oha")
[[ -x $OHA ]] || { echo "oha is not installed: cargo install oha --version 1.16.0 --locked" >&2; exit 1; }
WORK=$(mktemp -d /tmp/serval-cpu.XXXXXX)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

if ((HELLO)); then
  cargo build --release -q -p serval-server --example hello
  target/release/examples/hello --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
  PID=$!
else
  if [[ -z $BIN ]]; then
    cargo build --release -q -p serval-cli
    BIN=target/release/serval
  fi
  mkdir -p "$WORK/repo/$MODEL"
  cp -r "examples/models/$MODEL/1" "$WORK/repo/$MODEL/1"
  { printf '%b\n' "$TOP"; cat "examples/models/$MODEL/config.toml"; printf '%b\n' "$APPEND"; } \
    >"$WORK/repo/$MODEL/config.toml"
  "$BIN" serve "$WORK/repo" --host 127.0.0.1 --http-port "$PORT" --grpc-port 0 >"$WORK/server.log" 2>&1 &
  PID=$!
fi
if ((V2)); then
  URL=http://127.0.0.1:$PORT/v2/models/$MODEL/infer
else
  URL=http://127.0.0.1:$PORT/v1/models/$MODEL:predict
fi
python3 - "$ROOT/examples/data/$MODEL.jsonl" "$V2" >"$WORK/body.json" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    features = json.loads(f.readline())["features"]
if sys.argv[2] == "1":
    print(json.dumps({"inputs": [{"name": "features", "shape": [1, len(features)], "datatype": "FP32", "data": features}]}))
else:
    print(json.dumps({"instances": [{"features": features}]}))
PY
for _ in $(seq 100); do
  curl -sf -o /dev/null -H 'content-type: application/json' --data-binary "@$WORK/body.json" "$URL" && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.1
done
"$OHA" --no-tui --output-format quiet -m POST -T application/json -D "$WORK/body.json" -z 2s -c "$C" "$URL"
cpu() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; }
before=$(cpu)
"$OHA" --no-tui --output-format json -m POST -T application/json -D "$WORK/body.json" -z "${DURATION}s" -c "$C" "$URL" >"$WORK/oha.json"
after=$(cpu)
python3 - "$WORK/oha.json" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json, sys
path, before, after, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = json.load(open(path))
ok = d["statusCodeDistribution"].get("200", 0)
cpu_us = (after - before) / tck * 1e6 / max(ok, 1)
p99 = d["latencyPercentiles"]["p99"] * 1000
print(f"{ok / d['summary']['total']:,.0f} req/s, {cpu_us:.1f} us server CPU/request, p99 {p99:.2f} ms, codes {d['statusCodeDistribution']}")
PY

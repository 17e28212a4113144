#!/usr/bin/env bash
# Where a tiny-model request's server CPU goes: the HTTP ceiling, then the same request cut short at
# successive stages of Serval's request path, each stage measured with bench/cpu_per_request.sh.
#
#   bash bench/stage_costs.sh [--rounds N] [--bin PATH]
#
# The cuts are a patch (bench/patches/request-stages.patch), not code in the server: the script
# applies it to a git worktree of HEAD and builds that into target/stages (the first build compiles
# every dependency: 27 minutes and 4.3 GB on 2 cores). --bin uses an already-built patched binary. Stages
# are read from SERVAL_STAGE by the patched server; runs are interleaved, round after round, because
# this machine's speed drifts, and the table reports each stage's median.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
ROUNDS=3 BIN=""
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --bin) BIN=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $BIN ]]; then
  TREE=$(mktemp -d /tmp/serval-stages.XXXXXX)
  trap 'git -C "$ROOT" worktree remove --force "$TREE" 2>/dev/null || true' EXIT
  git worktree add --detach -q "$TREE" HEAD
  git -C "$TREE" apply "$ROOT/bench/patches/request-stages.patch" \
    || { echo "request-stages.patch no longer applies to HEAD: refresh it" >&2; exit 1; }
  CARGO_TARGET_DIR=$ROOT/target/stages cargo build --release -q -p serval-cli --manifest-path "$TREE/Cargo.toml"
  BIN=$ROOT/target/stages/release/serval
fi
# Each stage and what the server does before answering (stages 1-7 answer hello's fixed body).
STAGES=(
  "hello|HTTP ceiling: axum hello, same request (examples/hello.rs)"
  "1|route + admission + read the body, then answer"
  "2|+ find the model, shed check, decode the JSON instances"
  "5|+ validate, mint keys, record metrics (no engine)"
  "7|+ arm the request's deadline timer (no engine)"
  "6|+ hand off to the engine thread, which replies without running the model"
  "3|+ run the model on the engine thread (batched)"
  "4|stage 5 + run the model inline on the I/O thread, one request per run (no batching)"
  "0|the whole path: + encode the real response"
)
RESULTS=$(mktemp)
for round in $(seq "$ROUNDS"); do
  for entry in "${STAGES[@]}"; do
    stage=${entry%%|*}
    if [[ $stage == hello ]]; then
      line=$(bash bench/cpu_per_request.sh --hello)
    else
      line=$(SERVAL_STAGE=$stage bash bench/cpu_per_request.sh --bin "$BIN")
    fi
    echo "round $round stage $stage: $line" >&2
    echo "$stage|$line" >>"$RESULTS"
  done
done
python3 - "$RESULTS" "${STAGES[@]}" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    stage, text = line.split("|", 1)
    rps = float(re.search(r"([\d,]+) req/s", text)[1].replace(",", ""))
    us = float(re.search(r"([\d.]+) us server CPU", text)[1])
    runs.setdefault(stage, []).append((rps, us))
print("| stage | what the server does | req/s (median) | server CPU µs/request (median) |")
print("|---|---|---:|---:|")
for entry in sys.argv[2:]:
    stage, what = entry.split("|", 1)
    rps = statistics.median(r for r, _ in runs[stage])
    us = statistics.median(u for _, u in runs[stage])
    print(f"| {stage} | {what} | {rps:,.0f} | {us:.1f} |")
PY
rm -f "$RESULTS"

#!/usr/bin/env bash
# The cost of the prediction log (`serval serve --prediction-log DIR`): throughput and latency of
# the tiny example model with the log off, buffered and synced, the writer's ceiling without a
# server, and recovery after a kill -9 with a full write-ahead segment. Loopback only; every run
# is time-bounded.
#
#   bash bench/log.sh            # full run (~5 min of measuring, plus waiting for a quiet machine)
#   bash bench/log.sh --quick    # smoke test: 2 s runs, no waiting; writes target/bench-quick/
#
# Options:
#   --bin PATH      the serval binary (default: <cargo target dir>/release/serval, the target dir
#                   from $CARGO_TARGET_DIR or `cargo metadata`; this script never builds it:
#                   `cargo build --release -p serval-cli --bin serval` first)
#   --writer PATH   the write_throughput example (default: <cargo target dir>/release/examples/
#                   write_throughput; `cargo build --release -p serval-log --example write_throughput`)
#   --python PATH   the Python for the helper, standard library only (default: python3)
#   --no-install    fail when oha is missing instead of `cargo install`ing it
#
# What it measures, breast_cancer_lr (30 float features), one TF REST instance per request with
# no key (the server mints one):
# - closed loops at c=64 (10 s, after a 2 s warm-up at c=8) with the log off, buffered and synced
#   ([logging] durability), the three run twice, interleaved; each log run writes a fresh DIR, is
#   stopped with SIGTERM (which rolls every segment into Parquet) and counted with `serval sql`;
# - the writer's ceiling: the write_throughput example, buffered and synced;
# - recovery: a buffered server loaded until its write-ahead segment holds 60 MiB, killed with
#   SIGKILL, restarted on the same DIR: seconds until ready, seconds until the dead process's
#   segments are rolled into Parquet, records recovered.
#
# Full runs write bench/results/log.json (every run, machine, commit, command) and
# bench/results/log.md (the tables, also printed).
#
# Environment: BENCH_LOAD_MAX (0.7) and BENCH_LOAD_WAIT (120 s): after starting each server and
# before the writer and recovery runs, wait until the 1-minute load average is below
# BENCH_LOAD_MAX, polling every 10 s, for at most BENCH_LOAD_WAIT s, then measure anyway and
# record the load. BENCH_SOURCE_REV: what to record as the measured source when the tree is not a
# git checkout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
COMMAND=$(printf '%q ' bash bench/log.sh "$@")
COMMAND=${COMMAND% }

QUICK=0
BIN=
WRITER=
PY=
NO_INSTALL=0
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --bin) BIN=${2:?--bin needs a path}; shift ;;
    --writer) WRITER=${2:?--writer needs a path}; shift ;;
    --python) PY=${2:?--python needs a path}; shift ;;
    --no-install) NO_INSTALL=1 ;;
    -h | --help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done

MODEL=breast_cancer_lr
CONFIGS=(off buffered synced)
CONCURRENCY=64
WARMUP=2
LOAD_MAX=${BENCH_LOAD_MAX:-0.7}
LOAD_WAIT=${BENCH_LOAD_WAIT:-120}
# Recovery: load until the open segment holds this much (segments roll at 64 MiB), at most
# RECOVERY_TIMEOUT s; the same bound for the restarted server's roll.
RECOVERY_TIMEOUT=300
if ((QUICK)); then
  DURATION=2
  LOAD_WAIT=0
  WRITER_RECORDS=100000
  WRITER_SYNCED_RECORDS=5000
  RECOVERY_MIB=8
else
  DURATION=10
  WRITER_RECORDS=1000000
  WRITER_SYNCED_RECORDS=20000
  RECOVERY_MIB=60
fi
bench_init log serval-log-bench

# ----------------------------------------------------------------------------- setup

log "tools"
command -v curl >/dev/null || die "curl is required"
PY=${PY:-python3}
[[ -x $PY ]] || PY=$(command -v "$PY" || true)
[[ -n $PY && -x $PY ]] || die "no Python at ${PY:-(none)}"
HELPER=$ROOT/bench/python/log_bench.py

if [[ -z $BIN || -z $WRITER ]]; then
  TARGET_DIR=${CARGO_TARGET_DIR:-$(cargo_target_dir)}
  BIN=${BIN:-$TARGET_DIR/release/serval}
  WRITER=${WRITER:-$TARGET_DIR/release/examples/write_throughput}
fi
[[ -x $BIN ]] || die "no serval binary at $BIN: cargo build --release -p serval-cli --bin serval, or --bin PATH"
[[ -x $WRITER ]] ||
  die "no write_throughput at $WRITER: cargo build --release -p serval-log --example write_throughput, or --writer PATH"
# Private copies: a concurrent build in the same target directory must not swap them mid-run.
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/serval"
cp "$WRITER" "$WORK/bin/write_throughput"
SERVAL=$WORK/bin/serval
WRITER_BIN=$WORK/bin/write_throughput
DEBUG_BINARY=false
[[ $(readlink -f "$BIN") != */debug/* && $(readlink -f "$WRITER") != */debug/* ]] || DEBUG_BINARY=true
[[ $DEBUG_BINARY == false ]] || log "warning: $BIN or $WRITER is a debug build: its figures mean nothing"

find_oha
if [[ ! -x $OHA ]] && ((!NO_INSTALL)); then
  command -v cargo >/dev/null || die "oha is missing and cargo is not there to install it"
  install_oha || die "cargo install oha --version $OHA_VERSION failed"
fi
[[ -x $OHA ]] || die "oha is missing ($OHA): cargo install oha --version $OHA_VERSION --locked, or put it on PATH"
log "load generator: $("$OHA" --version | head -1)"

# Repositories: a copy of the model per configuration, its config.toml kept, a [logging] table
# appended for the logged ones.
make_repo() {
  local name=$1 logging=$2 dir=$WORK/repo-$1
  mkdir -p "$dir"
  cp -r "examples/models/$MODEL" "$dir/$MODEL"
  [[ -z $logging ]] || printf '\n%s\n' "$logging" >>"$dir/$MODEL/config.toml"
}
make_repo off ""
make_repo buffered $'[logging]\nsample_rate = 1.0\ndurability = "buffered"'
make_repo synced $'[logging]\ndurability = "synced"'

BODY=$WORK/body.json
"$PY" "$HELPER" body "examples/data/$MODEL.jsonl" "$BODY"

json_str() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
"$PY" "$HELPER" machine "$WORK/machine.json" "$OHA" model="$MODEL" duration_s="$DURATION" \
  warmup_s="$WARMUP" concurrency="$CONCURRENCY" load_max="$LOAD_MAX" load_wait_s="$LOAD_WAIT" \
  writer_records="$WRITER_RECORDS" writer_synced_records="$WRITER_SYNCED_RECORDS" \
  recovery_target_mib="$RECOVERY_MIB" recovery_timeout_s="$RECOVERY_TIMEOUT"
"$PY" "$HELPER" set "$WORK/machine.json" quick "$( ((QUICK)) && echo true || echo false)"
"$PY" "$HELPER" set "$WORK/machine.json" command "$(json_str "$COMMAND")"
"$PY" "$HELPER" set "$WORK/machine.json" serval "$(json_str "$BIN ($("$SERVAL" --version 2>/dev/null | head -1))")"
"$PY" "$HELPER" set "$WORK/machine.json" writer "$(json_str "$WRITER")"
"$PY" "$HELPER" set "$WORK/machine.json" debug_binary "$DEBUG_BINARY"

# ----------------------------------------------------------------------------- helpers

# serval_start REPO LOGDIR TAG [ARGS...]: a server on free ports (LOGDIR empty: no log), ready;
# sets SERVER_PID, ADDR and SERVER_LOG.
serval_start() {
  local repo=$1 logdir=$2 tag=$3
  local -a args=()
  shift 3
  [[ -z $logdir ]] || args=(--prediction-log "$logdir")
  SERVER_LOG=$WORK/serval-$tag.log
  start_server "$SERVER_LOG" "$SERVAL" serve "$repo" --host 127.0.0.1 --http-port 0 --grpc-port 0 \
    "${args[@]}" "$@"
  ADDR=$(wait_for_line "$SERVER_LOG" 'serval listening http=([0-9.]+:[0-9]+)' "$SERVER_PID")
  # At most 300 s: a debug build loads and warms up slowly.
  wait_for_url "http://$ADDR/v2/health/ready" "$SERVER_PID" 300
  log "  serval $tag at $ADDR"
}

# kill_server PID: SIGKILL to its process group, no grace.
kill_server() {
  local pid=$1 keep=() p
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PGIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PGIDS=("${keep[@]}")
}

# oha_run OUT SECONDS C URL: one closed-loop run, oha's JSON in OUT.
oha_run() {
  timeout $(($2 + 60)) "$OHA" --no-tui --output-format json --stats-success-breakdown \
    -m POST -T application/json -D "$BODY" -z "${2}s" -c "$3" "$4" >"$1"
}

# sql_count DIR: the records of the log at DIR, counted by `serval sql`.
sql_count() {
  "$SERVAL" sql examples/models "SELECT count(*) AS n FROM predictions" --prediction-log "$1" \
    >"$WORK/sql.out" 2>"$WORK/sql.err" || { cat "$WORK/sql.err" >&2; die "serval sql failed on $1"; }
  "$PY" "$HELPER" sql-count <"$WORK/sql.out"
}

# bytes_under DIR NAME-GLOB: total bytes of the matching files under DIR (0 when none, or no DIR).
bytes_under() {
  { find "$1" -type f -name "$2" -printf '%s\n' 2>/dev/null || true; } | awk '{ s += $1 } END { print s + 0 }'
}

# files_under DIR NAME-GLOB: how many files match.
files_under() {
  { find "$1" -type f -name "$2" 2>/dev/null || true; } | wc -l
}

# largest_under DIR NAME-GLOB: bytes of the largest matching file (0 when none).
largest_under() {
  { find "$1" -type f -name "$2" -printf '%s\n' 2>/dev/null || true; } | awk '$1 > m { m = $1 } END { print m + 0 }'
}

# ----------------------------------------------------------------------------- configurations

# measure CONFIG RUN: one server with CONFIG: warm-up, the closed loop, /metrics, a graceful stop,
# then what the log holds.
measure() {
  local config=$1 run=$2 logdir= l url n
  local -a extra=()
  [[ $config == off ]] || logdir=$WORK/log-$config-$run
  log "run $run: $config${logdir:+ (--prediction-log $logdir)}"
  serval_start "$WORK/repo-$config" "$logdir" "$config-$run"
  wait_quiet
  url="http://$ADDR/v1/models/$MODEL:predict"
  check_post "$url" "$BODY" application/json
  oha_run "$WORK/warmup.json" "$WARMUP" 8 "$url"
  l=$(load1)
  oha_run "$WORK/run.json" "$DURATION" "$CONCURRENCY" "$url"
  # A moment for the requests oha abandoned at its deadline to finish (and be counted).
  sleep 1
  "$PY" "$HELPER" metrics "http://$ADDR/metrics" "$WORK/metrics.json"
  stop_server "$SERVER_PID"
  if [[ -n $logdir ]]; then
    n=$(sql_count "$logdir")
    extra=(records_logged="$n"
      parquet_bytes="$(bytes_under "$logdir/predictions" '*.parquet')"
      parquet_files="$(files_under "$logdir/predictions" '*.parquet')"
      segments_left="$(files_under "$logdir/_wal" '*.seg')")
  fi
  "$PY" "$HELPER" add "$RECORDS" "$WORK/warmup.json" "$WORK/run.json" "$WORK/metrics.json" \
    config="$config" run="$run" concurrency="$CONCURRENCY" check_ok=1 load1="$l" \
    series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET" \
    "${extra[@]}"
}

for run in 1 2; do
  for config in "${CONFIGS[@]}"; do
    measure "$config" "$run"
  done
done

# ----------------------------------------------------------------------------- writer ceiling

log "writer ceiling: write_throughput $WRITER_RECORDS, then $WRITER_SYNCED_RECORDS synced"
wait_quiet
l=$(load1)
TMPDIR=$WORK timeout 900 "$WRITER_BIN" "$WRITER_RECORDS" >"$WORK/writer.json"
"$PY" "$HELPER" add-writer "$RECORDS" "$WORK/writer.json" durability=buffered load1="$l" \
  series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET"
l=$(load1)
TMPDIR=$WORK timeout 900 "$WRITER_BIN" "$WRITER_SYNCED_RECORDS" synced >"$WORK/writer.json"
"$PY" "$HELPER" add-writer "$RECORDS" "$WORK/writer.json" durability=synced load1="$l" \
  series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET"

# ----------------------------------------------------------------------------- recovery

RLOG=$WORK/log-recovery
TARGET=$((RECOVERY_MIB * 1024 * 1024))
log "recovery: load until the write-ahead segment holds $RECOVERY_MIB MiB, then kill -9"
serval_start "$WORK/repo-buffered" "$RLOG" recovery --prediction-log-roll-secs 3600
wait_quiet
url="http://$ADDR/v1/models/$MODEL:predict"
check_post "$url" "$BODY" application/json
# The load, in its own process group so that cleanup stops it if this script dies.
setsid "$OHA" --no-tui --output-format json -m POST -T application/json -D "$BODY" \
  -z "$((RECOVERY_TIMEOUT + 60))s" -c "$CONCURRENCY" "$url" \
  >"$WORK/recovery-oha.json" 2>"$WORK/recovery-oha.err" </dev/null &
OHA_PID=$!
PGIDS+=("$OHA_PID")
started=$SECONDS
reached=false
size=0
while ((SECONDS - started < RECOVERY_TIMEOUT)); do
  size=$(largest_under "$RLOG/_wal" '*.seg')
  if ((size >= TARGET)); then
    reached=true
    break
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; die "the server died under load"; }
  kill -0 "$OHA_PID" 2>/dev/null || { cat "$WORK/recovery-oha.err" >&2; die "oha stopped before the segment was full"; }
  sleep 0.5
done
log "  segment at $((size / 1024 / 1024)) MiB after $((SECONDS - started)) s (target reached: $reached)"
"$PY" "$HELPER" metrics "http://$ADDR/metrics" "$WORK/metrics-kill.json"
kill_server "$SERVER_PID"
{ find "$RLOG/_wal" -type f -name '*.seg' || true; } >"$WORK/dead-segments.txt"
seg_bytes=$(bytes_under "$RLOG/_wal" '*.seg')
seg_files=$(files_under "$RLOG/_wal" '*.seg')
# Segments that reached 64 MiB before the kill were rolled by the live server: counted apart.
rolled_before=$(files_under "$RLOG/predictions" '*.parquet')
log "  killed: $seg_files segment(s), $seg_bytes bytes; $rolled_before rolled before the kill"
# oha prints its summary when interrupted; whether it does or not, it is stopped.
kill -INT -- "-$OHA_PID" 2>/dev/null || true
for _ in $(seq 100); do
  kill -0 "$OHA_PID" 2>/dev/null || break
  sleep 0.1
done
stop_server "$OHA_PID"
before=$(sql_count "$RLOG")

log "recovery: restart on the same log"
wait_quiet
l=$(load1)
t0=$EPOCHREALTIME
start_server "$WORK/serval-restart.log" "$SERVAL" serve "$WORK/repo-buffered" --host 127.0.0.1 \
  --http-port 0 --grpc-port 0 --prediction-log "$RLOG" --prediction-log-roll-secs 3600
"$PY" "$HELPER" restart-poll "$t0" "$WORK/serval-restart.log" "$SERVER_PID" \
  "$WORK/dead-segments.txt" "$WORK/restart.json" "$RECOVERY_TIMEOUT"
"$PY" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["ready_s"] is None)' "$WORK/restart.json" ||
  { cat "$WORK/serval-restart.log" >&2; die "the restarted server was not ready"; }
stop_server "$SERVER_PID"
after=$(sql_count "$RLOG")
written=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["written"])' "$WORK/metrics-kill.json")
"$PY" "$HELPER" add-recovery "$RECORDS" "$WORK/restart.json" "$WORK/recovery-oha.json" \
  target_mib="$RECOVERY_MIB" target_reached="$reached" segment_bytes="$seg_bytes" \
  segment_files="$seg_files" rolled_before_kill="$rolled_before" \
  records_written_before_kill="$written" records_before_restart="$before" \
  records_after_restart="$after" records_recovered="$((after - before))" check_ok=1 load1="$l" \
  series_load1="$SERIES_LOAD" series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET"

# ----------------------------------------------------------------------------- results

bench_finish "$HELPER"

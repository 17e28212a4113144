# Shared by bench/load.sh, bench/batch.sh and bench/corpus.sh, which source it from the repository
# root (ROOT) under `set -euo pipefail`: logging, the work directory and its cleanup, servers in
# their own process groups, readiness waits, the load-average wait, the tools (a virtualenv, oha,
# the cargo target directory, the onnxruntime wheel's library) and the results files.
# shellcheck shell=bash

OHA_VERSION=1.16.0

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "error: $*"; exit 1; }

# bench_init NAME TMP_PREFIX: where a run writes (OUT_DIR, RESULTS = NAME.json and REPORT = NAME.md,
# under target/bench-quick/ when QUICK=1, else bench/results/), and a fresh work directory (WORK,
# with an empty RECORDS file) that cleanup removes when the script succeeds and keeps otherwise.
bench_init() {
  BENCH_NAME=$1
  if ((QUICK)); then
    OUT_DIR=$ROOT/target/bench-quick
  else
    OUT_DIR=$ROOT/bench/results
  fi
  RESULTS=$OUT_DIR/$1.json
  REPORT=$OUT_DIR/$1.md
  WORK=$(mktemp -d "/tmp/$2.XXXXXX")
  RECORDS=$WORK/records.jsonl
  : >"$RECORDS"
  PGIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

# bench_command SCRIPT VAR...: sets COMMAND, the command as run (`bash SCRIPT`), with those of the
# VARs that came from the environment.
bench_command() {
  local script=$1 v
  shift
  COMMAND=$(for v in "$@"; do [[ -z ${!v:-} ]] || printf '%s=%q ' "$v" "${!v}"; done; printf 'bash %q' "$script")
}

# bench_no_args SCRIPT ARG...: -h or --help prints SCRIPT's head comment and exits; any other
# argument is an error (settings come from the environment).
bench_no_args() {
  local script=$1
  shift
  [[ ${1:-} != -h && ${1:-} != --help ]] || { sed -n '2,/^set -euo/{/^set -euo/d;p}' "$script" | sed 's/^# \{0,1\}//'; exit 0; }
  (($# == 0)) || die "no arguments (see --help); settings come from the environment"
}

# ----------------------------------------------------------------------------- processes

# cleanup: stops every server still running (TERM, then KILL after 10 s), then removes WORK.
cleanup() {
  local status=$? pid
  for pid in "${PGIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${PGIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  PGIDS=()
  if ((status == 0)); then
    rm -rf "$WORK"
  else
    echo "bench/$BENCH_NAME.sh failed (exit $status); logs kept in $WORK" >&2
  fi
}

# start_server LOG CMD...: runs CMD in its own process group (so stopping it stops its workers);
# sets SERVER_PID.
start_server() {
  local logfile=$1
  shift
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  SERVER_PID=$!
  PGIDS+=("$SERVER_PID")
}

# stop_server PID: TERM to its process group, KILL after 10 s.
stop_server() {
  local pid=$1 keep=() p
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PGIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PGIDS=("${keep[@]}")
}

# wait_for_line LOG REGEX PID: prints the first capture group of REGEX once LOG has it (60 s).
wait_for_line() {
  local logfile=$1 regex=$2 pid=$3
  for _ in $(seq 600); do
    if [[ -s $logfile ]] && [[ $(cat "$logfile") =~ $regex ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; die "server exited before it was ready"; }
    sleep 0.1
  done
  cat "$logfile" >&2
  die "server not ready after 60 s"
}

# wait_for_url URL PID [SECONDS [CURL_ARG...]]: polls until GET URL answers 200 (at most SECONDS,
# default 120); the CURL_ARGs (e.g. --cacert FILE) go to each curl.
wait_for_url() {
  local url=$1 pid=$2 secs=${3:-120}
  shift $(($# < 3 ? $# : 3))
  for _ in $(seq $((secs * 10))); do
    curl -sf --max-time 5 -o /dev/null "$@" "$url" && return 0
    kill -0 "$pid" 2>/dev/null || die "server exited before it was ready ($url)"
    sleep 0.1
  done
  die "not ready after $secs s: $url"
}

# check_post URL BODY CONTENT-TYPE [HEADER]: one request must answer 200 (its body in
# $WORK/check.out).
check_post() {
  local code
  local -a h=(-H "content-type: $3")
  [[ -z ${4:-} ]] || h+=(-H "$4")
  code=$(curl -s --max-time 120 -o "$WORK/check.out" -w '%{http_code}' "${h[@]}" --data-binary "@$2" "$1")
  [[ $code == 200 ]] || { head -c 2000 "$WORK/check.out" >&2; echo >&2; die "POST $1 answered $code"; }
}

# ----------------------------------------------------------------------------- load average

load1() { cut -d' ' -f1 /proc/loadavg; }

# wait_quiet: waits for the 1-minute load average to drop below LOAD_MAX (at most LOAD_WAIT s,
# polling every 10 s); sets SERIES_LOAD, SERIES_WAITED and SERIES_QUIET (1 if it got there).
# shellcheck disable=SC2034 # the SERIES_* variables are for the scripts that source this file
wait_quiet() {
  local start=$SECONDS l
  while :; do
    l=$(load1)
    if awk -v l="$l" -v m="$LOAD_MAX" 'BEGIN { exit !(l < m) }'; then
      SERIES_QUIET=1
      break
    fi
    if ((SECONDS - start >= LOAD_WAIT)); then
      SERIES_QUIET=0
      ((LOAD_WAIT == 0)) || log "  load average $l still >= $LOAD_MAX after $((SECONDS - start)) s: measuring under it"
      break
    fi
    sleep 10
  done
  SERIES_LOAD=$l
  SERIES_WAITED=$((SECONDS - start))
  log "  load average $l (waited ${SERIES_WAITED} s)"
}

# ----------------------------------------------------------------------------- tools

# bench_venv VENV REQUIREMENTS...: creates the virtualenv if need be, installs the requirements
# files into it; sets PY.
bench_venv() {
  local venv=$1 req
  local -a reqs=()
  shift
  for req in "$@"; do reqs+=(-r "$req"); done
  if [[ ! -x $venv/bin/python ]]; then
    log "creating $venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}"
  PY=$venv/bin/python
}

# find_oha: sets OHA to the oha on PATH, else to where `cargo install` puts it (maybe not there).
find_oha() {
  OHA=$(command -v oha || true)
  [[ -n $OHA ]] || OHA=${CARGO_HOME:-$HOME/.cargo}/bin/oha
}

install_oha() {
  log "installing oha $OHA_VERSION (cargo install --locked)"
  cargo install oha --version "$OHA_VERSION" --locked
}

# cargo_target_dir: prints cargo's target directory (`cargo metadata --no-deps` reads the
# manifests only; it builds nothing).
cargo_target_dir() {
  cargo metadata --format-version 1 --no-deps |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# ort_lib: prints the libonnxruntime.so of $PY's onnxruntime wheel (nothing when it has none), so
# that Serval loads the same ONNX Runtime build as the Python side.
ort_lib() {
  "$PY" -c 'import glob, os, onnxruntime as o
libs = sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so*")))
print(libs[-1] if libs else "")'
}

# bench_ort: exports ORT_DYLIB_PATH, the library of $PY's onnxruntime wheel (see ort_lib).
bench_ort() {
  ORT_DYLIB_PATH=$(ort_lib)
  [[ -n $ORT_DYLIB_PATH ]] || die "the onnxruntime package of $PY ships no libonnxruntime.so"
  export ORT_DYLIB_PATH
}

# bench_serval: BIN (SERVAL_BIN, default the release build; never built here), SERVAL (a private
# copy in WORK, so that a build finishing meanwhile cannot swap it mid-run), VERSION, and
# DEBUG_BINARY (true when BIN's path has /debug/ in it or BENCH_DEBUG_BINARY=1: timings mean nothing).
bench_serval() {
  BIN=${SERVAL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/serval}
  [[ -x $BIN ]] || die "no serval binary at $BIN: cargo build --release -p serval-cli --bin serval, or SERVAL_BIN=PATH"
  mkdir -p "$WORK/bin"
  SERVAL=$WORK/bin/serval
  cp "$BIN" "$SERVAL"
  DEBUG_BINARY=false
  [[ $(readlink -f "$BIN") != */debug/* && ${BENCH_DEBUG_BINARY:-0} != 1 ]] || DEBUG_BINARY=true
  [[ $DEBUG_BINARY == false ]] || log "warning: $BIN is a debug build: its timings mean nothing"
  VERSION=$("$SERVAL" --version 2>/dev/null | head -1 || true)
  log "  serval: $BIN ($VERSION); python: $PY"
}

# ----------------------------------------------------------------------------- results

# set_field KEY JSON / set_text KEY TEXT: one field of $WORK/machine.json, the results file's head
# (through $HELPER's `set`).
set_field() { "$PY" "$HELPER" set "$WORK/machine.json" "$1" "$2"; }
set_text() { set_field "$1" "$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$2")"; }

# bench_finish HELPER: HELPER's finalize (the records and $WORK/machine.json to RESULTS), then its
# report, printed and written to REPORT.
bench_finish() {
  mkdir -p "$OUT_DIR"
  "$PY" "$1" finalize "$RECORDS" "$WORK/machine.json" "$RESULTS"
  "$PY" "$1" report "$RESULTS" | tee "$REPORT"
  log "wrote $RESULTS and $REPORT"
}

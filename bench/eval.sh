#!/usr/bin/env bash
# `serval eval` over a prediction log of ROWS logged predictions against the same daily windows
# computed with pandas + scikit-learn and with Evidently's Report: time and peak memory.
#
#   bash bench/eval.sh              # 10,000,000 rows: writes bench/results/eval.json and eval.md
#   bash bench/eval.sh 200000       # a smoke run: any other ROWS writes target/bench-quick/eval.*
#
# The log (built once per ROWS and reused, under ${BENCH_DIR:-/tmp/serval-eval-bench}/rows-ROWS):
# ROWS breast_cancer_lr predictions spread evenly over 10 UTC days (2026-03-01 to 2026-03-10),
# made by `serval batch examples/models breast_cancer_lr --input x/part-NNN.parquet --output
# out-NNN --prediction-log log --time-column ts` from Parquet files of breast-cancer rows
# resampled with noise (seeded; keys k0, k1, ...), one job per file: EVAL_BATCH_JOBS files of
# consecutive rows (default 10, a day each; 1: one job over one file). Several jobs because a job's
# peak RSS grows with its rows (the log's queue holds up to 10,000 record batches of 8192 rows
# while its writer lags behind the model; a debug build: 420 MiB at 100 k rows, 882 MiB at 400 k,
# 1.9 GB at 1 M), which would be some 17 GB for 10 M rows in one job. Then labels for 80% of the
# keys (`serval labels import`) and a later import relabelling 1% of those (the latest label of a
# key counts). The reference is the 569 original rows (ref.csv): `serval profile` writes its
# profile into a copy of examples/models (examples/ is never written), and `serval batch` predicts
# it for Evidently's reference.
#
# Measured, each a whole process under `/usr/bin/time -v` (seconds: wall clock; peak RSS: its
# "Maximum resident set size"), after the log's files were read once into the page cache, each
# after waiting for a quiet machine:
#   a. serval eval, metrics only (the repository copy without a profile), --window 1d, EVAL_REPEAT
#      times (default 3; the median is reported);
#   b. serval eval with drift (the copy with reference_profile.json), EVAL_REPEAT times;
#   a'. (a) over the first day only (--to 2026-03-02), a tenth of the rows: does memory grow?
#   c. pandas + scikit-learn (bench/python/eval_bench.py pandas): the log's Parquet read with
#      pyarrow, outputs' JSON parsed per row (orjson), latest label per key joined, grouped by
#      UTC day, scikit-learn's metrics per day;
#   d. Evidently 0.7.23 (its own virtualenv): per day a Report with ClassificationPreset, then
#      again with DataDriftPreset against the reference (the drift variant); reading and joining
#      included. Past EVIDENTLY_TIMEOUT s or the memory cap it is killed and recorded as such,
#      with the last step it reached.
# (a) and (c) must agree on every day's accuracy to 1e-9 (the script fails otherwise, after
# writing the results).
#
# Environment:
#   SERVAL_BIN         the serval binary (default: <cargo target dir>/release/serval; this script
#                      never builds: cargo build --release -p serval-cli --bin serval)
#   BENCH_DIR          where the logs are kept between runs (/tmp/serval-eval-bench)
#   EVAL_BATCH_JOBS    `serval batch` jobs that build the log (10)
#   EVAL_REPEAT        runs of each serval measurement (3)
#   EVAL_TOOLS         which to measure, of "serval pandas evidently" (all three)
#   EVAL_MEMORY_LIMIT_MIB  passed to serval eval as --memory-limit-mib (default: serval's own)
#   EVAL_MEM_CAP_MIB   a run whose RSS passes this is killed and recorded as "memory-cap"
#                      (default: 70% of MemTotal)
#   EVIDENTLY_TIMEOUT  seconds per Evidently run (1800); PANDAS_TIMEOUT (3600); SERVAL_TIMEOUT (1800)
#   EVIDENTLY_VENV     the Evidently virtualenv (/tmp/evenv; created when missing: python3 -m venv,
#                      pip install evidently==0.7.23 'pandas<3' pyarrow orjson)
#   PY                 the Python for the data, the pandas baseline and the report (python3 when it
#                      has numpy, pandas, pyarrow, scikit-learn and orjson; else the Evidently one)
#   BENCH_LOAD_MAX (0.7), BENCH_LOAD_WAIT (120 s; 0 for smoke runs): before each measurement,
#                      wait until the 1-minute load average is below BENCH_LOAD_MAX, at most
#                      BENCH_LOAD_WAIT s, then measure anyway and record the load.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh
COMMAND=$(printf '%q ' bash bench/eval.sh "$@")
COMMAND=${COMMAND% }
[[ ${1:-} != -h && ${1:-} != --help ]] || { sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

ROWS=${1:-10000000}
[[ $ROWS =~ ^[0-9]+$ ]] && ((ROWS >= 1000)) || die "ROWS must be a whole number >= 1000, not '$ROWS'"
(($# <= 1)) || die "one argument at most: ROWS"
FULL_ROWS=10000000
QUICK=$((ROWS < FULL_ROWS ? 1 : 0))
MODEL=breast_cancer_lr
SEED=20260301
GEN_VERSION=1
BATCH_JOBS=${EVAL_BATCH_JOBS:-10}
[[ $BATCH_JOBS =~ ^[1-9][0-9]*$ ]] || die "EVAL_BATCH_JOBS must be a whole number >= 1"
REPEAT=${EVAL_REPEAT:-3}
TOOLS=" ${EVAL_TOOLS:-serval pandas evidently} "
EV_TIMEOUT=${EVIDENTLY_TIMEOUT:-1800}
PD_TIMEOUT=${PANDAS_TIMEOUT:-3600}
SV_TIMEOUT=${SERVAL_TIMEOUT:-1800}
EVENV=${EVIDENTLY_VENV:-/tmp/evenv}
DATA_ROOT=${BENCH_DIR:-/tmp/serval-eval-bench}
DATA=$DATA_ROOT/rows-$ROWS
LOG=$DATA/log
LOAD_MAX=${BENCH_LOAD_MAX:-0.7}
if ((QUICK)); then LOAD_WAIT=${BENCH_LOAD_WAIT:-0}; else LOAD_WAIT=${BENCH_LOAD_WAIT:-120}; fi
MEM_CAP=${EVAL_MEM_CAP_MIB:-$(awk '/^MemTotal:/ { printf "%d", $2 * 0.7 / 1024 }' /proc/meminfo)}
EXTRA=()
[[ -z ${EVAL_MEMORY_LIMIT_MIB:-} ]] || EXTRA=(--memory-limit-mib "$EVAL_MEMORY_LIMIT_MIB")
has() { [[ $TOOLS == *" $1 "* ]]; }
bench_init eval serval-eval-work
HELPER=$ROOT/bench/python/eval_bench.py

# ----------------------------------------------------------------------------- tools

log "tools"
if [[ ! -x /usr/bin/time ]]; then
  log "installing GNU time (apt-get install time)"
  { apt-get update -qq && apt-get install -y -qq time; } >"$WORK/apt.log" 2>&1 ||
    { cat "$WORK/apt.log" >&2; die "apt-get install time failed"; }
fi
# Captured first: `grep -q` stops reading early, and under pipefail time's SIGPIPE would fail.
time_v=$(/usr/bin/time -v true 2>&1 || true)
[[ $time_v == *'Maximum resident set size'* ]] || die "/usr/bin/time is not GNU time"

EVPY=$EVENV/bin/python
ev_ok() { [[ -x $EVPY ]] && "$EVPY" -c 'import evidently, pandas, pyarrow, orjson, sklearn
assert evidently.__version__ == "0.7.23", evidently.__version__' 2>/dev/null; }
py_ok() { "$1" -c 'import numpy, pandas, pyarrow, sklearn, orjson' 2>/dev/null; }
PY=${PY:-python3}
if has evidently || ! py_ok "$PY"; then
  if ! ev_ok; then
    [[ -x $EVPY ]] || { log "creating $EVENV"; python3 -m venv "$EVENV"; }
    log "installing evidently==0.7.23 'pandas<3' pyarrow orjson into $EVENV"
    "$EVENV/bin/pip" install -q --disable-pip-version-check evidently==0.7.23 'pandas<3' pyarrow orjson
    ev_ok || die "$EVPY cannot import evidently 0.7.23, pandas, pyarrow, orjson and scikit-learn"
  fi
fi
py_ok "$PY" || { log "$PY lacks numpy, pandas, pyarrow, scikit-learn or orjson: using $EVPY"; PY=$EVPY; }
log "  python: $PY; evidently python: $(has evidently && echo "$EVPY" || echo '(not measured)')"

if [[ -n ${SERVAL_BIN:-} ]]; then
  BIN=$SERVAL_BIN
else
  BIN=${CARGO_TARGET_DIR:-$(cargo_target_dir)}/release/serval
fi
[[ -x $BIN ]] || die "no serval binary at $BIN: cargo build --release -p serval-cli --bin serval, or SERVAL_BIN=PATH"
# A private copy: a concurrent build must not swap it mid-run.
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/serval"
SERVAL=$WORK/bin/serval
DEBUG_BINARY=false
[[ $(readlink -f "$BIN") != */debug/* ]] || DEBUG_BINARY=true
[[ $DEBUG_BINARY == false ]] || log "warning: $BIN is a debug build: its figures mean nothing"
VERSION=$("$SERVAL" --version 2>/dev/null | head -1 || true)

# run_step NAME OUT.json CMD...: a setup step under the helper's supervisor (time, peak RSS).
run_step() {
  local name=$1 out=$2
  shift 2
  log "  $name"
  "$PY" "$HELPER" run --out "$out" --stdout "$out.stdout" --stderr "$out.stderr" --timeout 7200 \
    --mem-cap "$MEM_CAP" -- "$@" || { cat "$out.stdout" >&2 || true; die "$name failed"; }
}

# ----------------------------------------------------------------------------- the log

STAMP="gen_version=$GEN_VERSION rows=$ROWS seed=$SEED batch_jobs=$BATCH_JOBS"
if [[ -f $DATA/complete && $(cat "$DATA/complete") == "$STAMP" ]]; then
  REUSED=true
  log "reusing the log in $DATA ($(cat "$DATA/built_by" 2>/dev/null || echo '?'))"
else
  REUSED=false
  log "building the log in $DATA"
  rm -rf "$DATA"
  mkdir -p "$DATA/build"
  run_step "generate $ROWS rows (python)" "$DATA/build/gen.json" \
    "$PY" "$HELPER" gen "$ROWS" "$DATA" --seed "$SEED" --parts "$BATCH_JOBS"
  for part in "$DATA"/x/part-*.parquet; do
    n=$(basename "$part" .parquet)
    n=${n#part-}
    run_step "serval batch --prediction-log, part $((10#$n + 1)) of $BATCH_JOBS" "$DATA/build/batch-$n.json" \
      "$SERVAL" batch examples/models "$MODEL" --input "$part" --output "$DATA/out-$n" \
      --prediction-log "$LOG" --time-column ts
    tail -n 2 "$DATA/build/batch-$n.json.stderr" | sed 's/^/    /'
  done
  run_step "serval labels import (80% of the keys)" "$DATA/build/labels-1.json" \
    "$SERVAL" labels import --prediction-log "$LOG" --model "$MODEL" "$DATA/labels-1.parquet"
  run_step "serval labels import (1% relabelled)" "$DATA/build/labels-2.json" \
    "$SERVAL" labels import --prediction-log "$LOG" --model "$MODEL" "$DATA/labels-2.parquet"
  run_step "serval batch on the reference (Evidently's reference outputs)" "$DATA/build/ref-batch.json" \
    "$SERVAL" batch examples/models "$MODEL" --input "$DATA/ref.csv" --output "$DATA/ref-out"
  [[ -d $LOG/predictions && -f $DATA/ref-out/_SUCCESS ]] || die "the log or the reference outputs are missing in $DATA"
  # The input and the batch outputs are not needed again.
  rm -rf "$DATA/x" "$DATA"/out-*
  echo "$BIN ($VERSION)" >"$DATA/built_by"
  echo "$STAMP" >"$DATA/complete"
fi
cat "$DATA/build/labels-1.json.stdout" "$DATA/build/labels-2.json.stdout" 2>/dev/null | sed 's/^/  /' || true

# The repositories: copies of examples/models, one profiled.
cp -r examples/models "$WORK/repo-metrics"
rm -f "$WORK"/repo-metrics/*/*/reference_profile.json
cp -r "$WORK/repo-metrics" "$WORK/repo-drift"
log "serval profile into $WORK/repo-drift"
"$SERVAL" profile "$WORK/repo-drift" "$MODEL" --data "$DATA/ref.csv" >"$WORK/profile.out" 2>&1 ||
  { cat "$WORK/profile.out" >&2; die "serval profile failed"; }
sed 's/^/  /' "$WORK/profile.out"
[[ -f $WORK/repo-drift/$MODEL/1/reference_profile.json ]] || die "serval profile wrote no reference_profile.json"

LOG_BYTES=$({ find "$LOG" -type f -name '*.parquet' -printf '%s\n' || true; } | awk '{ s += $1 } END { printf "%d\n", s }')
LOG_FILES=$({ find "$LOG/predictions" -type f -name '*.parquet' || true; } | wc -l)
log "log: $((LOG_BYTES / 1024 / 1024)) MiB of Parquet, $LOG_FILES prediction files"

# ----------------------------------------------------------------------------- run description

json_str() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
"$PY" "$HELPER" machine "$WORK/machine.json" rows="$ROWS" repeat="$REPEAT" load_max="$LOAD_MAX" \
  load_wait_s="$LOAD_WAIT" evidently_timeout_s="$EV_TIMEOUT" pandas_timeout_s="$PD_TIMEOUT" \
  serval_timeout_s="$SV_TIMEOUT" mem_cap_mib="$MEM_CAP" log_bytes="$LOG_BYTES" log_files="$LOG_FILES"
set_json() { "$PY" "$HELPER" set "$WORK/machine.json" "$1" "$2"; }
set_json quick "$( ((QUICK)) && echo true || echo false)"
set_json command "$(json_str "$COMMAND")"
set_json serval "$(json_str "$BIN ($VERSION)")"
set_json debug_binary "$DEBUG_BINARY"
set_json log "$(json_str "$LOG")"
set_json log_reused "$REUSED"
set_json memory_limit_mib "${EVAL_MEMORY_LIMIT_MIB:-null}"
set_json data "$(cat "$DATA/gen.json")"
set_json batch_jobs "$BATCH_JOBS"
set_json python_pandas "$("$PY" "$HELPER" versions)"
! has evidently || set_json python_evidently "$("$EVPY" "$HELPER" versions)"
"$PY" - "$DATA/build" "$WORK/build.json" <<'EOF'
import glob, json, os, sys
out = {}
for name in ("gen", "batch", "labels-1", "labels-2", "ref-batch"):
    runs = []
    for path in sorted(glob.glob(os.path.join(sys.argv[1], name + ("-*" if name == "batch" else "") + ".json"))):
        with open(path) as f:
            runs.append(json.load(f))
    if runs:
        jobs = f" in {len(runs)} jobs (peak of one)" if len(runs) > 1 else ""
        out[name] = (f"{sum(r['seconds'] for r in runs):.1f} s, "
                     f"{max(r.get('peak_rss_mib') or 0 for r in runs)} MiB peak RSS{jobs}")
json.dump(out, open(sys.argv[2], "w"))
EOF
set_json build "$(cat "$WORK/build.json")"

# ----------------------------------------------------------------------------- measuring

# Every tool reads the log from the page cache.
log "reading the log into the page cache"
find "$LOG" -type f -name '*.parquet' -exec cat {} + >/dev/null

# measure TOOL VARIANT REPEAT TIMEOUT RESULT CMD...: one run under the supervisor (RESULT: the
# file holding its windows), its record appended; returns non-zero when the run did not finish.
measure() {
  local tool=$1 variant=$2 rep=$3 timeout=$4 result=$5 tag rc=0 l
  shift 5
  tag=$tool-$variant-$rep
  log "$tool $variant, run $rep"
  wait_quiet
  l=$(load1)
  "$PY" "$HELPER" run --out "$WORK/$tag.run.json" --stdout "$WORK/$tag.stdout" \
    --stderr "$WORK/$tag.stderr" --timeout "$timeout" --mem-cap "$MEM_CAP" \
    --progress "$WORK/$tag.progress" -- "$@" || rc=$?
  "$PY" "$HELPER" add "$RECORDS" "$WORK/$tag.run.json" tool="$tool" variant="$variant" \
    repeat="$rep" result="${result:-$WORK/$tag.stdout}" load1="$l" series_load1="$SERIES_LOAD" \
    series_waited_s="$SERIES_WAITED" series_quiet="$SERIES_QUIET"
  return "$rc"
}

# A serval eval that fails is recorded (its stderr's tail in the results) and the run goes on, so
# that a long run still measures the baselines; the script fails at the end.
EVAL=("$SERVAL" eval --prediction-log "$LOG" --model "$MODEL" --window 1d --format json "${EXTRA[@]}")
SERVAL_FAILED=()
SERVAL_METRICS_OK=false
if has serval; then
  for rep in $(seq "$REPEAT"); do
    if measure serval metrics "$rep" "$SV_TIMEOUT" "" "${EVAL[@]}" "$WORK/repo-metrics"; then
      ((rep > 1)) || SERVAL_METRICS_OK=true
    else
      SERVAL_FAILED+=("metrics run $rep")
      break
    fi
  done
  for rep in $(seq "$REPEAT"); do
    measure serval drift "$rep" "$SV_TIMEOUT" "" "${EVAL[@]}" "$WORK/repo-drift" ||
      { SERVAL_FAILED+=("drift run $rep"); break; }
  done
  measure serval metrics-first-day 1 "$SV_TIMEOUT" "" "${EVAL[@]}" --to 2026-03-02 "$WORK/repo-metrics" ||
    SERVAL_FAILED+=("first day")
fi
PANDAS_OK=false
if has pandas; then
  measure pandas metrics 1 "$PD_TIMEOUT" "$WORK/pandas.json" \
    "$PY" "$HELPER" pandas "$LOG" "$WORK/pandas.json" --progress "$WORK/pandas-metrics-1.progress" &&
    PANDAS_OK=true || log "  pandas + scikit-learn did not finish: recorded"
fi
EV_RESULTS=()
if has evidently; then
  measure evidently metrics 1 "$EV_TIMEOUT" "$WORK/evidently.json" \
    "$EVPY" "$HELPER" evidently "$LOG" "$WORK/evidently.json" \
    --progress "$WORK/evidently-metrics-1.progress" &&
    EV_RESULTS+=(--evidently "$WORK/evidently.json") || log "  Evidently (metrics) did not finish: recorded"
  measure evidently drift 1 "$EV_TIMEOUT" "$WORK/evidently-drift.json" \
    "$EVPY" "$HELPER" evidently "$LOG" "$WORK/evidently-drift.json" --drift "$DATA/ref-out" \
    --progress "$WORK/evidently-drift-1.progress" &&
    EV_RESULTS+=(--evidently "$WORK/evidently-drift.json") || log "  Evidently (drift) did not finish: recorded"
fi

# ----------------------------------------------------------------------------- the check

AGREE=true
if [[ $SERVAL_METRICS_OK == true && $PANDAS_OK == true ]]; then
  log "check: serval eval (a) against pandas + scikit-learn (c)"
  "$PY" "$HELPER" check "$WORK/serval-metrics-1.stdout" "$WORK/pandas.json" "$WORK/check.json" \
    --serval-drift "$WORK/serval-drift-1.stdout" "${EV_RESULTS[@]}" || AGREE=false
  set_json check "$(cat "$WORK/check.json")"
else
  log "check: skipped (serval eval or the pandas baseline did not run to the end)"
  set_json check '{"agree": null, "problems": ["serval eval (metrics) or the pandas baseline did not run to the end"]}'
fi

# ----------------------------------------------------------------------------- results

bench_finish "$HELPER"
((${#SERVAL_FAILED[@]} == 0)) || die "serval eval failed: ${SERVAL_FAILED[*]} (see $REPORT; logs in $WORK)"
[[ $AGREE == true ]] || die "serval eval and pandas + scikit-learn disagree (see $RESULTS)"

#!/usr/bin/env bash
# Batch prediction: `serval batch` against what a Python user would write instead: pyarrow +
# ONNX Runtime in one process per core (bench/batch/pyarrow_ort.py) and PySpark in local mode with
# ONNX Runtime in a pandas UDF (bench/batch/pyspark_udf.py). Same input (Parquet files of a key
# and the 30 breast cancer features), same models, same output (the key and every model output,
# as Parquet), each tool on every core; wall time and peak memory of each whole command.
#
#   bash bench/batch.sh                 # 10M rows (~10-20 min on 2 cores)
#   bash bench/batch.sh --rows 2000000  # another size
#   bash bench/batch.sh --quick         # smoke test: 200k rows unless --rows is given
#
# Full runs write bench/results/batch.json (every run, the machine, the versions) and
# bench/results/batch.md (the table, also printed); --quick writes under target/bench-quick/.
# Input data is generated once per size under target/bench-batch/ (bench/batch/make_data.py,
# deterministic) and reused; outputs go to target/bench-batch/out/<tool>-<model>/. After each
# model, every tool's predictions are compared with the first tool's on a sample of keys.
#
# Environment: BENCH_BATCH_TOOLS ("serval pyarrow_ort pyspark_udf"): which tools to run (without
# serval, nothing is built). BENCH_BATCH_PROCESSES (nproc): worker processes / Spark local[N] /
# serval --partitions. BENCH_BATCH_VENV (target/bench-batch-venv): the Python environment.
# BENCH_SOURCE_REV: what to record as the measured source when the tree is not a git checkout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source-path=SCRIPTDIR/..
source bench/lib.sh

usage() { echo "usage: bash bench/batch.sh [--rows N] [--quick]"; }
QUICK=0
ROWS=
while (($#)); do
  case $1 in
    --quick) QUICK=1; shift ;;
    --rows) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; ROWS=$2; shift 2 ;;
    --rows=*) ROWS=${1#--rows=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
if [[ -z $ROWS ]]; then
  if ((QUICK)); then ROWS=200000; else ROWS=10000000; fi
fi
[[ $ROWS =~ ^[1-9][0-9]*$ ]] || { echo "--rows must be a positive integer" >&2; exit 2; }

MODELS=(breast_cancer_lr breast_cancer_mlp_large)
read -r -a TOOLS <<<"${BENCH_BATCH_TOOLS:-serval pyarrow_ort pyspark_udf}"
FILES=8
SEED=0
NPROC=$(nproc)
PROCESSES=${BENCH_BATCH_PROCESSES:-$NPROC}
VENV=${BENCH_BATCH_VENV:-$ROOT/target/bench-batch-venv}
BENCH_DIR=$ROOT/target/bench-batch
DATA=$BENCH_DIR/data-${ROWS}x$FILES
OUTPUTS=$BENCH_DIR/out
bench_init batch serval-bench-batch

has_tool() { local t; for t in "${TOOLS[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }

for t in "${TOOLS[@]}"; do
  case $t in serval | pyarrow_ort | pyspark_udf) ;; *) die "unknown tool '$t' in BENCH_BATCH_TOOLS" ;; esac
done
((${#TOOLS[@]})) || die "BENCH_BATCH_TOOLS names no tool"

# ----------------------------------------------------------------------------- setup

log "tools"
apt_install() {
  command -v apt-get >/dev/null || die "$1 is missing and there is no apt-get to install it"
  log "installing Debian packages: $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# GNU time -v for the largest process's RSS and CPU time (results.py falls back to getrusage).
if [[ ! -x /usr/bin/time ]]; then
  if command -v apt-get >/dev/null; then apt_install time; else log "no /usr/bin/time: using getrusage"; fi
fi
if has_tool pyspark_udf && ! java -version >/dev/null 2>&1; then
  apt_install openjdk-17-jre-headless
  java -version >/dev/null 2>&1 || die "java is still missing after installing openjdk-17-jre-headless"
fi
bench_venv "$VENV" bench/batch/requirements.txt
RESULTS_PY=$ROOT/bench/batch/results.py

if has_tool serval; then
  log "building serval (release)"
  cargo build --release -q -p serval-cli --bin serval
  TARGET_DIR=$(cargo_target_dir)
  # A private copy: a concurrent build in the same target directory must not swap it mid-run.
  mkdir -p "$WORK/bin"
  cp "$TARGET_DIR/release/serval" "$WORK/bin/"
  SERVAL=$WORK/bin/serval
  # The same libonnxruntime as the Python baselines run.
  ORT_DYLIB_PATH=$(ort_lib)
  [[ -n $ORT_DYLIB_PATH ]] || die "the onnxruntime package of $PY ships no libonnxruntime.so"
  export ORT_DYLIB_PATH
  SERVAL_EXTRA=()
  # serval uses every core by default; match the baselines when they are given fewer.
  ((PROCESSES == NPROC)) || SERVAL_EXTRA+=(--partitions "$PROCESSES")
fi

# ----------------------------------------------------------------------------- data

if [[ ! -f $DATA.done ]]; then
  log "generating $ROWS rows in $FILES Parquet files: $DATA"
  rm -rf "$DATA"
  "$PY" bench/batch/make_data.py --rows "$ROWS" --out "$DATA" --files "$FILES" --seed "$SEED" >"$WORK/data.json"
  mv "$WORK/data.json" "$DATA.done"
fi
DATA_BYTES=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["bytes"])' "$DATA.done")
log "data: $ROWS rows, $FILES files, $((DATA_BYTES / 1048576)) MiB"

"$PY" "$RESULTS_PY" machine "$WORK/machine.json" quick="$QUICK" data_rows="$ROWS" data_files="$FILES" \
  data_bytes="$DATA_BYTES" data_seed="$SEED" processes="$PROCESSES" batch_rows=65536

# ----------------------------------------------------------------------------- runs

# run TOOL MODEL: one measured run, its output checked to hold every input row.
run() {
  local tool=$1 model=$2 out=$OUTPUTS/$1-$2 onnx=$ROOT/examples/models/$2/1/model.onnx cmd
  case $tool in
    serval)
      # --columns key: the key and the predictions only, like the two baselines write.
      cmd=("$SERVAL" batch examples/models "$model" --input "$DATA" --output "$out" --key key
        --columns key --overwrite "${SERVAL_EXTRA[@]}") ;;
    pyarrow_ort)
      cmd=("$PY" bench/batch/pyarrow_ort.py --model "$onnx" --input "$DATA" --output "$out"
        --processes "$PROCESSES" --batch-rows 65536 --overwrite) ;;
    pyspark_udf)
      cmd=("$PY" bench/batch/pyspark_udf.py --model "$onnx" --input "$DATA" --output "$out"
        --processes "$PROCESSES" --batch-rows 65536) ;;
  esac
  log "$tool $model"
  rm -rf "$out"
  mkdir -p "$OUTPUTS"
  "$PY" "$RESULTS_PY" measure "$RECORDS" --output "$out" --expect "$ROWS" tool="$tool" model="$model" \
    -- "${cmd[@]}" 2>"$WORK/$tool-$model.log" >"$WORK/$tool-$model.out" || {
    tail -n 30 "$WORK/$tool-$model.log" >&2
    cat "$WORK/$tool-$model.out" >&2
    die "$tool $model failed"
  }
  tail -n 1 "$WORK/$tool-$model.out"
}

for m in "${MODELS[@]}"; do
  for t in "${TOOLS[@]}"; do
    run "$t" "$m"
  done
  for t in "${TOOLS[@]:1}"; do
    "$PY" "$RESULTS_PY" compare "$RECORDS" "$OUTPUTS/${TOOLS[0]}-$m" "$OUTPUTS/$t-$m" --sample 10000 \
      model="$m" reference_tool="${TOOLS[0]}" tool="$t" || die "$t and ${TOOLS[0]} disagree on $m"
  done
done

# ----------------------------------------------------------------------------- results

bench_finish "$RESULTS_PY"

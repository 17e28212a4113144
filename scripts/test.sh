#!/usr/bin/env bash
# The whole test suite: Rust unit/integration/doc tests, then the protocol suite that drives a
# real `serval serve` process with tritonclient, kserve and raw HTTP, then the batch suite
# (`serval batch`, `serval sql`, `serval serve --precomputed`) over generated data.
set -euo pipefail
cd "$(dirname "$0")/.."

# onnxruntime provides libonnxruntime.so for the ONNX Runtime backend; the protocol suite needs
# tritonclient, kserve and moto, the batch suite pyarrow. All come from PyPI; nothing is
# downloaded at run time.
python3 -m pip install --quiet --disable-pip-version-check -r tests/protocol/requirements.txt

cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
SERVAL_BIN="$target_dir/debug/serval" python3 -m pytest tests/protocol -q
SERVAL_BIN="$target_dir/debug/serval" python3 -m pytest tests/batch -q

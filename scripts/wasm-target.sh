#!/usr/bin/env bash
# Installs the wasm32-unknown-unknown target (rustup) that serval-edge-web's build script needs to
# compile the browser edge runtime. Where it cannot be installed, says so and succeeds: the
# server is then built without /edge's engine (the page and its tests say why).
set -uo pipefail
target=wasm32-unknown-unknown
if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "$target: installed"
    exit 0
fi
if rustup target add "$target"; then
    exit 0
fi
echo "the $target target cannot be installed here (rustup target add failed): serval is built without the browser engine of /edge, and its browser tests are skipped"

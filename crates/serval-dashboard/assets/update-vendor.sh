#!/usr/bin/env bash
# Refreshes vendor/ from npm (the pinned version in package.json): the dashboard embeds these
# files in the binary, so building Serval never needs npm or the network.
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --ignore-scripts
cp node_modules/echarts/dist/echarts.min.js vendor/echarts.min.js
cp node_modules/echarts/LICENSE vendor/ECHARTS-LICENSE
rm -rf node_modules
echo "vendor/ now holds echarts $(node -p "require('./package-lock.json').packages['node_modules/echarts'].version")"

#!/usr/bin/env bash
# Screenshot of a page of the demo's own servers with headless Chromium (Debian's `chromium`).
#   scripts/screenshot.sh URL OUT.png [WIDTHxHEIGHT]
# e.g. scripts/screenshot.sh "http://127.0.0.1:5000/#/models/painn-md17/versions/1" docs/mlflow_version.png
set -euo pipefail
url=$1; out=$2; size=${3:-1400,1000}
command -v chromium >/dev/null || { echo "error: install Debian's chromium (apt-get install chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$size" --virtual-time-budget=20000 --screenshot="$out" "$url" 2>/dev/null
echo "wrote $out"

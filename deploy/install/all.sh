#!/usr/bin/env bash
# Installs everything the tests and the local stack need into the cache
# directory given as $1. Each step is idempotent and verifies checksums.
set -euo pipefail
cache=$(mkdir -p "${1:?usage: all.sh CACHE_DIR}" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
for step in onnxruntime chdb datasets postgresql chromium; do
  if [[ -f "$here/$step.sh" ]]; then
    bash "$here/$step.sh" "$cache"
  fi
done

#!/usr/bin/env bash
# Puts ONNX Runtime's shared library (libonnxruntime.so.1, MIT) into
# $1/onnxruntime/. It comes from the npm package onnxruntime-node, fetched
# with `npm pack` (never `npm install`: its install script downloads more).
# onnxruntime_go v1.27.0 needs C API 24, i.e. ONNX Runtime 1.24 or newer.
#
# If $ONNXRUNTIME_LIB names an existing file, that copy is used instead and
# nothing is fetched.
set -euo pipefail
cache=$(mkdir -p "${1:?usage: onnxruntime.sh CACHE_DIR}" && cd "$1" && pwd)
version=1.24.1
member=package/bin/napi-v6/linux/x64/libonnxruntime.so.1
sha256=53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4
out=$cache/onnxruntime
lib=$out/libonnxruntime.so.1

if [[ -n ${ONNXRUNTIME_LIB:-} && -f $ONNXRUNTIME_LIB && $ONNXRUNTIME_LIB != "$lib" ]]; then
  echo "install: using ONNX Runtime from ONNXRUNTIME_LIB=$ONNXRUNTIME_LIB" >&2
  exit 0
fi

check() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$sha256" ]]; }

if check "$lib"; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "install: npm is required to fetch ONNX Runtime (npm pack onnxruntime-node@$version)." >&2
  echo "install: install Node.js/npm (Debian: apt-get install npm), or set ONNXRUNTIME_LIB to an existing libonnxruntime.so.1 (ONNX Runtime >= 1.24)." >&2
  exit 1
fi

echo "install: fetching ONNX Runtime $version (npm pack onnxruntime-node@$version) into $out" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack --silent "onnxruntime-node@$version" >/dev/null); then
  echo "install: npm pack onnxruntime-node@$version failed; check access to the npm registry" >&2
  exit 1
fi
tgz=$work/onnxruntime-node-$version.tgz
[[ -f $tgz ]] || { echo "install: npm pack did not produce $tgz" >&2; exit 1; }
echo "install: extracting $(basename "$member")" >&2
tar -xzf "$tgz" -C "$work" "$member"
if ! check "$work/$member"; then
  echo "install: checksum mismatch for $member from onnxruntime-node@$version (want sha256 $sha256)" >&2
  exit 1
fi
mkdir -p "$out"
# Rename into place so a concurrent reader never sees half a file.
cp "$work/$member" "$lib.tmp.$$"
mv -f "$lib.tmp.$$" "$lib"
echo "install: ONNX Runtime ready: $lib" >&2

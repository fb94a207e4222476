#!/usr/bin/env bash
# Installs the outside load generators `make bench` and `make profile`
# drive the stack with: Debian's wrk and hey. Idempotent: nothing is done
# when both are on PATH.
set -euo pipefail
missing=()
for t in wrk hey; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
((${#missing[@]} == 0)) && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install: ${missing[*]} required by make bench (Debian: apt-get install wrk hey)" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install: run as root or install ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install: installing ${missing[*]} with apt-get" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
  { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
echo "install: ${missing[*]} ready" >&2

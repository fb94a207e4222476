#!/usr/bin/env bash
# Installs Debian's chromium: the web page's test drives it headless over
# the DevTools protocol (chromedp). Idempotent: nothing is done when a
# chromium is on PATH. The test skips, saying why, where none can be had.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [[ -x /usr/lib/chromium/chromium ]]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install: chromium is needed by the web page's test (Debian: apt-get install chromium); skipped" >&2
  exit 0
fi
sudo=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install: chromium is needed by the web page's test: run as root or apt-get install chromium; skipped" >&2; exit 0; }
  sudo=(sudo)
fi
echo "install: installing chromium with apt-get" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
  { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
echo "install: chromium ready ($(chromium --version 2>/dev/null | head -1))" >&2

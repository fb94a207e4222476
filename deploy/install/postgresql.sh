#!/usr/bin/env bash
# Makes PostgreSQL 15 available as $1/postgresql/bin: the embedded MongoDB
# (FerretDB) keeps its documents there. Debian's postgresql-15 is used when
# installed (the machine image ships it); otherwise its packages are fetched
# with `apt-get download` and extracted into the cache, with no system
# install, and missing shared libraries are installed with apt-get.
set -euo pipefail
cache=$(mkdir -p "${1:?usage: postgresql.sh CACHE_DIR}" && cd "$1" && pwd)
out=$cache/postgresql
system=/usr/lib/postgresql/15/bin
extracted=$out/root/usr/lib/postgresql/15/bin

link() { mkdir -p "$out"; ln -sfn "$1" "$out/bin"; }

if [[ -x $system/postgres && -x $system/initdb ]]; then
  [[ $(readlink "$out/bin" 2>/dev/null) == "$system" ]] || link "$system"
  exit 0
fi
if [[ -x $extracted/postgres && -x $extracted/initdb ]]; then
  [[ $(readlink "$out/bin" 2>/dev/null) == "$extracted" ]] || link "$extracted"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install: PostgreSQL 15 is required (Debian: apt-get install postgresql-15), or set GRADELINE_POSTGRES_BIN to its bin folder." >&2
  exit 1
fi
echo "install: fetching PostgreSQL 15 (apt-get download postgresql-15 postgresql-client-15 libpq5) into $out" >&2
mkdir -p "$out/debs" "$out/root"
(cd "$out/debs" && { apt-get download postgresql-15 postgresql-client-15 libpq5 >/dev/null 2>&1 ||
  { apt-get update -qq && apt-get download postgresql-15 postgresql-client-15 libpq5; }; })
for d in "$out"/debs/*.deb; do dpkg-deb -x "$d" "$out/root"; done
rm -rf "$out/debs"
# The server links common system libraries; install those that are missing.
if LD_LIBRARY_PATH=$out/root/usr/lib/x86_64-linux-gnu ldd "$extracted/postgres" | grep -q 'not found'; then
  echo "install: installing the shared libraries PostgreSQL needs" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libicu72 libxml2 libssl3 libzstd1 liblz4-1 libldap-2.5-0 libpam0g libgssapi-krb5-2 libsystemd0 tzdata >/dev/null
fi
link "$extracted"
echo "install: PostgreSQL ready: $out/bin" >&2

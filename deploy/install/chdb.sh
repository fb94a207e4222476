#!/usr/bin/env bash
# Installs the ClickHouse engine (libchdb from the pinned npm package, no
# install scripts) into $1/chdb/npm and builds the project's launcher,
# analytics/localch/launcher/launcher.c, as $1/chdb/gradeline-chdb.
set -euo pipefail
cache=$(mkdir -p "${1:?usage: chdb.sh CACHE_DIR}" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../../analytics/localch/launcher/launcher.c
pkg=@chdb/lib-linux-x64-gnu
version=26.7.3-stable.1
out=$cache/chdb
npmdir=$out/npm
stamp=$npmdir/.complete-$version
mkdir -p "$out"
if [[ ! -f $stamp ]]; then
  echo "install: fetching $pkg@$version from npm into $npmdir (178 MB)" >&2
  rm -rf "$npmdir"
  mkdir -p "$npmdir"
  (cd "$npmdir" && echo '{"name":"gradeline-chdb-cache","private":true}' > package.json &&
    npm install --ignore-scripts --no-audit --no-fund --loglevel=error "$pkg@$version" >&2) ||
    { echo "install: npm install $pkg@$version failed; check the npm registry" >&2; exit 1; }
  touch "$stamp"
fi
lib=$(dirname "$(find "$npmdir/node_modules/$pkg" -name libchdb.so | head -1)")
[[ -f $lib/libchdb.so ]] || { echo "install: libchdb.so not found in $npmdir" >&2; exit 1; }
bin=$out/gradeline-chdb
# The launcher finds libchdb.so relative to itself ($ORIGIN), so the cache
# (and the checkout around it) can move; one built with an absolute path
# that no longer resolves is rebuilt.
if [[ ! -x $bin || $src -nt $bin || $lib/libchdb.so -nt $bin ]] || ldd "$bin" | grep -q 'not found'; then
  echo "install: building $bin" >&2
  gcc -O2 -Wall -o "$bin.tmp" "$src" -L"$lib" -lchdb -Wl,-rpath,"\$ORIGIN/${lib#"$out"/}"
  mv "$bin.tmp" "$bin"
fi
echo "install: ClickHouse launcher ready at $bin" >&2

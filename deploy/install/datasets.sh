#!/usr/bin/env bash
# Fetches the real datasets Debian ships (no install, just the files) into
# $1/datasets:
#   fashion-mnist/   70,000 28x28 images, 10 classes (idx files)
#   sklearn/         iris.csv, digits.csv.gz
#   images/          retina.jpg, astronaut.png, coffee.png, chelsea.png (skimage, CC0),
#                    flower.jpg, china.jpg (scikit-learn, CC-BY)
set -euo pipefail
cache=$(mkdir -p "${1:?usage: datasets.sh CACHE_DIR}" && cd "$1" && pwd)
out=$cache/datasets
stamp=$out/.complete-v1
[[ -f $stamp ]] && exit 0
echo "install: fetching datasets from Debian packages into $out" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkgs=(dataset-fashion-mnist python3-sklearn python3-skimage)
cd "$work"
if ! apt-get download "${pkgs[@]}" >/dev/null 2>&1; then
  echo "install: apt-get download failed; refreshing package lists (apt-get update)" >&2
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi
  apt-get download "${pkgs[@]}" >/dev/null || { echo "install: cannot download ${pkgs[*]} with apt-get; check Debian's package sources" >&2; exit 1; }
fi
for deb in *.deb; do dpkg-deb -x "$deb" root; done
mkdir -p "$out/fashion-mnist" "$out/sklearn" "$out/images"
cp root/usr/share/datasets/fashion-mnist/* "$out/fashion-mnist/"
sk=$(dirname "$(find root -path '*sklearn/datasets/data/iris.csv' | head -1)")
cp "$sk/iris.csv" "$sk/digits.csv.gz" "$out/sklearn/"
cp "$(find root -path '*sklearn/datasets/images/flower.jpg' | head -1)" "$(find root -path '*sklearn/datasets/images/china.jpg' | head -1)" "$out/images/"
for f in retina.jpg astronaut.png coffee.png chelsea.png; do
  cp "$(find root -path "*skimage/data/$f" | head -1)" "$out/images/"
done
touch "$stamp"
echo "install: datasets ready in $out" >&2

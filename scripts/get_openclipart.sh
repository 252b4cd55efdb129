#!/usr/bin/env bash
# OpenClipart for the colour pipelines (pipelines/*_openclipart.yaml): Debian's openclipart-png
# (as root or with sudo), then its drawings as Parquet shards, a train and a test set, in
# ~/.cache/ssl-ray/openclipart-64 (`ssl-ray prepare --source openclipart`; skipped when they
# are there). SSL_RAY_OPENCLIPART_SRC names another copy of the package's png/ folder.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${SSL_RAY_OPENCLIPART_SRC:-/usr/share/openclipart/png}"
dst="${HOME}/.cache/ssl-ray/openclipart-64"
[[ -d "$src" ]] || bash scripts/apt_install.sh "OpenClipart's drawings" openclipart-png
if [[ ! -d "$src" ]]; then
  echo "data: $src not found: install Debian's openclipart-png, or set SSL_RAY_OPENCLIPART_SRC" >&2
  exit 1
fi
[[ -f "$dst/train/manifest.json" && -f "$dst/test/manifest.json" ]] && exit 0
rm -rf "$dst" # what an interrupted earlier run left
echo "data: writing OpenClipart's drawings as shards into $dst (a minute or two)"
.venv/bin/ssl-ray prepare "$src" "$dst" --source openclipart

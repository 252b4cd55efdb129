#!/usr/bin/env bash
# Makes sure the four Fashion-MNIST IDX files are somewhere ssl-ray finds them. In order:
#   $SSL_RAY_FASHION_MNIST (a directory you name), /usr/share/datasets/fashion-mnist,
#   Debian's package dataset-fashion-mnist (as root or with sudo), the dataset's own URLs
#   (downloaded into ~/.cache/ssl-ray/fashion-mnist; export SSL_RAY_FASHION_MNIST to use it).
set -euo pipefail
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

has_all() {
  local dir="$1" f
  for f in "${files[@]}"; do [[ -f "$dir/$f.gz" || -f "$dir/$f" ]] || return 1; done
}

if [[ -n "${SSL_RAY_FASHION_MNIST:-}" ]]; then
  [[ "$SSL_RAY_FASHION_MNIST" =~ ^https?:// ]] && exit 0  # the loader reads URLs itself
  has_all "$SSL_RAY_FASHION_MNIST" && exit 0
  echo "data: SSL_RAY_FASHION_MNIST=$SSL_RAY_FASHION_MNIST lacks some of: ${files[*]}" >&2
  exit 1
fi
system_dir=/usr/share/datasets/fashion-mnist
has_all "$system_dir" && exit 0

bash "$(dirname "$0")/apt_install.sh" "Fashion-MNIST" dataset-fashion-mnist
has_all "$system_dir" && exit 0

cache="${HOME}/.cache/ssl-ray/fashion-mnist"
mkdir -p "$cache"
base="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
echo "data: downloading Fashion-MNIST into $cache"
for f in "${files[@]}"; do
  if [[ ! -f "$cache/$f.gz" ]]; then
    curl -fsSL --retry 3 -o "$cache/$f.gz.part" "$base/$f.gz"
    mv "$cache/$f.gz.part" "$cache/$f.gz"
  fi
done
echo "data: done; run with SSL_RAY_FASHION_MNIST=$cache"

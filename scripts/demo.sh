#!/usr/bin/env bash
# README command 1: set up, then pretrain SimCLR on Fashion-MNIST on a local Ray cluster,
# tracked in ./mlflow.db. Extra arguments are config overrides, e.g. train.epochs=2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cache="${HOME}/.cache/ssl-ray/fashion-mnist"
if [[ -z "${SSL_RAY_FASHION_MNIST:-}" && ! -d /usr/share/datasets/fashion-mnist && -d "$cache" ]]; then
  export SSL_RAY_FASHION_MNIST="$cache"
fi
export RAY_DISABLE_USAGE_STATS=1
exec .venv/bin/ssl-ray pretrain pipelines/simclr_fashion_mnist.yaml "$@"

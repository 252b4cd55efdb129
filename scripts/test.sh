#!/usr/bin/env bash
# README command 2 (and CI's): set up with the test tools, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
cache="${HOME}/.cache/ssl-ray/fashion-mnist"
if [[ -z "${SSL_RAY_FASHION_MNIST:-}" && ! -d /usr/share/datasets/fashion-mnist && -d "$cache" ]]; then
  export SSL_RAY_FASHION_MNIST="$cache"
fi
export RAY_DISABLE_USAGE_STATS=1
exec .venv/bin/python -m pytest -q --durations=15 "$@"

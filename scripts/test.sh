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
# Two workers: the tests that run Ray and the services on one, in order (one xdist group), the
# in-process tests on the other; TEST_WORKERS=0 runs everything in this one process.
exec .venv/bin/python -m pytest -q --durations=15 -n "${TEST_WORKERS:-2}" --dist loadgroup "$@"

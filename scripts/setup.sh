#!/usr/bin/env bash
# Sets up ssl-ray on a fresh Debian/Ubuntu machine with Python 3.11 (or 3.12):
#   .venv with the package and its dependencies at requirements.lock's versions (+ test tools
#   with --test),
#   and Fashion-MNIST (Debian's dataset-fashion-mnist, else the dataset's own download);
#   with --test also headless Chromium for the MLflow UI test (scripts/get_chromium.sh);
#   with --openclipart also OpenClipart's drawings as shards (scripts/get_openclipart.sh).
# Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
openclipart=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    --openclipart) openclipart=1 ;;
    *) echo "setup: unknown option $arg (known: --test, --openclipart)" >&2; exit 2 ;;
  esac
done

python_bin="${PYTHON:-}"
if [[ -z "$python_bin" ]]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))'; then
      python_bin="$candidate"; break
    fi
  done
fi
[[ -n "$python_bin" ]] || { echo "setup: Python 3.11 or 3.12 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[[ -x .venv/bin/python ]] || "$python_bin" -m venv .venv
stamp=".venv/.ssl-ray-installed$extras-$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  echo "setup: installing ssl-ray$extras and its pinned dependencies into .venv (torch is the slow part)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c requirements.lock -e ".$extras"
  touch "$stamp"
fi

bash scripts/get_fashion_mnist.sh
if [[ -n "$extras" ]]; then bash scripts/get_chromium.sh; fi
if [[ $openclipart == 1 ]]; then bash scripts/get_openclipart.sh; fi

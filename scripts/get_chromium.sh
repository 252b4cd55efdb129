#!/usr/bin/env bash
# Headless Chromium and its WebDriver (Debian's chromium + chromium-driver) for the test that
# opens the MLflow UI. Installed when you are root or have sudo; otherwise that one test is
# skipped and says why. Never fails the set-up.
set -uo pipefail
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] && exit 0
sudo=""
[[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && sudo="sudo -n"; }
if command -v apt-get >/dev/null && { [[ $(id -u) -eq 0 ]] || [[ -n "$sudo" ]]; }; then
  echo "setup: installing chromium and chromium-driver (for the MLflow UI test)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 \
         && $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }
fi
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || echo "setup: no chromium; the MLflow UI test will be skipped"
exit 0

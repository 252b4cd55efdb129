#!/usr/bin/env bash
# Headless Chromium and its WebDriver (Debian's chromium + chromium-driver) for the test that
# opens the MLflow UI. Installed when you are root or have sudo; otherwise that one test is
# skipped and says why. Never fails the set-up.
set -uo pipefail
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] && exit 0
bash "$(dirname "$0")/apt_install.sh" "for the MLflow UI test" chromium chromium-driver
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || echo "setup: no chromium; the MLflow UI test will be skipped"
exit 0

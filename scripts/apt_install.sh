#!/usr/bin/env bash
# Installs Debian packages when this user may (root, or passwordless sudo) and apt-get exists
# (updating the package lists once if the first try fails); says nothing and succeeds
# otherwise: the caller checks for what the packages provide.
#   bash scripts/apt_install.sh WHY PACKAGE...
set -uo pipefail
why="$1"
shift
sudo=""
[[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && sudo="sudo -n"; }
command -v apt-get >/dev/null && { [[ $(id -u) -eq 0 ]] || [[ -n "$sudo" ]]; } || exit 0
echo "setup: installing Debian's $* ($why)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
  || { $sudo apt-get update -qq >/dev/null 2>&1 \
       && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; } || true
exit 0

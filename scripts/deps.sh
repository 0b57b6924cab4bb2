#!/usr/bin/env bash
# Checks the build dependencies listed in scripts/packages.txt (with
# pkg-config, or `command -v` for tools) and installs what is missing with
# apt-get. Not root: prints the exact apt-get line instead and fails.
#   scripts/deps.sh            build + test dependencies
#   scripts/deps.sh EXTRA...   also these packages (e.g. python3-torch)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
missing=()
while read -r pkg check; do
  case "$pkg" in ''|'#'*) continue ;; esac
  if [[ "$check" == cmd:* ]]; then
    command -v "${check#cmd:}" >/dev/null 2>&1 || missing+=("$pkg")
  elif [[ "$check" == dpkg ]]; then
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  elif ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists "$check"; then
    missing+=("$pkg")
  fi
done < "$here/packages.txt"
for extra in "$@"; do
  dpkg-query -W -f='${Status}' "$extra" 2>/dev/null | grep -q "install ok installed" || missing+=("$extra")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "resid: missing build dependencies. Install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "resid: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

#!/usr/bin/env bash
# Installs the browser tests' Node dependencies (playwright-core, pinned in
# package-lock.json) into DIR/node_modules with `npm ci`. Skips the install
# when DIR already holds the same lock file. Run by ctest (fixture
# browser_setup) with DIR = <build>/browser. playwright-core drives the
# system's Debian chromium; it downloads no browser.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: setup.sh DIR}
mkdir -p "$dir"
if [ -f "$dir/package-lock.json" ] && cmp -s "$here/package-lock.json" "$dir/package-lock.json" \
   && [ -d "$dir/node_modules/playwright-core" ]; then
  exit 0
fi
cp "$here/package.json" "$here/package-lock.json" "$dir/"
cd "$dir"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error

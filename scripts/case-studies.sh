#!/usr/bin/env bash
# case-studies.sh - regenerates the command outputs in docs/case-studies/*.md.
#
# Each markdown file holds blocks
#     <!-- run: resid explain $RESID_MODELS/... -p "..." -->
#     ```text
#     (output)
#     ```
#     <!-- end -->
# This script runs every command (with `resid` = the built binary) and
# replaces the output between the markers; everything else (the readings)
# is left as written. Usage:
#     RESID_MODELS=/path/to/models scripts/case-studies.sh [BUILD_DIR]
# BUILD_DIR defaults to build-release (configured and built if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-release}
: "${RESID_MODELS:=$root/../shared/models}"
export RESID_MODELS
if [ ! -x "$build/resid" ]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j2 --target resid_cli >/dev/null
fi
RESID_BIN=$build/resid
resid() { "$RESID_BIN" "$@"; }

for md in "$root"/docs/case-studies/*.md; do
    tmp=$(mktemp)
    skipping=0
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ $skipping == 1 ]]; then
            if [[ $line == '<!-- end -->' ]]; then
                echo "$line" >>"$tmp"
                skipping=0
            fi
            continue
        fi
        echo "$line" >>"$tmp"
        if [[ $line =~ ^'<!-- run: '(.*)' -->'$ ]]; then
            cmd=${BASH_REMATCH[1]}
            echo "  $(basename "$md"): $cmd" >&2
            {
                echo '```text'
                echo "\$ $cmd"
                eval "$cmd" 2>&1 || echo "(exit $?)"
                echo '```'
            } >>"$tmp"
            skipping=1
        fi
    done <"$md"
    if [[ $skipping == 1 ]]; then
        echo "$md: a '<!-- run: ... -->' block has no '<!-- end -->'" >&2
        rm -f "$tmp"
        exit 1
    fi
    mv "$tmp" "$md"
done

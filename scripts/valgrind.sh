#!/usr/bin/env bash
# Runs the resid CLI under valgrind memcheck on the llama2.c fixture
# (tinyllamas/stories260K.bin): info, tokenize, run, generate, and explain /
# batch + summarize (on a few dataset prompts) when the binary has them. Any memcheck error or definite/indirect
# leak fails the script (exit 99 from valgrind). Suppressions for
# third-party thread pools are in scripts/valgrind.supp.
#   scripts/valgrind.sh [BUILD_DIR]      (default: build; a non-sanitised build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin="$build/resid"
[ -x "$bin" ] || { echo "valgrind.sh: $bin not found; build first (make build)" >&2; exit 1; }
scripts/deps.sh valgrind  # only needed here: installed on demand
export RESID_MODELS="${RESID_MODELS:-$(cd .. && pwd)/shared/models}"
model="$RESID_MODELS/tinyllamas/stories260K.bin"
[ -f "$model" ] || { echo "valgrind.sh: $model not found (set RESID_MODELS)" >&2; exit 1; }
# One thread: valgrind serialises threads anyway, and thread pools started
# and never joined are noise.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
vg=(valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99
    --suppressions=scripts/valgrind.supp --num-callers=30 -q)
prompt="Once upon a time"
cmds=(
  "info $model"
  "tokenize $model -p \"$prompt\""
  "run $model -p \"$prompt\""
  "generate $model -p \"$prompt\" -n 8"
)
"$bin" explain --help >/dev/null 2>&1 && cmds+=("explain $model -p \"$prompt\"")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if "$bin" batch --help >/dev/null 2>&1; then
  # three prompts of the shipped dataset plus one bad record, and summarize
  head -n 3 data/stories260K-prompts.jsonl >"$tmp/in.jsonl"
  echo '{"prompt": "Tim had a", "target": " big ball"}' >>"$tmp/in.jsonl"
  cmds+=("batch $model --in $tmp/in.jsonl --out $tmp/out.jsonl --force --ablate")
  cmds+=("summarize $tmp/out.jsonl")
fi
fail=0
for c in "${cmds[@]}"; do
  log=$(mktemp)
  if eval "${vg[*]} \"$bin\" $c" >/dev/null 2>"$log"; then
    echo "valgrind: ok      resid $c"
  else
    rc=$?
    echo "valgrind: FAILED  resid $c (exit $rc)"
    sed 's/^/    /' "$log" | head -60
    fail=1
  fi
  rm -f "$log"
done
exit $fail

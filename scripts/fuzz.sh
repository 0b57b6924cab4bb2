#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.c) with clang + ASan + UBSan in
# build-fuzz/ and runs each for SECONDS (default 60), two at a time, from
# the seed corpus fuzz/corpus/<name>/ with the dictionary fuzz/dict/<name>.dict.
# New inputs go to build-fuzz/corpus/<name>/ (the committed seeds are not
# touched); crashes to build-fuzz/crashes/<name>/. Prints each target's
# final stats (exec/s, cov, ft). Exits non-zero if any target failed.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-${FUZZ_SECONDS:-60}}
shift || true
export RESID_MODELS="${RESID_MODELS:-$(cd .. && pwd)/shared/models}"
build=${FUZZ_BUILD:-build-fuzz}
jobs=${FUZZ_JOBS:-2}

# clang and its libFuzzer runtime are needed here only, not for the normal
# build: installed on demand (Debian packages), not listed in packages.txt.
scripts/deps.sh clang libclang-rt-14-dev
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
  -DRESID_FUZZ=ON -DRESID_NATIVE=OFF >/dev/null
cmake --build "$build" -j 2 --target fuzz_all

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_*.c; do t=${f#fuzz/fuzz_}; targets+=("${t%.c}"); done
fi

run_one() {
  local t=$1 log="$build/fuzz-$1.log"
  mkdir -p "$build/corpus/$t" "$build/crashes/$t"
  local dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  # -rss_limit_mb / -malloc_limit_mb: a single allocation over 1 GB from a
  # small input is a finding ("malloc limit"), as is a 10 s input ("timeout").
  if "$build/fuzz/fuzz_$t" "$build/corpus/$t" "fuzz/corpus/$t" "${dict[@]}" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=3072 -malloc_limit_mb=1024 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/crashes/$t/" \
      >"$log" 2>&1; then
    echo "ok"
  else
    echo "FAILED"
  fi
}

status=0
summary=()
running=0
pids=()
for t in "${targets[@]}"; do
  ( r=$(run_one "$t"); echo "$r" >"$build/fuzz-$t.result" ) &
  pids+=($!)
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); running=$((running - 1)); fi
done
wait
for t in "${targets[@]}"; do
  log="$build/fuzz-$t.log"
  r=$(cat "$build/fuzz-$t.result" 2>/dev/null || echo FAILED)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  last=$(grep -E '^#[0-9]+.*(DONE|cov:)' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || echo 'cov: ? ft: ?')
  printf '%-16s %-6s %4ss  runs %-10s exec/s %-7s %s\n' "$t" "$r" "$secs" "$runs" "$eps" "$last"
  if [ "$r" != ok ]; then
    status=1
    grep -E 'ERROR|SUMMARY|Test unit written|==[0-9]+==' "$log" | head -8 | sed 's/^/    /'
  fi
done
exit $status

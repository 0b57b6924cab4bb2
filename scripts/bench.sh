#!/usr/bin/env bash
# bench.sh - resid's benchmarks, each measured side by side with a peer in the
# same run; the ratio is the figure. Called by `make bench` as
#
#     scripts/bench.sh BUILD_DIR
#
# (BUILD_DIR should be a Release build; timings of a Debug build mean little).
#
#  1. forward, full trace: resid_forward with RESID_CAP_ALL + RESID_POS_ALL on
#     16 tokens of a GPT-2-small-sized model with random weights, against a
#     hand-written PyTorch CPU forward keeping the same captures
#     (bench/peer_forward.py, Debian's python3-torch on /usr/bin/python3).
#     Their last-position logits must agree, so the comparison is honest.
#  2. peak RSS of that resid run, as a multiple of the F32 weight bytes.
#  3. greedy generation, tokens/s, against llama2.c's run.c, on
#     tinyllamas/stories260K.bin and on a random checkpoint of stories15M's
#     shape. run.c is NOT part of this repository and this script neither
#     fetches nor builds it. To include it, build it yourself with the flags of
#     resid's Release build and point LLAMA2C_RUN at the binary:
#         git clone https://github.com/karpathy/llama2.c && cd llama2.c
#         gcc -O2 -march=native -fopenmp -o run run.c -lm
#         LLAMA2C_RUN=$PWD/run make bench
#     Without LLAMA2C_RUN, resid's tokens/s are printed with no peer.
#     Note: llama2.c's own `make runfast` / `make runomp` use -Ofast, which
#     lets gcc vectorise run.c's dot-product reductions (several times faster
#     than -O2). The ratio against such a build is the stricter comparison.
#  4. attribution: `resid explain` (certified top-300 of every kind) and
#     `resid explain --exhaustive` on the same model and ids, against
#     bench/peer_explain.py (PyTorch scoring every FFN neuron, head x
#     position and attention neuron exactly, as resid does; also timed
#     without the attention neurons); their top-10s must agree. Peak RSS of those runs as a
#     multiple of the F32 weight bytes. Ratios are peer time / resid time.
#     bench_peak measures this CPU's float32 FMA peak and resid's projection
#     kernel; with the runs' projection counts they give each run's floor.
#
# Environment:
#   OMP_NUM_THREADS / OPENBLAS_NUM_THREADS  threads for everyone (default 2;
#                                            torch.set_num_threads gets the same)
#   RESID_MODELS   fixture models (default ../shared/models beside the tree)
#   LLAMA2C_RUN    a built llama2.c `run` binary (optional, see above)
#   BENCH_RUNS     timed repetitions per figure (default 7 forward, 5 generate,
#                  5 explain top-300)
#   BENCH_EXPLAIN_PAIRS  alternating runs of `explain --exhaustive` and of the
#                  peer explain (default 3: ~4 minutes); medians of each side
#
# Every figure ends up in the table at the end: medians of the runs, their
# ratio, the ratio of the best runs (fastest vs fastest: more robust when other
# jobs share the CPU, whose load average is printed too), the target, and
# PASS/MISS on the median ratio. PASS/MISS is informational: the script exits
# 0 unless a step failed to run.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" 2>/dev/null && pwd) || { echo "bench: $1: no such build directory" >&2; exit 2; }
out="$build/bench"
mkdir -p "$out"
models=${RESID_MODELS:-$root/../shared/models}
threads=${OMP_NUM_THREADS:-${OPENBLAS_NUM_THREADS:-2}}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
runs_fwd=${BENCH_RUNS:-7}
runs_gen=${BENCH_RUNS:-5}
py=/usr/bin/python3 # Debian's python, where python3-torch installs
failed=0
rows=()

note() { echo "bench: $*" >&2; }
fail() { note "FAILED: $*"; failed=1; }
# val KEY FILE: the value of a `key=value` line
val() { sed -n "s/^$1=//p" "$2" | tail -n 1; }
# calc EXPR: floating-point arithmetic
calc() { awk "BEGIN { printf \"%.4g\", $1 }"; }
# verdict VALUE OP TARGET: PASS/MISS (empty VALUE: n/a)
verdict() {
  [ -z "$1" ] && { echo "n/a"; return; }
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
    ok = (op == "<=") ? v <= t : (op == ">=") ? v >= t : (op == "<") ? v < t : v > t
    print ok ? "PASS" : "MISS" }'
}
# row NAME RESID PEER RATIO BEST-RATIO TARGET STATUS (RESID, PEER, RATIO: medians)
row() { rows+=("$(printf '%-40s|%11s|%11s|%8s|%8s|%7s|%6s' "$@")"); }

# ---- setup -----------------------------------------------------------------
load0=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
"$root/scripts/deps.sh" python3-torch || fail "scripts/deps.sh python3-torch"
btype=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null)
[ "$btype" = "Release" ] || note "warning: $build is a '$btype' build; timings need Release"
note "threads: $threads (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, torch.set_num_threads)"
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" \
  --target make_gpt2 make_llama2c bench_forward bench_generate bench_peak resid_cli >&2 ||
  { fail "building the bench targets"; exit 1; }

# ---- 1. forward with the full trace, 16 tokens, vs PyTorch ------------------
gpt2="$out/gpt2-small-random"
if [ ! -f "$gpt2/config.json" ] || [ ! -f "$gpt2/model.safetensors" ]; then
  "$build/make_gpt2" "$gpt2" >&2 || fail "make_gpt2"
fi
# "The quick brown fox jumps over the lazy dog.\nThe dog is very happy" (GPT-2 BPE)
ids=464,2068,7586,21831,18045,625,262,16931,3290,13,198,464,3290,318,845,3772
fwd_log="$out/forward.resid.txt" peer_log="$out/forward.peer.txt"
r_ms="" p_ms="" r_min="" p_min="" dlogit="" rss="" wbytes=""
if "$build/bench_forward" "$gpt2" --ids "$ids" --runs "$runs_fwd" \
     --logits-out "$out/forward.resid_logits_last.f32" >"$fwd_log"; then
  cat "$fwd_log" >&2
  r_ms=$(val resid_forward_ms_median "$fwd_log")
  r_min=$(val resid_forward_ms_min "$fwd_log")
  rss=$(val resid_peak_rss_bytes "$fwd_log")
  wbytes=$(val resid_weight_bytes "$fwd_log")
else
  fail "bench_forward"
fi
if "$py" "$root/bench/peer_forward.py" "$gpt2" --ids "$ids" --threads "$threads" \
     --runs "$runs_fwd" ${r_ms:+--compare "$out/forward.resid_logits_last.f32"} >"$peer_log"; then
  cat "$peer_log" >&2
  p_ms=$(val peer_forward_ms_median "$peer_log")
  p_min=$(val peer_forward_ms_min "$peer_log")
  dlogit=$(val max_abs_dlogit_last "$peer_log")
else
  fail "peer_forward.py"
fi
ratio="" bratio=""
[ -n "$r_ms" ] && [ -n "$p_ms" ] && ratio=$(calc "$r_ms / $p_ms") && bratio=$(calc "$r_min / $p_min")
[ -n "$r_ms" ] && r_ms=$(calc "$r_ms")
[ -n "$p_ms" ] && p_ms=$(calc "$p_ms")
row "forward, full trace, 16 tok (ms)" "${r_ms:-n/a}" "${p_ms:-n/a}" "${ratio:-n/a}" \
  "${bratio:-n/a}" "<= 0.5" "$(verdict "$ratio" "<=" 0.5)"
row "  agreement: max|dlogit| last position" "${dlogit:-n/a}" "(torch)" "" "" "< 1e-3" \
  "$(verdict "$dlogit" "<" 0.001)"

# ---- 2. peak RSS of the resid forward -------------------------------------
rss_ratio=""; [ -n "$rss" ] && [ -n "$wbytes" ] && rss_ratio=$(calc "$rss / $wbytes")
row "peak RSS / F32 weight bytes (MB)" "$( [ -n "$rss" ] && calc "$rss / 1e6" || echo n/a)" \
  "$( [ -n "$wbytes" ] && calc "$wbytes / 1e6" || echo n/a)" "${rss_ratio:-n/a}" "" "<= 1.2" \
  "$(verdict "$rss_ratio" "<=" 1.2)"

# ---- 3. greedy generation vs llama2.c run.c ---------------------------------
run_c=${LLAMA2C_RUN:-}
if [ -n "$run_c" ] && [ ! -x "$run_c" ]; then
  note "LLAMA2C_RUN=$run_c is not an executable; skipping run.c"
  run_c=""
fi
[ -z "$run_c" ] && note "LLAMA2C_RUN not set: generation is timed for resid only (see the" \
  "comment at the top of scripts/bench.sh for how to build llama2.c's run)"

# gen_bench NAME MODEL TOKENIZER STEPS: alternates resid and run.c runs, so
# both see the same machine load, and records the medians.
gen_bench() {
  local name=$1 model=$2 tok=$3 steps=$4 tag=$5
  local r_tps=() c_tps=() i t
  local rlog="$out/gen.$tag.resid.txt" clog="$out/gen.$tag.runc.txt"
  for ((i = 0; i < runs_gen; i++)); do
    if "$build/bench_generate" "$model" --tokenizer "$tok" --steps "$steps" --runs 1 \
         --text-out "$out/gen.$tag.resid.out" >"$rlog"; then
      r_tps+=("$(val resid_gen_tok_s_median "$rlog")")
    else
      fail "bench_generate $model"; break
    fi
    if [ -n "$run_c" ]; then
      if "$run_c" "$model" -z "$tok" -t 0.0 -n "$steps" >"$out/gen.$tag.runc.out" 2>"$clog"; then
        t=$(sed -n 's/^achieved tok\/s: //p' "$clog")
        [ -n "$t" ] && c_tps+=("$t")
      else
        fail "run.c on $model"; run_c=""
      fi
    fi
  done
  median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) exit; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
  local rm cm rb cb ratio="" bratio="" same=""
  rm=$( [ ${#r_tps[@]} -gt 0 ] && median "${r_tps[@]}")
  cm=$( [ ${#c_tps[@]} -gt 0 ] && median "${c_tps[@]}")
  rb=$( [ ${#r_tps[@]} -gt 0 ] && printf '%s\n' "${r_tps[@]}" | sort -g | tail -n 1)
  cb=$( [ ${#c_tps[@]} -gt 0 ] && printf '%s\n' "${c_tps[@]}" | sort -g | tail -n 1)
  [ -n "$rm" ] && [ -n "$cm" ] && ratio=$(calc "$rm / $cm") && bratio=$(calc "$rb / $cb")
  [ -n "$rm" ] && rm=$(calc "$rm")
  [ -n "$cm" ] && cm=$(calc "$cm")
  note "$name: resid tok/s ${r_tps[*]:-}; run.c tok/s ${c_tps[*]:-}"
  row "gen $name (tok/s)" "${rm:-n/a}" "${cm:-n/a}" "${ratio:-n/a}" "${bratio:-n/a}" ">= 1.0" \
    "$(verdict "$ratio" ">=" 1.0)"
  if [ -n "$cm" ] && [ -f "$out/gen.$tag.resid.out" ]; then
    if cmp -s "$out/gen.$tag.resid.out" "$out/gen.$tag.runc.out"; then same=yes; else same=NO; fi
    row "  same greedy text as run.c" "$same" "" "" "" "yes" \
      "$([ "$same" = yes ] && echo PASS || echo MISS)"
  fi
}

s260="$models/tinyllamas/stories260K.bin"
if [ -f "$s260" ] && [ -f "$models/tinyllamas/tok512.bin" ]; then
  gen_bench "stories260K, 256 steps" "$s260" "$models/tinyllamas/tok512.bin" 256 s260k
else
  note "$s260 not found (RESID_MODELS?): skipping stories260K"
fi
r15="$out/llama2c-15M-shape-random.bin"
[ -f "$r15" ] || "$build/make_llama2c" "$r15" >&2 || fail "make_llama2c"
if [ -f "$r15" ] && [ -f "$models/llama2c/tokenizer.bin" ]; then
  gen_bench "random 15M shape, 256 steps" "$r15" "$models/llama2c/tokenizer.bin" 256 r15m
else
  note "$models/llama2c/tokenizer.bin not found: skipping the 15M-shape checkpoint"
fi

# ---- 4. attribution: resid explain vs a PyTorch peer --------------------------
# `resid explain` as the CLI runs it (all units bounded, the exact top-300 of
# each kind, JSON to a file), and with --exhaustive (every unit scored
# exactly), against bench/peer_explain.py: plain PyTorch scoring EVERY FFN
# neuron, head x position and attention neuron exactly by batched
# projection, forward included: the units resid ranks. The peer also checks
# that its top-10 of each kind are resid's (same ids, LPIs within 1e-4), so
# the comparison is honest. The info rows set resid against the peer's time
# without the attention neurons (peer_explain_attn_s taken off): the FFN
# neurons and head x positions alone, less than resid computes.
runs_exp=${BENCH_RUNS:-5}
exp_args=(explain "$gpt2" --ids "$ids" --top 300)
# timed OUTFILE CMD...: runs CMD (stdout to /dev/null); prints "seconds peak_rss_kb"
timed() {
  local o=$1; shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f '%e %M' -o "$o" "$@" >/dev/null || return 1
  else
    local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null || return 1; t1=$(date +%s.%N)
    echo "$(calc "$t1 - $t0") " >"$o"
  fi
  cat "$o"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
  if (NR == 0) exit; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
e_t=() e_rss=() x_t="" x_min="" x_rss="" p_s="" p_fh="" agree="" dlpi="" eload=""
eload=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
for ((i = 0; i < runs_exp; i++)); do
  if r=$(timed "$out/explain.time" "$build/resid" "${exp_args[@]}" --json "$out/explain.resid.json"); then
    e_t+=("${r% *}"); e_rss+=("${r#* }")
  else
    fail "resid explain"; break
  fi
done
note "resid explain --top 300 (s, peak RSS kB): ${e_t[*]:-} / ${e_rss[*]:-} (load ${eload})"
# The exhaustive run and the peer (~25 s and ~55 s here) alternate, pairs
# times, and each side's median is taken: a slow spell of the (shared)
# machine then weighs on both sides alike.
pairs=${BENCH_EXPLAIN_PAIRS:-3}
x_ts=() x_rsss=() p_ss=() p_attns=() agree=yes dlpi=""
for ((i = 0; i < pairs; i++)); do
  if r=$(timed "$out/explain.time" "$build/resid" "${exp_args[@]}" --exhaustive \
    --json "$out/explain.exhaustive.json"); then
    x_ts+=("${r% *}") x_rsss+=("${r#* }")
    note "resid explain --exhaustive: ${r% *} s, peak RSS ${r#* } kB (load $(cut -d' ' -f1-3 /proc/loadavg))"
  else
    fail "resid explain --exhaustive"; break
  fi
  exp_peer_log="$out/explain.peer.$i.txt"
  if "$py" "$root/bench/peer_explain.py" "$gpt2" --ids "$ids" --threads "$threads" \
       ${e_t:+--compare "$out/explain.resid.json"} >"$exp_peer_log"; then
    cat "$exp_peer_log" >&2
    p_ss+=("$(val peer_explain_s_median "$exp_peer_log")")
    p_attns+=("$(val peer_explain_attn_s "$exp_peer_log")")
    [ "$(val top10_agree "$exp_peer_log")" = yes ] || agree=NO
    d=$(val top10_max_abs_dlpi "$exp_peer_log")
    [ -n "$d" ] && { [ -z "$dlpi" ] || awk -v a="$d" -v b="$dlpi" 'BEGIN { exit !(a > b) }'; } && dlpi=$d
  else
    fail "peer_explain.py"; break
  fi
done
[ ${#x_ts[@]} -gt 0 ] && x_t=$(median "${x_ts[@]}") && x_min=$(printf '%s\n' "${x_ts[@]}" | sort -g | head -n 1)
x_rss=$(printf '%s\n' "${x_rsss[@]:-}" | sort -g | tail -n 1)
if [ ${#p_ss[@]} -gt 0 ]; then
  p_s=$(median "${p_ss[@]}")
  p_attn=$(median "${p_attns[@]}")
  [ -n "$p_s" ] && [ -n "$p_attn" ] && p_fh=$(calc "$p_s - $p_attn")
  note "peer explain (s): ${p_ss[*]}; resid --exhaustive (s): ${x_ts[*]:-}"
else
  agree=""
fi
e_med="" e_min="" e_ratio="" e_best="" x_ratio="" e_rss_ratio=""
if [ ${#e_t[@]} -gt 0 ]; then
  e_med=$(median "${e_t[@]}")
  e_min=$(printf '%s\n' "${e_t[@]}" | sort -g | head -n 1)
fi
[ -n "$e_med" ] && [ -n "$p_s" ] && e_ratio=$(calc "$p_s / $e_med") && e_best=$(calc "$p_s / $e_min")
[ -n "$x_t" ] && [ -n "$p_s" ] && x_ratio=$(calc "$p_s / $x_t")
rss_max=$(printf '%s\n' "${e_rss[@]:-}" "$x_rss" | sort -g | tail -n 1)
[ -n "$rss_max" ] && [ -n "$wbytes" ] && e_rss_ratio=$(calc "$rss_max * 1024 / $wbytes")
row "explain top-300, 16 tok (s; peer/resid)" "${e_med:-n/a}" "${p_s:-n/a}" "${e_ratio:-n/a}" \
  "${e_best:-n/a}" ">= 50" "$(verdict "$e_ratio" ">=" 50)"
row "explain --exhaustive (s; peer/resid)" "${x_t:-n/a}" "${p_s:-n/a}" "${x_ratio:-n/a}" \
  "$([ -n "$x_min" ] && [ -n "$p_s" ] && calc "$p_s / $x_min")" \
  ">= 2" "$(verdict "$x_ratio" ">=" 2)"
[ -n "$p_fh" ] && [ -n "$e_med" ] &&
  row "  peer w/o attention neurons: top-300" "$e_med" "$p_fh" "$(calc "$p_fh / $e_med")" \
    "$(calc "$p_fh / $e_min")" "" info
[ -n "$p_fh" ] && [ -n "$x_t" ] &&
  row "  peer w/o attention neurons: --exhaustive" "$x_t" "$p_fh" "$(calc "$p_fh / $x_t")" "" "" info
row "  agreement: top-10 FFN, head x pos, attn" "${agree:-n/a}" "(torch)" "" "" "yes" \
  "$([ "$agree" = yes ] && echo PASS || echo MISS)"
row "  max |dLPI| over those top-10s" "${dlpi:-n/a}" "" "" "" "<= 1e-4" \
  "$(verdict "$dlpi" "<=" 0.0001)"
row "explain peak RSS / F32 weight bytes (MB)" \
  "$( [ -n "$rss_max" ] && calc "$rss_max * 1024 / 1e6" || echo n/a)" \
  "$( [ -n "$wbytes" ] && calc "$wbytes / 1e6" || echo n/a)" "${e_rss_ratio:-n/a}" "" "<= 1.25" \
  "$(verdict "$e_rss_ratio" "<=" 1.25)"

# The floors: an exact LPI needs a V x D projection (2VD flops), so a run
# that did P of them (ranking.projections) takes at least P*2VD / peak,
# whatever the code, at this CPU's float32 FMA peak (bench_peak). peer/floor
# is then the best ratio any exact float32 implementation could reach here.
peak_log="$out/peak.txt"
if "$build/bench_peak" --runs 5 >"$peak_log"; then
  cat "$peak_log" >&2
  peak=$(val fma_peak_gflops "$peak_log") canon=$(val canon_gflops "$peak_log")
  crows=$(val canon_rows "$peak_log")
  [ "$peak" = n/a ] && peak=""
  row "canonical kernel, ${crows:-?} rows (GFLOPS)" "${canon:-n/a}" "${peak:-n/a}" \
    "$([ -n "$canon" ] && [ -n "$peak" ] && calc "$canon / $peak" || echo n/a)" "" "" info
  # pflop JSON: projections x 2VD of an explain JSON, in TFLOP
  pflop() {
    "$py" -c 'import json, sys
d = json.load(open(sys.argv[1])); m = d["model"]
print(d["ranking"]["projections"], d["ranking"]["projections"] * 2 * m["n_vocab"] * m["n_head"] * m["d_head"] / 1e12)' "$1" 2>/dev/null
  }
  for f in explain.resid.json:top-300 explain.exhaustive.json:--exhaustive; do
    pj=$(pflop "$out/${f%%:*}") || continue
    n=${pj% *} tf=${pj#* }
    if [ -n "$peak" ]; then
      fl=$(calc "$tf * 1000 / $peak")
      row "  ${f#*:}: $n proj, floor at peak (s)" "$fl" "${p_s:-n/a}" \
        "$([ -n "$p_s" ] && calc "$p_s / $fl" || echo n/a)" "" "" info
    fi
  done
else
  fail "bench_peak"
fi

# ---- the table ------------------------------------------------------------------
echo
echo "resid bench: $threads threads, build $build ($btype); load average" \
  "at start: $load0, at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
printf '%-40s|%11s|%11s|%8s|%8s|%7s|%6s\n' "figure (median of runs)" "resid" "peer" "ratio" \
  "best" "target" "status"
printf '%s\n' "----------------------------------------+-----------+-----------+--------+--------+-------+------"
printf '%s\n' "${rows[@]}"
echo "peers: forward = PyTorch $(val peer_torch_version "$peer_log" 2>/dev/null || true) (bench/peer_forward.py);" \
  "explain = PyTorch (bench/peer_explain.py, every FFN neuron, head x position and attention neuron);" \
  "RSS = F32 weight bytes; gen = llama2.c run.c${LLAMA2C_RUN:+ ($LLAMA2C_RUN)}"
echo "explain ratios are peer/resid (higher is better); load average before the explain runs: ${eload:-?}"
echo "floor rows: the run's vocabulary projections x 2VD flops at this CPU's float32 FMA peak" \
  "(bench_peak); peer/floor is the best ratio any exact float32 implementation could reach here"

# ==== explain --html overhead ==================================================
# `resid explain --html FILE` against the same `resid explain` without it, on
# the benchmark model ($gpt2) and ids, runs alternating so both see the same
# load. The target row (<= 1.10) uses explain's defaults (--top 10); the info
# rows: the explain benchmark's command (section 4: --top 300, JSON to a
# file), where the page also details all 600 listed neurons, and the full page
# (--html-positions 0 --html-heads 12: every lens-grid column, 12 head
# breakdowns). The HTML views reuse the report's trace, explainer, exact
# scores and token lists.
html_runs=${BENCH_RUNS:-5}
echo
echo "== explain --html overhead: $gpt2, 16 ids, $html_runs runs each (load average" \
  "$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)) =="
if cmake --build "$build" --target resid_cli >&2 && [ -f "$gpt2/config.json" ]; then
  # secs CMD...: wall seconds of one run (empty on failure)
  secs() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || return 1
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'
  }
  hmed() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) exit; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
  hmin() { printf '%s\n' "$@" | sort -g | head -n 1; }
  hrow() { # NAME HTML_TIMES... -- EXPLAIN_TIMES... ; TARGET
    local name=$1 target=$2; shift 2
    local a=() b=() side=a
    for v in "$@"; do
      if [ "$v" = -- ]; then side=b; continue; fi
      if [ $side = a ]; then a+=("$v"); else b+=("$v"); fi
    done
    [ ${#a[@]} -gt 0 ] && [ ${#b[@]} -gt 0 ] || return 0
    local ma mb r
    ma=$(hmed "${a[@]}") mb=$(hmed "${b[@]}") r=$(calc "$(hmed "${a[@]}") / $(hmed "${b[@]}")")
    printf '%-40s|%11s|%11s|%8s|%8s|%7s|%6s\n' "$name" "$(calc "$ma")" "$(calc "$mb")" "$r" \
      "$(calc "$(hmin "${a[@]}") / $(hmin "${b[@]}")")" "${target:-}" \
      "$([ -n "$target" ] && verdict "$r" "<=" 1.10 || echo info)"
  }
  t_ex=() t_html=() t_dex=() t_dhtml=() t_full=()
  for ((i = 0; i < html_runs; i++)); do
    t=$(secs "$build/resid" "${exp_args[@]}" --json "$out/explain.h.json") && t_ex+=("$t") ||
      fail "resid explain"
    t=$(secs "$build/resid" "${exp_args[@]}" --json "$out/explain.h.json" \
      --html "$out/explain-top300.html") && t_html+=("$t") || fail "resid explain --html"
    t=$(secs "$build/resid" explain "$gpt2" --ids "$ids") && t_dex+=("$t") || fail "resid explain"
    t=$(secs "$build/resid" explain "$gpt2" --ids "$ids" --html "$out/explain.html") &&
      t_dhtml+=("$t") || fail "resid explain --html"
    t=$(secs "$build/resid" explain "$gpt2" --ids "$ids" --html "$out/explain-full.html" \
      --html-positions 0 --html-heads 12) && t_full+=("$t") || fail "resid explain --html (full)"
  done
  echo "explain --top 300 (s):              ${t_ex[*]}"
  echo "explain --top 300 --html (s):       ${t_html[*]}"
  echo "explain (defaults) (s):             ${t_dex[*]}"
  echo "explain --html (defaults) (s):      ${t_dhtml[*]}"
  echo "explain --html, full page (s):      ${t_full[*]:-}"
  printf '%-40s|%11s|%11s|%8s|%8s|%7s|%6s\n' "figure (median of runs)" "html" "explain" \
    "ratio" "best" "target" "status"
  hrow "explain --html / explain (defaults)" "<= 1.10" "${t_dhtml[@]}" -- "${t_dex[@]}"
  hrow "  the same, --top 300" "" "${t_html[@]}" -- "${t_ex[@]}"
  hrow "  full page / explain (defaults)" "" "${t_full[@]}" -- "${t_dex[@]}"
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
else
  fail "explain --html overhead: cannot build resid or no $gpt2"
fi

[ "$failed" -eq 0 ] || { echo "bench: some steps FAILED to run (see above)"; exit 1; }
exit 0

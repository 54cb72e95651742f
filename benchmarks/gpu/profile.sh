#!/usr/bin/env bash
# Nsight Compute profiles of benchmark cases: where each kernel of a case's call spends its time.
#
#   OUT=DIR STORE=.gpu/bench-store bash benchmarks/gpu/profile.sh ["CASE TEXT[|twin]" ...]
#
# On the GPU host, with a store finalized there (run.sh's finalize stage). Each argument picks
# one suite row by the text of its case id (profile.py --case; "|twin" profiles the row's
# comparison, cuDNN or the XLA backend, on the same inputs); without arguments, the cases in
# DEFAULT_CASES below. Per case: one process runs the call under
#   ncu --profile-from-start off --clock-control none  (the clocks left alone: METHOD.md)
# with the sections and metrics below, the report is exported as a raw CSV, and
# ncu_summary.py turns all of them into $OUT/profile.md and $OUT/profile.json.
# Environment: OUT (default /tmp/gpu-profile-out), STORE (default .gpu/bench-store), NCU (the
# ncu binary; default: on PATH, else the newest under /opt/nvidia/nsight-compute), PY,
# CASE_TIMEOUT (seconds one case may take, default 180).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PYTHONUNBUFFERED=1
# JAX takes memory as it needs it: ncu's kernel replay saves and restores what a kernel writes
export XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gpu-profile-out}; mkdir -p "$OUT"
STORE=${STORE:-.gpu/bench-store}
NCU=${NCU:-$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | sort -V | tail -1)}
PY=${PY:-python3}
PP=$(mktemp -d) && ln -sfn "$ROOT/kernels" "$PP/ejaot_kernels"
export PYTHONPATH="$ROOT:$PP${PYTHONPATH:+:$PYTHONPATH}"

DEFAULT_CASES=(
  "mla_attention decode B64 S1 T4096 H128 "
  "mla_attention decode B128 S1 T4096 H128 "
  "mla_attention decode B64 S1 T4096 H16 "
  "paged_mla_attention decode B64 T4096 page64 H16 "
  "flash_attention fwd+bwd B1 S4096 Hq32 Hk8 D128 causal"
  "flash_attention fwd+bwd B1 S4096 Hq32 Hk8 D128 causal|twin"
  "flash_attention fwd+bwd B2 S8192 Hq16 Hk16 D128 full"
  "flash_attention fwd+bwd B2 S8192 Hq16 Hk16 D128 full|twin"
  "flash_attention fwd B2 S4096 Hq16 Hk16 D256 causal"
  "flash_attention fwd B2 S4096 Hq16 Hk16 D256 causal|twin"
  "flash_attention fwd+bwd B2 S4096 Hq16 Hk16 D256 causal"
  "flash_attention fwd+bwd B2 S4096 Hq16 Hk16 D256 causal|twin"
)
[ $# -gt 0 ] && CASES=("$@") || CASES=("${DEFAULT_CASES[@]}")

SECTIONS=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
          --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats)
METRICS="regex:sm__pipe_tensor.*cycles_active.*,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__bytes.sum"

{ date -u +%FT%TZ; echo "store $STORE; ncu $NCU"; "$NCU" --version | tail -1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
} 2>&1 | tee "$OUT/profile_env.txt"

reports=()
n=0
for c in "${CASES[@]}"; do
  n=$((n + 1))
  text=${c%|twin}
  twin=(); [ "$text" != "$c" ] && twin=(--twin)
  name=$(printf 'case%02d' "$n")
  echo "== $name: $c ($(date -u +%T))"
  rm -f "$OUT/$name".{ncu-rep,csv,json,err}      # nothing of an earlier run in $OUT is summarized
  timeout "${CASE_TIMEOUT:-180}" "$NCU" --profile-from-start off --clock-control none --target-processes all "${SECTIONS[@]}" --metrics "$METRICS" \
      -f -o "$OUT/$name" "$PY" -m benchmarks.gpu.profile --store "$STORE" --case "$text" "${twin[@]}" \
      --meta "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  rc=$?
  grep -E "^==(PROF|ERROR|WARNING)==" "$OUT/$name.log" | grep -v "Profiling \"" | tail -4
  if [ $rc -ne 0 ] || [ ! -f "$OUT/$name.ncu-rep" ]; then echo "$name failed (rc=$rc):"; tail -5 "$OUT/$name.log"; continue; fi
  "$NCU" --import "$OUT/$name.ncu-rep" --csv --page raw --print-units base > "$OUT/$name.csv" 2>"$OUT/$name.err" \
    && reports+=("$OUT/$name.csv:$OUT/$name.json")
done
[ ${#reports[@]} -gt 0 ] || { echo "no case was profiled"; exit 1; }
"$PY" -m benchmarks.gpu.ncu_summary "${reports[@]}" --json "$OUT/profile.json" --markdown "$OUT/profile.md"
cat "$OUT/profile.md"

#!/usr/bin/env bash
# On the GPU machine (jax with CUDA, no jax-triton): finalize and verify the store built on
# the CPU host, time start-up, run the kernel checks/benchmarks, measure tuning candidates.
# Usage: [KERNELS="k1 k2"] bash benchmarks/gpu_session.sh [full|quick|verify|store|product]
#   (results under $OUT) verify: finalize, verify; store: + tune measure; product: finalize, verify,
#   tune measure, start-up. VERIFY=0 skips verify; MAX_ELEMENTS overrides verify's numerics
#   limit (default: sized to the device); STORE names the store folder (default .gpu/store).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
# ejaot from this tree; the kernel collection is imported as ejaot_kernels
mkdir -p /tmp/pp && ln -sfn "$PWD/kernels" /tmp/pp/ejaot_kernels
export PYTHONPATH="$PWD:/tmp/pp${PYTHONPATH:+:$PYTHONPATH}"
PY=python3
E="$PY -m ejaot.cli"
MODE=${1:-full}
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv;
  $PY -c "import jax, jaxlib; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/env.txt"
rm -rf /tmp/store && cp -r "${STORE:-.gpu/store}" /tmp/store
KSEL=""; for k in ${KERNELS:-}; do KSEL="$KSEL --kernel $k"; done   # KERNELS: finalize/verify only these
( time $E finalize /tmp/store $KSEL ) > "$OUT/finalize.txt" 2>&1; tail -3 "$OUT/finalize.txt"
[ "${VERIFY:-1}" = 0 ] || timeout "${VERIFY_TIMEOUT:-270}" $E verify /tmp/store $KSEL ${MAX_ELEMENTS:+--max-elements $MAX_ELEMENTS} > "$OUT/verify.txt" 2>&1; echo "verify rc=$?"; grep -E "FAIL|summary" "$OUT/verify.txt" | tail -8
Q=""; [ "$MODE" = quick ] && Q="--quick"
[ "$MODE" = verify ] && exit 0
if [ "$MODE" = store ]; then     # finalize + verify (above), then measure the tuning candidates
  timeout 230 $E tune measure .gpu/cands --iters 15 > "$OUT/tune.txt" 2>&1; echo "tune rc=$?"; grep -E "best|no candidate" "$OUT/tune.txt"
  for f in kernels/*/tuned/gpu-sm90.json; do [ -f "$f" ] && cp "$f" "$OUT/tuned-$(basename "$(dirname "$(dirname "$f")")").json"; done
  exit 0
fi
if [ "$MODE" = product ]; then   # the store-level run: tuning, then start-up
  timeout 200 $E tune measure .gpu/cands --iters 15 > "$OUT/tune.txt" 2>&1; echo "tune rc=$?"; grep best "$OUT/tune.txt"
  for f in kernels/*/tuned/gpu-sm90.json; do [ -f "$f" ] && cp "$f" "$OUT/tuned-$(basename "$(dirname "$(dirname "$f")")").json"; done
  timeout "${STARTUP_TIMEOUT:-240}" $PY -m benchmarks.startup --store /tmp/store --platform cuda --base portable --skip-rebuild \
      --kernel "${STARTUP_KERNELS:-flash_attention,page_attention}" --limit "${STARTUP_LIMIT:-6}" \
      --max-footprint 1e12 --out "$OUT" > "$OUT/startup.txt" 2>&1; echo "startup rc=$?"; tail -16 "$OUT/startup.txt"
  exit 0
fi
for k in paged mla; do     # flash_attention: bash benchmarks/gpu/run.sh
  if [ -d .gpu/$k ]; then
    timeout 400 $PY benchmarks/gpu_${k}_check.py --artifacts .gpu/$k --out "$OUT/$k.json" $Q > "$OUT/$k.txt" 2>&1
    echo "$k rc=$?"; tail -25 "$OUT/$k.txt"
  fi
done
if [ "$MODE" != quick ]; then
  timeout 300 $E tune measure .gpu/cands --iters 20 > "$OUT/tune.txt" 2>&1; echo "tune rc=$?"; tail -12 "$OUT/tune.txt"
  for f in kernels/*/tuned/gpu-sm90.json; do [ -f "$f" ] && cp "$f" "$OUT/tuned-$(basename "$(dirname "$(dirname "$f")")").json"; done
  timeout 400 $PY -m benchmarks.startup --store /tmp/store --platform cuda --base portable --skip-rebuild \
      --max-footprint 1e12 --out "$OUT" > "$OUT/startup.txt" 2>&1; echo "startup rc=$?"; tail -30 "$OUT/startup.txt"
fi

#!/usr/bin/env bash
# On the GPU machine (jax with CUDA, no jax-triton): the Llama-style demo's store, built on
# the CPU host for gpu-sm90 (PYTHONPATH=examples .venv/bin/ejaot build --manifest
# examples/llama_demo/manifest-8b-layers.toml --target gpu-sm90 --out .gpu/llama-store),
# finalized and verified here, then served by examples/demo.py in fresh processes.
# Results under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
mkdir -p /tmp/pp && ln -sfn "$PWD/kernels" /tmp/pp/ejaot_kernels
export PYTHONPATH="$PWD:/tmp/pp:$PWD/examples${PYTHONPATH:+:$PYTHONPATH}"
PY=python3
{ date -u; git log -1 --format=%h 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv;
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/env.txt"
STORE=/tmp/llama-store; rm -rf $STORE && cp -r "${STORE_SRC:-.gpu/llama-store}" $STORE
( time $PY -m ejaot.cli finalize $STORE ) > "$OUT/finalize.txt" 2>&1; tail -4 "$OUT/finalize.txt"
timeout 120 $PY -m ejaot.cli verify $STORE --kernel flash_attention --kernel page_attention > "$OUT/verify.txt" 2>&1
echo "verify rc=$?"; grep -E "FAIL|summary|ok " "$OUT/verify.txt" | tail -4
timeout "${DEMO_TIMEOUT:-420}" $PY examples/demo.py --config 8b-layers --target gpu-sm90 --store $STORE --no-build \
  ${MODES:+--modes $MODES} > "$OUT/demo.json" 2> "$OUT/demo.log"
echo "demo rc=$?"; grep "^\[demo\]" "$OUT/demo.log"; tail -c 3000 "$OUT/demo.log" | grep -v "^\[demo\]" | tail -15; cat "$OUT/demo.json"

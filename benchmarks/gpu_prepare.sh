#!/usr/bin/env bash
# On the CPU build host: everything the GPU session needs, in .gpu/ (git-ignored, carried
# to the device machine). Needs `make .venv/.gpu-installed`.
set -euo pipefail
cd "$(dirname "$0")/.."
E=.venv/bin/ejaot
PY=.venv/bin/python
# .gpu/ejk (ejkernel for gpu_ejkernel_check.py, see its docstring) is kept: it is slow to rebuild
mkdir -p .gpu && find .gpu -mindepth 1 -maxdepth 1 ! -name ejk -exec rm -rf {} +
$E build --manifest "${MANIFEST:-manifests/default.toml}" --target gpu-sm90 --out .gpu/store --quiet
$E tune build --manifest manifests/tune-gpu.toml --target gpu-sm90 --out .gpu/cands > .gpu/tune-build.log 2>&1 || { tail .gpu/tune-build.log; exit 1; }
tail -2 .gpu/tune-build.log
for k in ${CHECKS:-paged mla}; do   # flash_attention: benchmarks/gpu/ (manifest.toml, run.sh)
  if [ -f benchmarks/gpu_${k}_check.py ]; then $PY benchmarks/gpu_${k}_check.py --export .gpu/$k > .gpu/export-$k.log 2>&1 || { tail .gpu/export-$k.log; exit 1; }; fi
done
du -sh .gpu

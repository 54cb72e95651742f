#!/usr/bin/env bash
# The GPU benchmark suite, end to end: build (or reuse) -> finalize -> verify -> time -> report.
#
#   bash benchmarks/gpu/run.sh [--smoke] [STAGE...]      STAGE: build finalize verify time report
#                                                        (default: all five, in that order)
# On the GPU host (jax with CUDA; triton/jax-triton not needed when the store was built elsewhere):
#   1. any host:  ejaot build --manifest benchmarks/gpu/manifest.toml --target gpu-sm90 --out .gpu/bench-store --prune
#      (or let the build stage do it, where triton + jax-triton + the CUDA plugin are installed)
#   2. GPU host:  OUT=/some/dir bash benchmarks/gpu/run.sh
#      -> $OUT/gpu_results.json (schema: benchmarks/gpu/suite.py), $OUT/gpu_results.md (report.py),
#         $OUT/{env,build,finalize,verify,time}.txt, $OUT/verify.jsonl
# --smoke: the CPU smoke run (JAX_PLATFORMS=cpu, benchmarks/gpu/smoke.toml built for the cpu target
# in a temporary store, tiny device-rate sizes, cuDNN skipped with its reason).
#
# Environment: OUT (default /tmp/gpu-bench-out), STORE (default .gpu/bench-store; finalized in
# place), MANIFEST, TARGET (default gpu-sm90), PY (the Python with jax; default python3 if it
# imports jax, else .venv/bin/python), EJAOT_COMMIT (recorded instead of git's HEAD: set it
# where the tree was copied with stale git metadata),
# SUITE_ARGS (extra arguments for suite.py, e.g. "--kernel mla_attention --iters 30"),
# VERIFY_TIMEOUT / TIME_TIMEOUT (seconds, default 900 / 1800). A failing stage is reported and
# the next one still runs; the exit status is the time stage's (0: every row ran from the store).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PYTHONUNBUFFERED=1

SMOKE=0
STAGES=()
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    build|finalize|verify|time|report) STAGES+=("$a") ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a (stages: build finalize verify time report; --smoke)" >&2; exit 2 ;;
  esac
done
[ ${#STAGES[@]} -gt 0 ] || STAGES=(build finalize verify time report)
want() { local s; for s in "${STAGES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

OUT=${OUT:-/tmp/gpu-bench-out}; mkdir -p "$OUT"
if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  MANIFEST=${MANIFEST:-benchmarks/gpu/smoke.toml}
  TARGET=${TARGET:-cpu}
  if [ -z "${STORE:-}" ]; then SMOKE_DIR=$(mktemp -d); STORE=$SMOKE_DIR/store; fi
  SUITE_ARGS="--smoke ${SUITE_ARGS:-}"
else
  MANIFEST=${MANIFEST:-benchmarks/gpu/manifest.toml}
  TARGET=${TARGET:-gpu-sm90}
  STORE=${STORE:-.gpu/bench-store}
  SUITE_ARGS=${SUITE_ARGS:-}
fi

# ejaot from this tree; its kernels/ folder imported as ejaot_kernels
PP=$(mktemp -d) && ln -sfn "$ROOT/kernels" "$PP/ejaot_kernels"
export PYTHONPATH="$ROOT:$PP${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PY:-}" ]; then
  if python3 -c "import jax" >/dev/null 2>&1; then PY=python3; else PY=$ROOT/.venv/bin/python; fi
fi
E="$PY -m ejaot.cli"
COMMIT=${EJAOT_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}

{ date -u +%FT%TZ; echo "commit $COMMIT; store $STORE; manifest $MANIFEST; target $TARGET; stages ${STAGES[*]}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  $PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

stage() { echo "== $1 ($(date -u +%T))"; }

if want build; then
  stage build
  if [ -f "$STORE/index.msgpack" ] && ! $PY -c "import jax_triton" >/dev/null 2>&1 && [ "$TARGET" != cpu ]; then
    echo "reusing $STORE (no jax_triton here to build missing $TARGET entries)" | tee "$OUT/build.txt"
  else
    ( time $E build --manifest "$MANIFEST" --target "$TARGET" --out "$STORE" --quiet --prune ) > "$OUT/build.txt" 2>&1
    rc=$?; tail -3 "$OUT/build.txt"; echo "build rc=$rc"
    if [ ! -f "$STORE/index.msgpack" ]; then
      echo "no store at $STORE: build it on a host with the GPU build extras (make .venv/.gpu-installed):" >&2
      echo "  .venv/bin/ejaot build --manifest $MANIFEST --target $TARGET --out $STORE" >&2
      exit 1
    fi
  fi
fi

if want finalize && [ "$TARGET" != cpu ]; then   # the cpu target's build already holds the compiled tier
  stage finalize
  ( time $E finalize "$STORE" ) > "$OUT/finalize.txt" 2>&1; rc=$?
  tail -4 "$OUT/finalize.txt"; echo "finalize rc=$rc"
fi

if want verify; then
  stage verify
  timeout "${VERIFY_TIMEOUT:-900}" $E verify "$STORE" --json > "$OUT/verify.jsonl" 2> "$OUT/verify.txt"; rc=$?
  echo "verify rc=$rc"; grep '"type": *"summary"' "$OUT/verify.jsonl" || tail -3 "$OUT/verify.txt"
fi

status=0
if want time; then
  stage time
  CMD="bash benchmarks/gpu/run.sh $*"
  # shellcheck disable=SC2086
  timeout "${TIME_TIMEOUT:-1800}" $PY -m benchmarks.gpu.suite --store "$STORE" --out "$OUT/gpu_results.json" \
      --verify-json "$OUT/verify.jsonl" --command "$CMD" $SUITE_ARGS 2>&1 | tee "$OUT/time.txt"
  status=${PIPESTATUS[0]}; echo "time rc=$status"
fi

if want report && [ -f "$OUT/gpu_results.json" ]; then
  stage report
  $PY -m benchmarks.gpu.report "$OUT/gpu_results.json" --out "$OUT/gpu_results.md" && echo "wrote $OUT/gpu_results.md"
fi
rm -rf "$PP" ${SMOKE_DIR:+"$SMOKE_DIR"}
exit "$status"

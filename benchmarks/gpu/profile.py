"""One benchmark case, run once inside a profiler range: the workload `ncu` profiles
(benchmarks/gpu/profile.sh runs it under Nsight Compute; ncu_summary.py reads the report).

    python -m benchmarks.gpu.profile --store DIR --case "mla_attention decode B64 S1 T4096 H128" \\
        [--twin] [--warmup N] [--meta F]

--case picks the one suite row whose case id (suite.case_id, as in gpu_results.json)
contains the text: a decode kernel's one row, or a flash entry's "fwd" or "fwd+bwd" row.
The call is the suite's: `jax.jit` over the whole call through `ejaot.load(store).call`
(decode kernels and forward rows), or `jax.jit(jax.vjp(...))` through it (fwd+bwd rows);
--twin runs the row's comparison instead (cuDNN for flash_attention, the XLA backend for
flash_mla_attention), on the same inputs. It runs --warmup calls, then exactly one call
between cuProfilerStart and cuProfilerStop, so `ncu --profile-from-start off` sees that
call's kernels and nothing of start-up, compilation or warm-up. --meta writes the case (id,
entry, what ran, FLOPs and minimum bytes by roofline.py) as JSON, for the summary's rates.
Where JAX runs on no CUDA GPU the profiler calls are skipped (the CPU test runs it that way).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

from .suite import (DIFFERENTIATED, KERNELS, case_id, comparison, ensure_kernel_collection, flops_bytes,
                    forward_backward, make_arg_sets)


class CudaProfilerRange:
    """cuProfilerStart / cuProfilerStop through the driver, on the context JAX made current
    (its primary context). No-op when JAX does not run on a CUDA GPU or libcuda is absent."""

    def __init__(self, enabled: bool = True):
        self.cuda = None
        if enabled:
            try:
                self.cuda = ctypes.CDLL("libcuda.so.1")
            except OSError:
                pass

    def _ensure_context(self):
        ctx = ctypes.c_void_p()
        self._check(self.cuda.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if ctx.value:
            return
        dev = ctypes.c_int()
        self._check(self.cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        self._check(self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self._check(self.cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed with CUresult {rc}")

    def __enter__(self):
        if self.cuda is not None:
            self._ensure_context()
            self._check(self.cuda.cuProfilerStart(), "cuProfilerStart")
        return self

    def __exit__(self, *exc):
        if self.cuda is not None:
            self._check(self.cuda.cuProfilerStop(), "cuProfilerStop")
        return False


def pick_entry(index: dict, text: str) -> tuple[str, dict, str, str]:
    """(key, record, case id, mode) of the one suite row whose case id contains text (a
    flash entry has two rows, "fwd" and "fwd+bwd"; decode kernels one, "decode")."""
    found = []
    for key, rec in index["entries"].items():
        if not isinstance(rec, dict) or rec.get("kernel") not in KERNELS:
            continue
        for mode in (("fwd", "fwd+bwd") if rec["kernel"] in DIFFERENTIATED else ("decode",)):
            cid = case_id(rec["kernel"], mode, rec["dims"], rec["static"], rec["dtype"])
            if text in cid:
                found.append((key, rec, cid, mode))
    if len(found) != 1:
        names = "; ".join(f[2] for f in found) or "none"
        raise SystemExit(f"--case {text!r} must match exactly one case of the store; "
                         f"it matches {len(found)}: {names}")
    return found[0]


def workload(bundle, spec, record, arrays: dict, mode: str, twin: bool):
    """(function, arguments, description) of one call of the case."""
    import jax
    import jax.numpy as jnp
    kernel = record["kernel"]
    static = {k: v for k, v in record["static"].items() if v is not None}
    names = [a.name for a in spec.inputs if not a.optional or a.name in record["present"]]
    args = tuple(arrays[n] for n in names)
    if kernel not in DIFFERENTIATED:
        if twin:
            raise SystemExit(f"--twin: {kernel} rows have no comparison")
        return jax.jit(lambda *a: bundle.call(kernel, **dict(zip(names, a)), **static)), args, \
            "jax.jit over ejaot.load(store).call (the whole call)"
    if twin:
        _, what, fwd = comparison(spec, record)
    else:
        what = "jax.jit over ejaot.load(store).call"

        def fwd(*a):
            return bundle.call(kernel, *a, **static)
    if mode == "fwd":
        return jax.jit(fwd), args, what
    ct = jax.random.normal(jax.random.key(7), args[0].shape, jnp.float32).astype(args[0].dtype)
    return jax.jit(forward_backward(fwd, len(DIFFERENTIATED[kernel]))), (*args, ct), what + " under jax.vjp"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Runs one benchmark case once inside a CUDA profiler range.")
    p.add_argument("--store", required=True, help="a store built by `ejaot build` (finalized on the GPU host)")
    p.add_argument("--case", required=True, help="text of the case id (as in gpu_results.json) of one entry")
    p.add_argument("--twin", action="store_true", help="run the row's comparison (cuDNN / XLA backend) instead")
    p.add_argument("--warmup", type=int, default=3,
                   help="calls before the profiled one (at least 1: the first call compiles)")
    p.add_argument("--meta", help="write the case's description here (JSON)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_kernel_collection()
    import jax
    import ejaot
    from ejaot.spec.registry import all_kernels
    from ejaot.store.filestore import FileStore
    index = FileStore(args.store).read_index()
    key, record, cid, mode = pick_entry(index, args.case)
    spec = all_kernels()[record["kernel"]]
    bundle = ejaot.load(args.store, miss_log=False)
    arrays = make_arg_sets(spec, record, 1, args.seed)[0]
    fn, fargs, what = workload(bundle, spec, record, arrays, mode, args.twin)
    for _ in range(max(1, args.warmup)):
        jax.block_until_ready(fn(*fargs))
    with CudaProfilerRange(enabled=jax.default_backend() == "gpu"):
        jax.block_until_ready(fn(*fargs))
    flops, nbytes, _ = flops_bytes(record["kernel"], mode, record["dims"], record["dtype"], record["static"],
                                   tuple(record["present"]))
    meta = {"case": cid + (" [twin]" if args.twin else ""), "entry": key, "kernel": record["kernel"], "mode": mode,
            "twin": args.twin, "call": what, "backend": record.get("backend"), "config": record.get("config"),
            "flops": flops, "bytes": nbytes, "device": jax.devices()[0].device_kind}
    if args.meta:
        Path(args.meta).write_text(json.dumps(meta, indent=1, default=str))
    print(json.dumps(meta, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

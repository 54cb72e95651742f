#!/usr/bin/env python3
"""Whether jitted programs that inline k calls of a store's portable tier run on this GPU,
for every kernel of a store (jax only; the GPU host).

XLA runs sequences of ops as command buffers (CUDA graphs), custom calls included. On the
H100 image (jax 0.11.2) a Triton kernel that needed a global scratch buffer (device-made
TMA descriptors) failed there, as jaxlib allocates that buffer on the stream at each
launch (README, Serving). This takes one entry per kernel (its smallest bucket, or
--largest), builds a program of k calls with distinct first inputs, runs it, and checks
every call's output against a program of that call alone (one custom call). Needs only
the portable tier (no finalize). XLA_FLAGS (e.g. --xla_gpu_enable_command_buffer=...)
apply as set.

    python3 benchmarks/gpu_graphs_check.py --store DIR [--calls 4,5,8] [--kernel K ...] [--largest]
"""
from __future__ import annotations

import argparse
import os

from gpu_check_common import setup_paths


def picked_entries(index, kernels, largest=False):
    """key of the entry with the fewest (largest: most) elements per kernel (among
    `kernels`, or all)."""
    import math
    best = {}
    for key, rec in index["entries"].items():
        k = rec["kernel"]
        if kernels and k not in kernels:
            continue
        size = math.prod(v for v in rec["dims"].values() if isinstance(v, int) and v > 0)
        size = -size if largest else size
        if k not in best or size < best[k][0]:
            best[k] = (size, key)
    return {k: key for k, (_, key) in sorted(best.items())}


def check_kernel(bundle, index, key, calls, rng):
    import jax
    from ejaot.spec.registry import all_kernels
    from ejaot.verify import all_close, entry_arguments
    rec = index["entries"][key]
    spec = all_kernels()[rec["kernel"]]
    entry = bundle.entries.get(key)
    if entry is None:
        why = [r["reason"] for r in bundle.stats()["rejected"] if r["entry"] == key]
        return f"{rec['kernel']}: entry not loaded ({'; '.join(why) or 'not in the bundle'})"
    sets = [entry_arguments(spec, rec, rng)[1] for _ in range(max(calls))]
    firsts = [jax.device_put(args[0]) for args in sets]
    rest, valid = tuple(jax.device_put(a) for a in sets[0][1:-1]), sets[0][-1]
    portable = entry.portable()             # jax.jit of the exported call: a one-call program
    wants = [jax.block_until_ready(portable(x, *rest, valid)) for x in firsts]
    lines = []
    for k in calls:
        many = jax.jit(lambda xs, rest, v: [portable(x, *rest, v) for x in xs])
        try:
            for _ in range(3):
                got = jax.block_until_ready(many(firsts[:k], rest, valid))
        except Exception as e:  # noqa: BLE001 - the outcome is the measurement
            lines.append(f"{k} calls: FAILED {str(e).splitlines()[0][:160]}")
            continue
        bad = [i for i in range(k) if not all_close(got[i], wants[i], rec["dtype"])[0]]
        lines.append(f"{k} calls: ok" + (f", outputs differ from one-call programs' at calls {bad}" if bad
                                         else ", outputs match one-call programs'"))
    return f"{rec['kernel']} {rec['dtype']} {rec['dims']}: " + "; ".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="a store with the portable tier (finalized or not)")
    p.add_argument("--calls", default="4,5,8", help="comma-separated call counts per program")
    p.add_argument("--kernel", action="append", default=[], help="only these kernels (repeatable)")
    p.add_argument("--largest", action="store_true", help="each kernel's largest bucket (default: smallest)")
    args = p.parse_args()
    setup_paths(export=False)
    import numpy as np
    import ejaot
    from ejaot.store import FileStore
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    index = FileStore(args.store).read_index()
    bundle = ejaot.load(args.store, miss_log=False)
    calls = [int(c) for c in args.calls.split(",")]
    rng = np.random.default_rng(0)
    for kernel, key in picked_entries(index, set(args.kernel), args.largest).items():
        try:
            print(check_kernel(bundle, index, key, calls, rng), flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{kernel}: could not run ({type(e).__name__}: {str(e).splitlines()[0][:160]})", flush=True)


if __name__ == "__main__":
    main()

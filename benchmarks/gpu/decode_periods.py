"""Jitted decode calls of a store, timed one entry after another with nothing else in the
process (no device-rate measures, no cuDNN): for A/B runs of two stores, alternating, in
one session. Run from the tree whose sources built the store.

  python -m benchmarks.gpu.decode_periods STORE LABEL    one JSON line per MLA decode entry
  python -m benchmarks.gpu.decode_periods --floor        a jitted one-kernel program on a
                                                         4 KB array: the host's floor per call

Per entry (jax.jit over `bundle.call`, 4 input sets made as suite.py makes them):
  period_us    back-to-back period (timing.time_call: median of 10 samples)
  dispatch_us  host time per call to issue 200 calls without waiting (close to period_us
               when the host, not the device, sets the pace)
  drain_us     the wait for the device after those 200 calls
  lone_us      one call waited for (median of 30)
"""
from __future__ import annotations

import argparse
import json
import time


def periods(store: str, label: str, kernels=("mla_attention", "paged_mla_attention"), n_calls: int = 200):
    import jax
    import ejaot
    from ejaot.spec.registry import all_kernels
    from ejaot.store.filestore import FileStore
    from . import suite
    from .timing import time_call
    suite.ensure_kernel_collection()
    bundle = ejaot.load(store, miss_log=False)
    specs = all_kernels()
    for _, rec in sorted(FileStore(store).read_index()["entries"].items()):
        kernel = rec["kernel"]
        if kernel not in kernels:
            continue
        spec = specs[kernel]
        static = {k: v for k, v in rec["static"].items() if v is not None}
        names = [a.name for a in spec.inputs if not a.optional or a.name in rec["present"]]
        sets = [{n: s[n] for n in names} for s in suite.make_arg_sets(spec, rec, 4, 0)]
        f = jax.jit(lambda kernel=kernel, static=static, **a: bundle.call(kernel, **a, **static))
        for s in sets:
            jax.block_until_ready(f(**s))
        t = time_call(lambda i: f(**sets[i]), [(i,) for i in range(len(sets))], iters=10)
        out = None
        t0 = time.perf_counter()
        for i in range(n_calls):
            out = f(**sets[i % len(sets)])
        t1 = time.perf_counter()
        jax.block_until_ready(out)
        t2 = time.perf_counter()
        lone = time_call(lambda i: f(**sets[i]), [(i,) for i in range(len(sets))], iters=30, reps=1)
        yield {"label": label, "case": suite.case_id(kernel, "decode", rec["dims"], rec["static"], rec["dtype"]),
               "period_us": t["median_s"] * 1e6, "dispatch_us": (t1 - t0) / n_calls * 1e6,
               "drain_us": (t2 - t1) * 1e6, "lone_us": lone["median_s"] * 1e6, "config": rec.get("config")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", nargs="?")
    p.add_argument("label", nargs="?", default="")
    p.add_argument("--floor", action="store_true", help="time the jitted one-kernel program instead")
    args = p.parse_args(argv)
    if args.floor:
        from .suite import measure_call_floor
        f = measure_call_floor({"iters": 20})
        print(json.dumps({"floor_us": f["us"], "min_us": f["us_best"]}), flush=True)
        return 0
    if not args.store:
        p.error("STORE is required (or --floor)")
    for row in periods(args.store, args.label):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

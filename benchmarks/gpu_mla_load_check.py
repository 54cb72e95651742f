#!/usr/bin/env python3
"""Three GPU-host checks on `gpu_mla_check.py --export` artifacts (jax only; figures in
BENCHMARKS.md, "MLA decode in a model step"):

  power    the batch-64 MLA decode kernel alone, looped back to back for 6 s, with
           `nvidia-smi` sampling the SM clock and power every ~50 ms and one
           `nvidia-smi -q -d PERFORMANCE` snapshot (clock event reasons) mid-run; a 1 GiB
           elementwise copy the same way, for comparison.
  timeline per-call time of the batch-64 kernel alone and whole path: host-timed batches
           of 20 and 200 back-to-back dispatches, and the GPU's own timeline from
           `jax.profiler` traces (CUPTI) of 20 dispatches and of one program of 10 calls:
           every GPU op's duration, the idle time between ops, the steady-state period.
  layers   a decode step of 10 layers in one jitted program: 10 whole-path calls, each
           with its own query, latent cache, rope keys and weights (as a model's layers
           have), timed by the host over back-to-back steps (20 at a time, and for 3 s
           with a wait every 5 steps) and on the GPU's own timeline; each layer's output
           checked against a program of that call alone.
           Run it with XLA's default command buffers and with them off
           (XLA_FLAGS=--xla_gpu_enable_command_buffer=) to see what the graphs save.

(Whether jitted programs of several calls run under XLA's command buffers, for every kernel
of a store: gpu_graphs_check.py.)

    python3 benchmarks/gpu_mla_load_check.py power  --artifacts DIR [--out F.json]
    python3 benchmarks/gpu_mla_load_check.py timeline --artifacts DIR [--out F.json]
    python3 benchmarks/gpu_mla_load_check.py layers --artifacts DIR [--out F.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from gpu_check_common import gpu_ops, load_exported, setup_paths, steady_period_s

CASE = ("ds3_decode_B64_T4096", 64, 0)


def case_inputs(rng):
    import jax.numpy as jnp
    import gpu_mla_check as g
    c = g.timing_case(CASE)
    full = g.make_args(c, "bfloat16", rng)
    q_lat = jnp.asarray(rng.standard_normal((64, 1, 128, 512)) * 0.5, jnp.bfloat16)
    return full, [q_lat, full[1], full[4], full[5], full[6]]


def sample_gpu(stop, rows):
    while not stop.is_set():
        r = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True)
        rows.append([float(x) for x in r.stdout.strip().split(", ")])
        time.sleep(0.05)


def power(art, out):
    import jax
    import jax.numpy as jnp
    import numpy as np
    _, kernel_args = case_inputs(np.random.default_rng(0))
    kernel = jax.jit(load_exported(art, f"{CASE[0]}__bfloat16__kernel.bin").call)
    copy = jax.jit(lambda x: x * 1.0001)
    res = {}
    for tag, fn, args in (("mla_kernel", kernel, kernel_args), ("copy_1GiB", copy, [jnp.ones((1 << 28,), jnp.float32)])):
        jax.block_until_ready(fn(*args))
        rows, stop = [], threading.Event()
        th = threading.Thread(target=sample_gpu, args=(stop, rows))
        th.start()
        t0, n, perf = time.time(), 0, None
        while time.time() - t0 < 6:
            for _ in range(50):
                o = fn(*args)
            n += 50
            if perf is None and time.time() - t0 > 3:     # while calls are still queued
                perf = subprocess.run(["nvidia-smi", "-q", "-d", "PERFORMANCE"], capture_output=True, text=True).stdout
            jax.block_until_ready(o)
        seconds = time.time() - t0
        stop.set()
        th.join()
        steady = rows[len(rows) // 4:]
        clk, pw = sorted(r[0] for r in steady), sorted(r[1] for r in steady)
        res[tag] = {"us_per_call": seconds / n * 1e6, "sm_clock_mhz_median": clk[len(clk) // 2],
                    "sm_clock_mhz_min": clk[0], "power_w_median": pw[len(pw) // 2], "samples": len(steady),
                    "performance": perf}
        print(tag, {k: v for k, v in res[tag].items() if k != "performance"}, flush=True)
        print(perf, flush=True)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))


def traced_ops(run, calls):
    """The GPU ops of run() (`calls` calls), summarized: per op name the count, median
    duration and median idle time after it; the busy time; the span; and the steady
    period per call (gpu_check_common.steady_period_s)."""
    import statistics
    ev = gpu_ops(run)
    if not ev:
        return {"error": "no GPU events in the trace (CUPTI unavailable?)"}
    per_op = {}
    for (name, start, dur), nxt in zip(ev, ev[1:] + [None]):
        rec = per_op.setdefault(name[:90], {"d": [], "gap": []})
        rec["d"].append(dur / 1e3)
        if nxt:
            rec["gap"].append((nxt[1] - start - dur) / 1e3)
    period = steady_period_s(ev, calls)
    return {"ops": {n: {"count": len(r["d"]), "median_us": round(statistics.median(r["d"]), 2),
                        "median_idle_after_us": round(statistics.median(r["gap"]), 2) if r["gap"] else None}
                    for n, r in per_op.items()},
            "busy_us": round(sum(e[2] for e in ev) / 1e3, 1),
            "span_us": round((ev[-1][1] + ev[-1][2] - ev[0][1]) / 1e3, 1),
            "steady_period_us": round(period * 1e6, 2) if period else None}


def timeline(art, out):
    """Per-call time of the batch-64 kernel alone and whole path, three ways: host-timed
    batches of back-to-back dispatches (20 calls and 200), the GPU's own timeline of a traced batch (steady-state
    period and busy time per call), and a traced program of 10 calls."""
    import statistics
    import jax
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(0)
    full, kernel_args = case_inputs(rng)
    res = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
    for kind, args in (("kernel", kernel_args), ("full", full)):
        call = load_exported(art, f"{CASE[0]}__bfloat16__{kind}.bin").call
        fn = jax.jit(call)
        qs = [args[0]] + [jnp.asarray(rng.standard_normal(args[0].shape) * 0.5, args[0].dtype) for _ in range(9)]
        rest = tuple(args[1:])
        for q in qs[:2]:
            jax.block_until_ready(fn(q, *rest))
        r = {}
        for reps in (20, 200):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                for i in range(reps):
                    o = fn(qs[i % 2], *rest)
                t_enq = time.perf_counter()
                jax.block_until_ready(o)
                times.append(((time.perf_counter() - t0) / reps, (t_enq - t0) / reps))
            r[f"host_us_per_call_{reps}"] = round(statistics.median(t for t, _ in times) * 1e6, 1)
            r[f"enqueue_us_per_call_{reps}"] = round(statistics.median(e for _, e in times) * 1e6, 1)

        def batch(n=20):
            o = None
            for i in range(n):
                o = fn(qs[i % 2], *rest)
            return o
        r["trace_20_dispatches"] = traced_ops(batch, 20)
        many = jax.jit(lambda xs, rest: [call(x, *rest) for x in xs])
        try:
            jax.block_until_ready(many(qs, rest))
            r["trace_10_in_one_program"] = traced_ops(lambda: many(qs, rest), 10)
        except Exception as e:  # noqa: BLE001 - the outcome is the measurement
            r["trace_10_in_one_program"] = {"error": str(e).splitlines()[0][:200]}
        res[kind] = r
        print(kind, json.dumps(r, indent=1), flush=True)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))


def layers(art, out, n=10):
    import jax
    import numpy as np
    import gpu_mla_check as g
    from ejaot.verify import all_close
    rng = np.random.default_rng(0)
    c = g.timing_case(CASE)
    sets = [g.make_args(c, "bfloat16", rng) for _ in range(n)]
    nbytes = c["B"] * c["T"] * (c["R"] + c["E"]) * 2 + 2 * c["B"] * c["HQ"] * c["D"] * 2
    call = load_exported(art, f"{CASE[0]}__bfloat16__full.bin").call
    step = jax.jit(lambda sets: [call(*a) for a in sets])
    got = jax.block_until_ready(step(sets))
    one = jax.jit(call)
    bad = [i for i in range(n) if not all_close(got[i], one(*sets[i]), "bfloat16")[0]]
    host = g.bench(step, [[sets]], 5) / n                  # ~1.7 ms steps: 20 a batch
    sustained = g.sustained_time(step, [[sets]], 3, wait_every=5) / n   # the board at its power limit
    trace = traced_ops(lambda: step(sets), n)
    gpu = trace.get("steady_period_us")
    res = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "layers": n, "outputs_differ_at": bad,
           "host_us_per_layer": round(host * 1e6, 1), "gpu_period_us_per_layer": gpu,
           "sustained_us_per_layer": round(sustained * 1e6, 1),
           "bytes_per_layer": nbytes, "trace": trace}
    print(f"{n} layers, XLA_FLAGS={res['xla_flags']!r}: outputs "
          f"{'match' if not bad else f'differ at {bad}'}; host {host * 1e6:.1f} us/layer "
          f"({nbytes / host / 1e9:.0f} GB/s, {100 * nbytes / host / g.PEAK_BYTES_PER_S:.0f}%); "
          f"sustained 3 s {sustained * 1e6:.1f} us/layer ({100 * nbytes / sustained / g.PEAK_BYTES_PER_S:.0f}%); GPU "
          + (f"{gpu:.1f} us/layer ({100 * nbytes / (gpu * 1e-6) / g.PEAK_BYTES_PER_S:.0f}%)" if gpu else "n/a"),
          flush=True)
    for name, op in trace.get("ops", {}).items():
        print(f"   {op['count']:3d} x {op['median_us']:8.2f} us, idle after {op['median_idle_after_us']}: {name}",
              flush=True)
    if out:
        Path(out).write_text(json.dumps(res, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=("power", "timeline", "layers"))
    p.add_argument("--artifacts", required=True, help="a gpu_mla_check.py --export folder")
    p.add_argument("--out", default="", help="JSON results path")
    args = p.parse_args()
    setup_paths(export=False)
    art = Path(args.artifacts)
    {"power": power, "timeline": timeline, "layers": layers}[args.check](art, args.out)


if __name__ == "__main__":
    main()

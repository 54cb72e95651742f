#!/usr/bin/env python3
"""Two GPU-host checks on `gpu_mla_check.py --export` artifacts (jax only; H100 figures in
BENCHMARKS.md, MLA section, sixth session):

  power    the batch-64 MLA decode kernel alone, looped back to back for 6 s, with
           `nvidia-smi` sampling the SM clock and power every ~50 ms and one
           `nvidia-smi -q -d PERFORMANCE` snapshot (clock event reasons) mid-run; a 1 GiB
           elementwise copy the same way, for comparison.
  graphs   whether one jitted program holding k calls (k = 4, 5, 8) of the kernel alone
           and of the whole path runs; XLA's command buffers (CUDA graphs) decide it, so
           run it with and without XLA_FLAGS=--xla_gpu_enable_command_buffer=... set.

    python3 benchmarks/gpu_mla_load_check.py power  --artifacts DIR [--out F.json]
    python3 benchmarks/gpu_mla_load_check.py graphs --artifacts DIR
"""
from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path

from gpu_check_common import load_exported, setup_paths

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


def graphs(art):
    import jax
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(0)
    full, kernel_args = case_inputs(rng)
    for kind, args in (("kernel", kernel_args), ("full", full)):
        call = load_exported(art, f"{CASE[0]}__bfloat16__{kind}.bin").call
        rest = tuple(args[1:])
        many = jax.jit(lambda xs, rest: [call(x, *rest) for x in xs])
        for k in (4, 5, 8):
            xs = [jnp.asarray(rng.standard_normal(args[0].shape), args[0].dtype) for _ in range(k)]
            try:
                for _ in range(3):
                    jax.block_until_ready(many(xs, rest))
                print(f"{k} {kind} calls in one program: ok", flush=True)
            except Exception as e:  # noqa: BLE001 - the outcome is the measurement
                print(f"{k} {kind} calls in one program: FAILED {str(e).splitlines()[0][:200]}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=("power", "graphs"))
    p.add_argument("--artifacts", required=True, help="a gpu_mla_check.py --export folder")
    p.add_argument("--out", default="", help="(power) JSON results path")
    args = p.parse_args()
    setup_paths(export=False)
    art = Path(args.artifacts)
    power(art, args.out) if args.check == "power" else graphs(art)


if __name__ == "__main__":
    main()

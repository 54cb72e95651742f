"""Timing a callable on the device, honestly: host wall clock around device work that is
waited for, reported as what it is.

`time_call(fn, arg_sets, ...)`:

1. warm-up: `warmup` calls, each waited for (`jax.block_until_ready`): compilation,
   deserialization, autotuning and first-touch allocations happen here, untimed;
2. batch size: one more waited-for call is timed and `reps` is set so that one sample lasts
   about `min_sample_s` (at least 1, at most `max_reps`); `reps=N` fixes it instead;
3. `iters` samples: `reps` back-to-back calls (cycling through `arg_sets`, so a small
   working set does not sit in L2 between calls), then one `block_until_ready` on the last
   output; a sample's time per call is its wall time (`time.perf_counter`) over `reps`.

It returns the median and the minimum over samples (seconds per call), the samples
themselves, `reps`, `iters` and a one-line `method`. No CUDA events and no profiler: the
figure is the host-observed period of back-to-back calls, launch and dispatch overheads
included (hidden when the device work per call exceeds them). With reps=1 every call is
waited for: the latency of a lone call.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Sequence


def _block(x):
    import jax
    return jax.block_until_ready(x)


def time_call(fn: Callable, arg_sets: Sequence[Sequence], *, warmup: int = 3, iters: int = 20,
              min_sample_s: float = 0.02, max_reps: int = 1000, reps: int | None = None) -> dict:
    """Seconds per call of fn(*args) (args cycling through arg_sets): median and min of
    `iters` samples of `reps` back-to-back calls each (see the module docstring)."""
    if not arg_sets:
        raise ValueError("time_call needs at least one argument set")
    n = len(arg_sets)
    for i in range(max(1, warmup)):
        _block(fn(*arg_sets[i % n]))
    if reps is None:
        t0 = time.perf_counter()
        _block(fn(*arg_sets[0]))
        once = max(time.perf_counter() - t0, 1e-7)
        reps = int(min(max_reps, max(1, math.ceil(min_sample_s / once))))
    samples = []
    k = 0
    for _ in range(max(1, iters)):
        out = None
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*arg_sets[k % n])
            k += 1
        _block(out)
        samples.append((time.perf_counter() - t0) / reps)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "samples_s": samples,
        "reps": reps,
        "iters": len(samples),
        "warmup": max(1, warmup),
        "arg_sets": n,
        "method": (f"host wall clock (time.perf_counter): {len(samples)} samples of {reps} back-to-back "
                   f"calls over {n} input set(s), each sample ended by one jax.block_until_ready; "
                   f"per call = sample / {reps}; after {max(1, warmup)} waited-for warm-up calls"),
    }

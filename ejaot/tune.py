"""`ejaot tune`: candidate configs built anywhere (candidate_entries), measured on the
target's device (measure_store), the winners written as tuned records (write_tuned) that
the build then reads (ejaot.tuned.choose_config). A device-side tool, like verify: it loads
stores to run them, which the build itself never does."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import EjaotError
from .targets import Target
from .build import tuned

# -- tuning: candidates built anywhere, measured on the target's device ----------------------

ROTATE_BYTES = 256 << 20    # timing argument sets rotate until calls in a row touch this much
MAX_TIMING_SETS = 8

def candidate_entries(manifest, target):
    """Every planned entry once per candidate config of its backend (none for backends
    without candidates). The builds go to a separate candidates store."""
    from dataclasses import replace
    from .build.plan import plan
    entries, _ = plan(manifest, target)
    out = []
    for e in entries:
        backend = e.spec.backends[e.backend]
        if backend.config_candidates is None:
            continue
        for i, cfg in enumerate(backend.config_candidates(e.dims, e.static, target)):
            out.append(replace(e, config=dict(cfg), config_source={"kind": "candidate", "index": i}))
    return out


def measure_store(root, echo=print, iters: int = 20, warmup: int = 3) -> dict:
    """Times every candidate entry of a candidates store on this host's device, checks its
    result against the XLA reference, and returns the winners by bucket key."""
    if iters < 1:
        raise ValueError(f"tune measure: iters must be at least 1, got {iters}")
    import jax
    import numpy as np
    import ejaot
    from .spec.registry import get_kernel
    from .verify import all_close, entry_arguments, reference_outputs

    bundle = ejaot.load(root, miss_log=False)
    if bundle.catalog.store_problem:      # built for another platform: nothing here can run it
        raise EjaotError(f"{root}: cannot measure here: {bundle.catalog.store_problem}")
    groups: dict = {}
    for key, entry in bundle.entries.items():
        r = entry.record
        groups.setdefault((r["kernel"], tuned.bucket_key(r["backend"], r["dims"], r["dtype"], r["static"])), []).append(entry)
    rng = np.random.default_rng()
    winners = {}
    for (kernel, bkey), entries in sorted(groups.items()):
        spec = get_kernel(kernel)
        r0 = entries[0].record
        # Checked on the example inputs (paged kernels: random lengths, partial last pages)
        # and on the timing inputs (the bucket's most work, every context full), timed on
        # the latter: the case the winner must serve.
        checks = []
        for timing in (False, True) if spec.timing_inputs else (False,):
            inputs, host_args = entry_arguments(spec, r0, rng, timing=timing)
            checks.append(([jax.device_put(a) for a in host_args], reference_outputs(spec, r0, inputs)))
        timed_kind = bool(spec.timing_inputs)
        arg_sets = _timing_sets(checks[-1][0], lambda: entry_arguments(spec, r0, rng, timing=timed_kind)[1])
        ready = []          # (entry, fn, calls per sample) of the candidates that run right
        for entry in entries:
            # The portable tier, jitted: the program a server's jitted step inlines. The
            # compiled tier's eager call adds host work that, for calls of tens of us,
            # outlasts the kernels and hides the differences between candidates.
            fn = entry.portable()
            if fn is None:
                fn = entry.compiled()
                if fn is None:
                    continue
                echo(f"  note {entry.record['config']}: no portable tier, timed through the compiled tier's eager call")
            try:
                errs = [all_close(jax.block_until_ready(fn(*a)), want, r0["dtype"]) for a, want in checks]
                if not all(ok for ok, _ in errs):
                    worst = max(err for _, err in errs)
                    echo(f"  reject {entry.record['config']}: wrong result (err/tol {worst:.2f})")
                    continue
                for i in range(warmup):
                    jax.block_until_ready(fn(*arg_sets[i % len(arg_sets)]))
                # Back-to-back calls, one sync per sample: the time a serving loop sees.
                # Each sample also pays a fixed launch + sync latency (~0.5 ms measured on
                # an H100 through jax), so a sample must last ~20 ms for that to stay
                # under a few percent; the per-call time that sizes it comes from 10 calls
                # (sizing on one call, 2 ms samples, read a 184 us MLA decode as 300+ us).
                dt = _sample(fn, arg_sets, 10)
                ready.append((entry, fn, max(1, min(500, int(20e-3 / max(dt, 1e-6))))))
            except Exception as e:  # a candidate that fails to run is dropped, not fatal
                echo(f"  reject {entry.record['config']}: {type(e).__name__}: {e}")
        # Samples are taken round-robin over the candidates (each round starting one further
        # along), so that clock and thermal drift during the bucket's measurement weighs on
        # every candidate alike instead of favouring whichever ran first or last.
        samples: list[list | None] = [[] for _ in ready]      # None: dropped after a failure
        for rnd in range(iters):
            for k in range(len(ready)):
                i = (rnd + k) % len(ready)
                entry, fn, reps = ready[i]
                if samples[i] is None:
                    continue
                try:
                    samples[i].append(_sample(fn, arg_sets, reps))
                except Exception as e:  # a candidate that fails to run is dropped, not fatal
                    echo(f"  reject {entry.record['config']}: {type(e).__name__}: {e}")
                    samples[i] = None
        timings = []
        for i, (entry, _, _) in enumerate(ready):
            if samples[i]:
                timings.append((float(np.median(samples[i])) * 1e6, entry.record["config"]))
                echo(f"  {timings[-1][0]:10.1f} us  {_brief(entry.record['config'])}")
        if not timings:
            echo(f"{bkey}: no candidate ran")
            continue
        best_us, best_cfg = min(timings, key=lambda t: t[0])
        winners[bkey] = {"kernel": kernel, "config": best_cfg, "measured_us": round(best_us, 2),
                         "candidates": len(timings), "record": r0}
        echo(f"{bkey}: best {best_cfg} {best_us:.1f} us of {len(timings)}")
    return {"device_kind": bundle.device.device_kind, "winners": winners}


def _timing_sets(first: list, make) -> list:
    """`first` and more argument sets from make() (on the device), enough that calls in a
    row touch ROTATE_BYTES of distinct inputs, but at most MAX_TIMING_SETS: with one set, a
    bucket whose inputs fit in L2 would be timed from L2, which serving does not see (sets
    under ROTATE_BYTES / MAX_TIMING_SETS each still rotate within a smaller span)."""
    import math
    import jax
    size = max(1, sum(getattr(a, "nbytes", 0) for a in first))
    sets = [first]
    while len(sets) < min(MAX_TIMING_SETS, math.ceil(ROTATE_BYTES / size)):
        sets.append([jax.device_put(a) for a in make()])
    return sets


def _sample(fn, arg_sets, reps: int) -> float:
    """Seconds per call of `reps` back-to-back calls (cycling through arg_sets) with one
    sync at the end."""
    import time
    import jax
    t0 = time.perf_counter()
    for i in range(reps):
        out = fn(*arg_sets[i % len(arg_sets)])
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps


def _brief(config: dict) -> str:
    """The fields of a config that candidates vary (not the backward's, not the target's)."""
    return " ".join(f"{k}={v}" for k, v in sorted(config.items())
                    if k != "compute_capability" and not k.startswith(("bwd_", "dq_")))


def write_tuned(result: dict, target: Target, echo=print) -> list[Path]:
    """Merges winners into kernels/<kernel>/tuned/<target>.json, one file per kernel."""
    import time
    from .spec.registry import get_kernel
    by_kernel: dict = {}
    for bkey, w in result["winners"].items():
        by_kernel.setdefault(w["kernel"], {})[bkey] = w
    written = []
    for kernel, winners in by_kernel.items():
        spec = get_kernel(kernel)
        path = tuned.tuned_path(spec, target)
        rec0 = next(iter(winners.values()))["record"]
        if rec0["source_hash"] != spec.source_hash(rec0["backend"]):
            echo(f"{kernel}: candidates were built from another kernel source; not writing")
            continue
        db = tuned._read(path) if path.exists() else {}
        if db.get("source_hash") != rec0["source_hash"] or db.get("toolchain") != rec0["toolchain"]:
            db = {}
        db.update({"target": target.name, "device_kind": result["device_kind"], "source_hash": rec0["source_hash"],
                   "toolchain": rec0["toolchain"], "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        entries = db.setdefault("entries", {})
        for bkey, w in winners.items():
            entries[bkey] = {"config": w["config"], "measured_us": w["measured_us"], "candidates": w["candidates"]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(db, indent=1, sort_keys=True) + "\n")
        tuned._read.cache_clear()
        written.append(path)
    return written

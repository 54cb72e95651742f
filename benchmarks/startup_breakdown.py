"""Where `ejaot.load` + first call spends its time, phase by phase, in fresh processes.

    python -m benchmarks.startup_breakdown --store artifacts/cpu [--kernel K,...] [--limit N] [--runs 3]

For each chosen entry (the smallest N per kernel) and each run, a fresh process (bytecode
cache on, backend started, inputs on the device) times, in order:
  load      ejaot.load(store)                       index read, checksum, section table
  records   the kernel's section decoded and checked (source hash, compatibility)
  read      the executable's blob read and its sha256 checked
  decode    PJRT deserializes the executable (codec.decode)
  first     bundle.call on the now-ready entry: plan, dispatch, first execution, block
  second    the same call again (the steady run)
The phases add up to what `benchmarks.startup` reports as "ejaot first". Prints one line
per run and the per-entry medians; --json writes them.

With --after-kernel K, each process first loads the store and runs the smallest entry of
kernel K (untimed; the next smallest when that one is being timed), then times the chosen
entry's phases: the marginal cost of one more
entry in a server that has already started (the load phase is then 0: the bundle is
shared). Comparing the two runs separates what a process pays once (backend and runtime
initialization inside the first deserialization or execution) from what each entry pays.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks.startup import REPO, _env, entry_inputs, first_per_kernel

PHASES = ("load", "records", "read", "decode", "first", "second")


def child(store: str, key: str, prior: str | None = None) -> dict:
    import jax
    import ejaot
    import ejaot.runtime.bundle  # noqa: F401
    from ejaot.artifact import codec
    record, spec, arrays = entry_inputs(store, key)
    clock = time.perf_counter
    if prior:          # a server that already runs another entry: only the marginal cost
        bundle = ejaot.load(store, miss_log=False)
        p_record, p_spec, p_arrays = entry_inputs(store, prior)
        jax.block_until_ready(bundle.call(p_spec.name, *p_arrays, **p_record["static"]))
        t = [clock()] * 2
    else:
        t = [clock()]
        bundle = ejaot.load(store, miss_log=False)
        t.append(clock())
    bundle.catalog.ensure_kernel(spec.name)
    t.append(clock())
    entry = bundle.catalog.accepted[key]
    raw = entry._payload("executable")
    t.append(clock())
    entry._compiled = codec.decode(raw, record["executable"], bundle.device)
    t.append(clock())
    for _ in range(2):
        jax.block_until_ready(bundle.call(spec.name, *arrays, **record["static"]))
        t.append(clock())
    out = {p: (b - a) * 1e3 for p, a, b in zip(PHASES, t, t[1:])}
    out["tiers"] = bundle.stats()["tiers"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="artifacts/cpu")
    ap.add_argument("--kernel", default="", help="only entries of these kernels (comma-separated)")
    ap.add_argument("--limit", type=int, default=1, help="entries per kernel (smallest first)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per entry")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--after-kernel", default="",
                    help="first run the smallest entry of this kernel in the same process (marginal cost)")
    ap.add_argument("--child")
    ap.add_argument("--prior", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.store, args.child, args.prior)))
        return
    from ejaot.spec.registry import get_kernel
    from ejaot.store.filestore import FileStore
    entries = FileStore(args.store).read_index()["entries"]
    wanted = [k for k in args.kernel.split(",") if k]
    # entries with a compiled tier, smallest first
    compiled = [k for k in sorted(entries, key=lambda k: (get_kernel(entries[k]["kernel"]).footprint(entries[k]["dims"]),
                                                          entries[k]["dtype"], k))
                if "executable" in entries[k]["payloads"]]
    chosen = first_per_kernel([k for k in compiled if not wanted or entries[k]["kernel"] in wanted],
                              entries, args.limit)
    prior = []
    if args.after_kernel:
        prior = [k for k in compiled if entries[k]["kernel"] == args.after_kernel][:2]
        if not prior or (len(prior) < 2 and prior[0] in chosen):
            raise SystemExit(f"--after-kernel {args.after_kernel}: no entry with a compiled tier in {args.store} "
                             "other than the ones timed")
    results = []
    for key in chosen:
        r = entries[key]
        label = f"{r['kernel']} {r['dtype']} " + " ".join(f"{k}={v}" for k, v in r["dims"].items())
        runs = []
        for _ in range(args.runs):
            cmd = [sys.executable, "-m", "benchmarks.startup_breakdown", "--store", args.store, "--child", key]
            before = [k for k in prior if k != key][:1]       # never the entry being timed
            p = subprocess.run(cmd + (["--prior", before[0]] if before else []),
                               capture_output=True, text=True, cwd=REPO, env=_env())
            if p.returncode != 0:
                raise SystemExit(f"{label}: child failed:\n{p.stderr[-3000:]}")
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(label + ": " + ", ".join(f"{ph} {runs[-1][ph]:.2f}" for ph in PHASES) + " ms", flush=True)
        med = {ph: statistics.median(x[ph] for x in runs) for ph in PHASES}
        med["total"] = sum(med[ph] for ph in PHASES[:5])
        results.append({"key": key, "entry": label, "median_ms": med, "runs": runs})
        print(f"  median: " + ", ".join(f"{ph} {med[ph]:.2f}" for ph in (*PHASES, "total")) + " ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

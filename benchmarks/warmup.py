"""Loading a whole store before serving: eager warm-up on 1..N threads, a first call made
while a background warm-up runs, and the same kernels' entries made ready by JAX's warm
persistent compilation cache.

    python -m benchmarks.warmup --store DIR [--threads 1,2,4,8,16] [--runs 3] [--kernel K]
                                [--vs-cache K1,K2]

Each figure is a fresh process (backend started and ejaot imported before the clock, as
any jax server would have them):
  eager T     ejaot.load(store) + bundle.warmup(threads=T): every entry's bytes verified
              and its compiled tier deserialized (portable tier where it has none)
  lazy first  ejaot.load(store) + the first call of one entry (the smallest of --kernel)
  bg first    ejaot.load(store, eager="background") + the same first call, made while the
              warm-up thread deserializes the rest of the store
  bg all      ... + wait_warm(): the whole store ready
  --vs-cache K1,K2: every stored entry of those kernels made ready two ways, each in a
  fresh process: `cache`, jax.jit(exported.call).lower(...).compile() of each entry's
  portable module one after the other with JAX's persistent cache warm (filled by an
  earlier process), as a server compiling its buckets at start-up would; `ejaot`,
  ejaot.load + bundle.warmup(kernels=...) (verify + deserialize, default threads, and
  one thread). Neither runs the kernels.
Prints minimum and median over --runs per row; --json writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.startup import REPO, _env, entry_inputs


def child(store: str, mode: str, threads: int, key: str | None, kernels: str = "",
          cache_dir: str | None = None) -> dict:
    import jax
    import ejaot
    import ejaot.runtime.bundle  # noqa: F401
    jax.devices()
    if mode in ("cache", "cache-fill"):
        return compile_with_cache(store, kernels.split(","), cache_dir)
    arrays = None
    if key:
        record, spec, arrays = entry_inputs(store, key)
    clock = time.perf_counter
    t0 = clock()
    if mode == "eager":
        bundle = ejaot.load(store, miss_log=False)
        tiers = bundle.warmup(threads=threads or None, kernels=kernels.split(",") if kernels else None)
        return {"s": clock() - t0, "tiers": tiers}
    bundle = ejaot.load(store, miss_log=False, eager="background" if mode == "bg" else False)
    jax.block_until_ready(bundle.call(spec.name, *arrays, **record["static"]))
    first = clock() - t0
    out = {"s": first, "calls": bundle.stats()["calls"]}
    if mode == "bg":
        bundle.wait_warm()
        out["all_s"] = clock() - t0
    return out


def compile_with_cache(store: str, kernels: list, cache_dir: str) -> dict:
    import jax
    from ejaot.store.filestore import FileStore
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    fs = FileStore(store)
    records = [r for r in fs.read_index()["entries"].values() if r["kernel"] in kernels]
    blobs = [fs.read_blob(r["payloads"]["exported"]["sha256"], r["payloads"]["exported"]["size"])
             for r in records]            # read before the clock: ejaot's own reads are timed
    t0 = time.perf_counter()
    for raw in blobs:
        exported = jax.export.deserialize(bytearray(raw))
        jax.jit(exported.call).lower(*exported.in_avals).compile()
    return {"s": time.perf_counter() - t0, "entries": len(blobs)}


def run(store: str, mode: str, threads: int = 0, key: str | None = None, kernels: str = "",
        cache_dir: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.warmup", "--child", mode, "--store", store,
           "--threads", str(threads), "--kernels", kernels] + (["--key", key] if key else []) + (
           ["--cache-dir", cache_dir] if cache_dir else [])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def smallest_entry(store: str, kernel: str) -> str:
    from ejaot.store.filestore import FileStore
    entries = FileStore(store).read_index()["entries"]
    keys = [k for k, r in entries.items() if r["kernel"] == kernel and "executable" in r["payloads"]]
    if not keys:
        sys.exit(f"no entry of {kernel!r} with a compiled tier in {store} (finalize it first)")
    return min(keys, key=lambda k: sum(entries[k]["dims"].values()))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--threads", default="1,2,4,8,16", help="warm-up pool sizes to time (comma-separated)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--kernel", default="flash_attention", help="kernel whose smallest entry is called first")
    p.add_argument("--vs-cache", default="", help="kernels (comma-separated) to time against the warm "
                                                      "persistent cache")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--kernels", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.store, a.child, int(a.threads), a.key, a.kernels, a.cache_dir)))
        return
    rows = []

    def timed(label, mode, threads=0, key=None, kernels="", cache_dir=None):
        res = [run(a.store, mode, threads, key, kernels, cache_dir) for _ in range(a.runs)]
        secs = [r["s"] for r in res]
        row = {"row": label, "min_ms": 1e3 * min(secs), "median_ms": 1e3 * statistics.median(secs),
               "detail": res[0].get("tiers") or res[0].get("calls") or {"entries": res[0].get("entries")}}
        if "all_s" in res[0]:
            row["all_median_ms"] = 1e3 * statistics.median(r["all_s"] for r in res)
        rows.append(row)
        extra = f", whole store ready {row['all_median_ms']:.1f} ms" if "all_median_ms" in row else ""
        print(f"{label:<22} min {row['min_ms']:8.1f} ms  median {row['median_ms']:8.1f} ms  {row['detail']}{extra}",
              flush=True)

    print(f"store {a.store}, {os.cpu_count()} cores, {a.runs} fresh processes per row")
    for t in (int(x) for x in a.threads.split(",")):
        timed(f"eager, {t} thread{'s' if t > 1 else ''}", "eager", t)
    key = smallest_entry(a.store, a.kernel)
    timed(f"lazy first ({a.kernel})", "lazy", key=key)
    timed(f"bg first ({a.kernel})", "bg", key=key)
    if a.vs_cache:
        import tempfile
        with tempfile.TemporaryDirectory() as cache_dir:
            filled = run(a.store, "cache-fill", kernels=a.vs_cache, cache_dir=cache_dir)
            print(f"cache filled: {filled['entries']} entries compiled in {filled['s']:.1f} s")
            timed(f"cache ({a.vs_cache})", "cache", kernels=a.vs_cache, cache_dir=cache_dir)
        timed(f"ejaot ({a.vs_cache})", "eager", kernels=a.vs_cache)
        timed(f"ejaot 1 thread ({a.vs_cache})", "eager", 1, kernels=a.vs_cache)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "store": a.store,
                       "cores": os.cpu_count(), "kernel": a.kernel, "key": key, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

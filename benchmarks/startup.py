"""Start-up and dispatch benchmarks for the cpu target (`make bench`).

For every entry of a store, in fresh processes: time to first result for
  jit       the kernel's public function, traced and compiled on first call
  portable  the entry's jax.export module compiled on first call (what a server pays
            without the compiled tier; on a GPU host without jax-triton this is the
            closest thing to JIT: it skips tracing and Triton's own compile)
  cache     `jit` (or `portable` with --base portable) with JAX's persistent compilation
            cache warm (min compile time 0)
  ejaot     ejaot.load(store) + bundle.call
and the steady-state run time of the kernel (the same call repeated), so the start-up
overhead (first result minus steady run) is reported beside the raw figure. Also: the
per-call dispatch cost of bundle.call against calling the deserialized executable
directly, lazy vs eager load of the whole store, and a no-op rebuild of the manifest.

Results: <out>/startup.json and <out>/startup.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(mode: str, store: str, key: str, cache_dir: str | None) -> dict:
    t_import0 = time.perf_counter()
    import numpy as np
    import jax
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import ejaot
    import ejaot.runtime.bundle  # noqa: F401  (library import, timed with jax's as import_s)
    from ejaot.spec.registry import get_kernel
    from ejaot.store.filestore import FileStore
    import_s = time.perf_counter() - t_import0
    record, spec, arrays = entry_inputs(store, key)
    static = {k: v for k, v in record["static"].items()}
    if mode == "ejaot":
        t0 = time.perf_counter()
        bundle = ejaot.load(store, miss_log=False)
        call = lambda: bundle.call(spec.name, *arrays, **static)
    elif mode in ("portable", "cache-portable"):
        ref = record["payloads"]["exported"]
        raw = FileStore(store).read_blob(ref["sha256"], ref["size"])
        valid = jax.device_put(np.array([record["dims"][d] for d in spec.valid_length_dims], np.int32))
        t0 = time.perf_counter()
        fn = jax.jit(jax.export.deserialize(bytearray(raw)).call)
        call = lambda: fn(*arrays, valid)
    else:
        import importlib
        public = getattr(importlib.import_module(spec.package), spec.name)
        t0 = time.perf_counter()
        call = lambda: public(*arrays, **static)
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(call())
        runs.append(time.perf_counter() - t)
    out = {"mode": mode, "first_s": first, "steady_s": min(runs), "import_s": import_s}
    if mode == "ejaot":
        out["stats"] = bundle.stats()["calls"]
        out["tiers"] = bundle.stats()["tiers"]
    return out


def first_per_kernel(keys, entries: dict, limit: int) -> list:
    """The first `limit` of `keys` (in their order) of each kernel."""
    seen: dict = {}
    out = []
    for k in keys:
        kernel = entries[k]["kernel"]
        seen[kernel] = seen.get(kernel, 0) + 1
        if seen[kernel] <= limit:
            out.append(k)
    return out


def entry_inputs(store: str, key: str):
    """(record, kernel spec, fresh random inputs on the device) of one stored entry."""
    import numpy as np
    import jax
    from ejaot.spec.registry import get_kernel
    from ejaot.store.filestore import FileStore
    record = FileStore(store).read_index()["entries"][key]
    spec = get_kernel(record["kernel"])
    inputs = spec.make_inputs(record["dims"], record["dtype"], tuple(record["present"]), record["static"],
                              np.random.default_rng(0))
    arrays = [jax.device_put(inputs[a.name]) for a in spec.inputs if not a.optional or a.name in record["present"]]
    jax.block_until_ready(arrays)
    return record, spec, arrays


def run_child(mode, store, key, cache_dir=None) -> dict:
    mode = {"cache": "cache-jit"}.get(mode, mode)
    cmd = [sys.executable, "-m", "benchmarks.startup", "--child", mode, "--store", store, "--key", key]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    env = _env()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{mode} {key[:12]} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _env() -> dict:
    """Children run as a server would: with Python's bytecode cache (this workplace sets
    PYTHONDONTWRITEBYTECODE, which would make every process recompile ejaot's sources)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def dispatch_cost(n: int = 20000) -> dict:
    """bundle.call vs the deserialized executable, on a tiny bucket so the kernel's own
    run time is small; both loops dispatch asynchronously and block once at the end."""
    import numpy as np
    import jax
    import ejaot
    from ejaot.build.builder import build
    manifest = """format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
[kernel.dims]
batch = 1
seq = [8, 16]
q_heads = 2
kv_heads = 1
head_dim = 8
[kernel.static]
causal = true
"""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.toml").write_text(manifest)
        build(Path(d) / "m.toml", "cpu", Path(d) / "s", jobs=1)
        bundle = ejaot.load(Path(d) / "s", miss_log=False)
        rng = np.random.default_rng(0)
        arrays = [jax.device_put(rng.standard_normal(s).astype(np.float32))
                  for s in ((1, 16, 2, 8), (1, 16, 1, 8), (1, 16, 1, 8))]
        padded = [a[:, :12] for a in arrays]
        entry = next(e for e in bundle.entries.values() if e.record["dims"]["seq"] == 16)
        exe = entry.compiled()
        valid = jax.device_put(np.array([16, 16], np.int32))

        def per_call(fn, reps):
            best = float("inf")
            for _ in range(5):
                jax.block_until_ready(fn())
                t = time.perf_counter()
                for _ in range(reps):
                    r = fn()
                jax.block_until_ready(r)
                best = min(best, (time.perf_counter() - t) / reps)
            return best * 1e6
        direct = per_call(lambda: exe(*arrays, valid), n)
        via = per_call(lambda: bundle.call("attention", *arrays, causal=True), n)
        pad = per_call(lambda: bundle.call("attention", *padded, causal=True), n // 10)
        pad_kernel = per_call(lambda: exe(*[jax.numpy.pad(a, [(0, 0), (0, 4), (0, 0), (0, 0)]) for a in padded], valid), n // 10)
    return {"direct_us": direct, "bundle_exact_us": via, "overhead_exact_us": via - direct,
            "bundle_padded_us": pad, "pad_and_call_direct_us": pad_kernel}


def load_times(store: str) -> dict:
    # the backend is started and ejaot's modules imported before the clock starts: both are
    # paid by any jax server, with or without ejaot
    code = ("import time,sys; import jax, ejaot, ejaot.runtime.bundle; jax.devices(); t=time.perf_counter();"
            " b=ejaot.load(sys.argv[1], miss_log=False); {warm} dt=time.perf_counter()-t; print(dt, len(b.entries))")
    # lazy: records only; eager: verify + deserialize every entry, on one thread and on
    # warmup()'s default pool (as ejaot.load(eager=True) does)
    modes = {"lazy": "", "eager_1_thread": "b.warmup(threads=1);", "eager": "b.warmup();"}
    out = {}
    for name, warm in modes.items():
        vals = []
        for _ in range(3):
            r = subprocess.run([sys.executable, "-c", code.format(warm=warm), store], capture_output=True,
                               text=True, cwd=REPO, check=True, env=_env())
            secs, n = r.stdout.split()[:2]
            vals.append(float(secs))
            out["entries"] = int(n)
        out[name] = min(vals)
    out["threads"] = min(4, os.cpu_count() or 1)
    return out


def noop_rebuild(manifest: str, store: str) -> float:
    exe = str(Path(sys.executable).parent / "ejaot")
    subprocess.run([exe, "build", "--manifest", manifest, "--out", store, "--quiet"], check=True,
                   capture_output=True, cwd=REPO)
    vals = []
    for _ in range(3):
        t = time.perf_counter()
        r = subprocess.run([exe, "build", "--manifest", manifest, "--out", store, "--quiet"], check=True, env=_env(),
                           capture_output=True, text=True, cwd=REPO)
        vals.append(time.perf_counter() - t)
        assert " 0 built" in r.stdout, r.stdout
    return min(vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default="manifests/default.toml")
    ap.add_argument("--store", default="artifacts/cpu")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--limit", type=int, default=None, help="only the first N entries of each kernel (smallest first)")
    ap.add_argument("--base", choices=("jit", "portable"), default="jit",
                    help="what the `jit` and `cache` columns compile: the public function, or the "
                         "entry's portable module (GPU hosts without jax-triton)")
    ap.add_argument("--platform", default="cpu", help="entries of this platform (cpu, cuda)")
    ap.add_argument("--skip-rebuild", action="store_true", help="do not build or time a no-op rebuild")
    ap.add_argument("--max-footprint", type=float, default=2 ** 22,
                    help="skip entries whose largest reference intermediate has more elements "
                         "(their run time, not start-up, dominates; listed as skipped)")
    ap.add_argument("--kernel", default="", help="only entries of these kernels (comma-separated)")
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown of a results file")
    ap.add_argument("--child")
    ap.add_argument("--key")
    ap.add_argument("--cache-dir")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.store, args.key, args.cache_dir)))
        return
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return
    os.chdir(REPO)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "ejaot", "kernels", "benchmarks"], env=_env(),
                   stdout=subprocess.DEVNULL, check=False)
    rebuild_s = None if args.skip_rebuild else noop_rebuild(args.manifest, args.store)
    from ejaot.store.filestore import FileStore
    from ejaot.spec.registry import get_kernel
    entries = FileStore(args.store).read_index()["entries"]
    keys = sorted((k for k, r in entries.items() if r["platform"] == args.platform
                   and (not args.kernel or r["kernel"] in args.kernel.split(","))),
                  key=lambda k: (get_kernel(entries[k]["kernel"]).footprint(entries[k]["dims"]), entries[k]["dtype"]))
    over = [k for k in keys if get_kernel(entries[k]["kernel"]).footprint(entries[k]["dims"]) > args.max_footprint]
    keys = [k for k in keys if k not in over]
    if args.limit:
        keys = first_per_kernel(keys, entries, args.limit)
    rows = []
    for key in keys:
        r = entries[key]
        with tempfile.TemporaryDirectory() as cache:
            run_child(f"cache-{args.base}", args.store, key, cache)       # populate the cache
            if args.base == "portable":
                run_child("cache-portable", args.store, key, cache)
            res = {m: run_child({"jit": args.base, "cache": f"cache-{args.base}"}.get(m, m), args.store, key,
                                cache if m == "cache" else None)
                   for m in ("jit", "cache", "ejaot")}
        row = {"key": key, "kernel": r["kernel"], "dtype": r["dtype"], "dims": r["dims"], **{
            f"{m}_{f}": res[m][f] for m in res for f in ("first_s", "steady_s")}, "ejaot_tiers": res["ejaot"]["tiers"]}
        for m in ("jit", "cache", "ejaot"):
            row[f"{m}_overhead_s"] = max(res[m]["first_s"] - res[m]["steady_s"], 0.0)
        rows.append(row)
        print(f"{r['kernel']} {r['dtype']} b={r['dims'].get('batch')} s={r['dims'].get('seq')}: "
              f"jit {row['jit_first_s']*1e3:.1f} ms, cache {row['cache_first_s']*1e3:.1f} ms, "
              f"ejaot {row['ejaot_first_s']*1e3:.1f} ms (steady run {row['ejaot_steady_s']*1e3:.1f} ms)", flush=True)
    dispatch = dispatch_cost() if args.platform == "cpu" else None
    loads = load_times(args.store)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
              "cpu": _cpu_name(), "device": _device_name(), "base": args.base, "cores": os.cpu_count(), "store": args.store, "rows": rows,
              "dispatch": dispatch, "load": loads, "noop_rebuild_s": rebuild_s, "entries_in_store": len(entries),
              "skipped_over_footprint": len(over), "max_footprint": args.max_footprint}
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "startup.json").write_text(json.dumps(result, indent=1))
    (out / "startup.md").write_text(markdown(result))
    print(markdown(result))


def _device_name() -> str:
    import jax
    return jax.local_devices()[0].device_kind


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(res: dict) -> str:
    rows = res["rows"]
    jit = "JIT" if res.get("base", "jit") == "jit" else "portable compile"
    lines = [f"Measured {res['date']} on {res['device']} (host CPU {res['cpu']}, {res['cores']} cores), store "
             f"{res['store']} ({res['entries_in_store']} entries; {res['skipped_over_footprint']} with more than "
             f"{res.get('max_footprint', 0):.0f}-element intermediates not timed), each figure a fresh process.", "",
             f"| entry | {jit} first | cache first | ejaot first | steady run | {jit} / ejaot overhead | cache / ejaot overhead |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    def startup_bound(r):
        # the ratio of overheads only means something where start-up, not the kernel's own
        # run time (noisy at this scale), dominates the first result
        return r["ejaot_steady_s"] < 0.25 * r["jit_first_s"] and r["ejaot_overhead_s"] > 1e-3
    for r in rows:
        d = r["dims"]
        shape = " ".join(f"{k}={v}" for k, v in d.items() if k in ("batch", "seq", "kv_seq", "num_seqs", "max_blocks"))
        name = f"{r['kernel']} {r['dtype']} {shape}"
        ov = r["ejaot_overhead_s"]
        ratios = (f"{r['jit_overhead_s']/ov:.0f}x | {r['cache_overhead_s']/ov:.0f}x" if startup_bound(r)
                  else "run-time bound | run-time bound")
        lines.append(f"| {name} | {r['jit_first_s']*1e3:.1f} ms | {r['cache_first_s']*1e3:.1f} ms | "
                     f"{r['ejaot_first_s']*1e3:.1f} ms | {r['ejaot_steady_s']*1e3:.1f} ms | {ratios} |")
    bound = [r for r in rows if startup_bound(r)]
    ratios_jit = [r["jit_overhead_s"] / r["ejaot_overhead_s"] for r in bound]
    ratios_cache = [r["cache_overhead_s"] / r["ejaot_overhead_s"] for r in bound]
    if bound:
        lines += ["", f"Start-up overhead (first result minus steady run) over the {len(bound)} start-up-bound "
                      f"entries, ejaot vs {jit}: median {statistics.median(ratios_jit):.0f}x, min {min(ratios_jit):.0f}x; "
                      f"vs warm persistent cache: median {statistics.median(ratios_cache):.0f}x, "
                      f"min {min(ratios_cache):.0f}x. Raw first-result ratios, same entries: vs {jit} median "
                      f"{statistics.median([r['jit_first_s'] / r['ejaot_first_s'] for r in bound]):.0f}x, vs cache median "
                      f"{statistics.median([r['cache_first_s'] / r['ejaot_first_s'] for r in bound]):.1f}x."]
    d = res["dispatch"]
    if d:
        lines += ["", f"Dispatch (tiny bucket, per call): executable direct {d['direct_us']:.1f} us, "
                      f"bundle.call exact {d['bundle_exact_us']:.1f} us (overhead {d['overhead_exact_us']:.1f} us); "
                      f"padded {d['bundle_padded_us']:.1f} us vs pad + direct call {d['pad_and_call_direct_us']:.1f} us."]
    ld = res["load"]
    lines += [f"ejaot.load of the whole store ({ld.get('entries', '?')} entries accepted on this host): "
              f"lazy {ld['lazy']*1e3:.1f} ms; "
              f"eager (verify + deserialize every entry) {ld['eager_1_thread']*1e3:.1f} ms on one thread, "
              f"{ld['eager']*1e3:.1f} ms on {ld['threads']} (the default)."]
    if res["noop_rebuild_s"] is not None:
        lines += [f"No-op rebuild of the manifest (whole `ejaot build` process): {res['noop_rebuild_s']:.2f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

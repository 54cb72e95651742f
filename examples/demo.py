"""`make demo`: a model served from an ejaot store, end to end, with its start-up measured.

    python examples/demo.py [--model llama] [--config small] [--target cpu] [--store DIR]

1. Builds the model's manifest for the target if the store lacks entries (incremental).
2. Writes the model's random weights to a checkpoint (untimed), then starts one fresh
   process per start-up mode and measures `ready_s`, the seconds from the process's start
   (Python, jax and the weights loaded included) until every prefill and decode bucket of
   the model can run without a compile (`buckets_s`: the part after the weights are on
   the device):
     jit         no store: JAX traces and compiles every step, kernels included;
     warm_cache  the same with JAX's persistent compilation cache filled by an earlier
                 process (that filling process is not timed);
     ejaot       ejaot.use(store): the steps are traced with the stored kernels inlined
                 (the kernels' own lowering is skipped; the step is still compiled);
     steps       the model's whole prefill and decode steps from the store's compiled
                 tier (examples/<model>/steps.py): nothing is traced or compiled.
   Each process then serves the same requests (continuous batching) and reports decode
   tokens/s; the steps process also times its stored decode step against the same step
   jitted in that process, interleaved (decode_vs_jit: the ratio of steady step rates).
3. The ejaot and steps processes check greedy tokens and logits against the model's
   plain-JAX reference.
The last line printed is one JSON object: tokens_match, ready_s, tokens_per_s and the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
sys.path.insert(0, str(EXAMPLES))

MODELS = {"llama": "llama_demo", "mla": "mla_demo"}
# Requests of different lengths arriving over the first steps: (prompt tokens, new tokens)
WORKLOADS = {
    "small": ([5, 17, 40, 9, 100, 33, 64, 3, 21, 50, 12, 77],
              [12, 20, 8, 30, 10, 16, 24, 40, 5, 18, 25, 14]),
    "large": ([100, 1700, 400, 90, 1000, 330, 640, 30, 210, 500, 120, 770],
              [32, 20, 48, 30, 40, 16, 24, 40, 25, 18, 25, 64]),
}


def log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def model_package(name: str):
    import importlib
    return importlib.import_module(MODELS[name])


# -- the child: one fresh process per start-up mode -----------------------------------------
def child(args) -> dict:
    t0 = float(os.environ["EJAOT_DEMO_T0"])          # when the parent started this process
    import numpy as np
    import jax
    import ejaot
    from serving import Server, greedy_reference, make_ready, make_requests

    pkg = model_package(args.model)
    cfg, buckets = pkg.CONFIGS[args.config], pkg.BUCKETS[args.config]
    bundle = ejaot.use(args.store) if args.mode == "ejaot" else ejaot.use(None)
    model = pkg.Model(cfg)
    if args.mode == "steps":
        from serving import StoredSteps
        bundle = ejaot.load(args.store, kernel_modules=[f"{pkg.__name__}.steps"])
        model = StoredSteps(model, bundle, pkg.__name__, model=args.config)
    if args.mode == "weights":                  # untimed: the checkpoint the others load
        save_weights(pkg.init_params(cfg), args.weights)
        return {"mode": "weights"}
    params = load_weights(jax.eval_shape(lambda: pkg.init_params(cfg)), args.weights)
    t_params = time.time()
    make_ready(model, params, buckets)
    t_ready = time.time()
    out = {"mode": args.mode, "ready_s": round(t_ready - t0, 3),
           "buckets_s": round(t_ready - t_params, 3), "device": jax.devices()[0].device_kind}

    lengths, new = WORKLOADS[args.workload]
    requests = make_requests(cfg.vocab, lengths, new)
    server = Server(model, params, buckets)
    tokens = server.run(requests)
    out["tokens_per_s"] = round(server.decode_tokens / server.decode_seconds, 1)
    if args.mode == "steps":
        from serving import decode_rate
        jitted = pkg.Model(cfg)
        rates = {"steps": [], "jit": []}
        for _ in range(3):                    # interleaved: the machine's noise hits both
            rates["steps"].append(decode_rate(model, params, buckets))
            rates["jit"].append(decode_rate(jitted, params, buckets))
        out["decode_steps_per_s"] = {k: round(max(v), 1) for k, v in rates.items()}
        out["decode_vs_jit"] = round(max(rates["steps"]) / max(rates["jit"]), 3)
        if jax.devices()[0].platform != "cpu":
            out["device_rates"] = device_rates()
    if bundle is not None:
        st = bundle.stats()
        out["store_calls"] = st["calls"]
        out["store_tiers"] = st["tiers"]
        out["rejected"] = len(st["rejected"])
        out["rejected_reasons"] = sorted({r["reason"] for r in st["rejected"]})[:3]
    if args.check:
        from serving import divergence
        mismatched = {}
        for r in requests:
            want = greedy_reference(model.forward_reference, params, r.prompt, r.max_new_tokens)
            if want != tokens[r.rid]:
                mismatched[r.rid] = divergence(model.forward_reference, params, r.prompt, tokens[r.rid], want)
        out["tokens_match"] = not mismatched
        out["tokens_checked"] = sum(len(t) for t in tokens.values())
        out["mismatched_requests"] = mismatched
        from serving import teacher_forced
        tie = 2e-2 if "16" in str(jax.tree_util.tree_leaves(params)[0].dtype) else 1e-4
        counts = {"agree": 0, "near_tie": 0, "disagree": 0}
        for r in requests:
            for k, v in teacher_forced(model.forward_reference, params, r.prompt, tokens[r.rid], tie).items():
                counts[k] += v
        out["teacher_forced"] = {**counts, "tie_tolerance": tie}
        out["max_logit_error"] = logit_error(model, params, buckets, requests[:4])
    return out


def save_weights(params, path) -> None:
    """The parameter tree as raw bytes per leaf (bfloat16 included), in one .npz."""
    import jax
    import numpy as np
    leaves = jax.tree_util.tree_leaves(params)
    np.savez(path, **{f"leaf{i}": np.asarray(x).view(np.uint8).reshape(-1) for i, x in enumerate(leaves)})


def load_weights(shapes, path):
    """What a server does first: read its checkpoint and put it on the device."""
    import jax
    import numpy as np
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    with np.load(path) as f:
        arrays = [f[f"leaf{i}"].view(a.dtype).reshape(a.shape) for i, a in enumerate(leaves)]
    return jax.block_until_ready(jax.device_put(tree.unflatten(arrays)))


def device_rates() -> dict:
    """The card's copy bandwidth (read + write) and dense bf16 matmul rate, measured here:
    the ceilings the decode rates are read against."""
    import jax
    import jax.numpy as jnp

    def best(fn, *args, reps=20):
        fn(*args).block_until_ready()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(*args).block_until_ready()
            times.append(time.perf_counter() - t0)
        return min(times)
    x = jnp.ones((1 << 28,), jnp.float32)                       # 1 GiB
    copy = jax.jit(lambda x: x * 1.0001)
    a = jnp.ones((8192, 8192), jnp.bfloat16)
    mm = jax.jit(lambda a: a @ a)
    return {"copy_gb_per_s": round(2 * x.nbytes / best(copy, x) / 1e9, 1),
            "bf16_matmul_tflops": round(2 * 8192 ** 3 / best(mm, a) / 1e12, 1)}


def logit_error(model, params, buckets, requests) -> float:
    """Largest |served - reference| over the prefill logits of `requests` and the decode
    logits of their next token, relative to the reference logits' largest magnitude."""
    import numpy as np
    from serving import PagePool
    pool, cache = PagePool(buckets.total_pages), model.init_cache(buckets)
    worst = 0.0
    for r in requests:
        n = len(r.prompt)
        pages = pool.take(-(-(n + 1) // buckets.page_size))
        table = np.zeros((1, buckets.max_blocks), np.int32)
        table[0, :len(pages)] = pages
        s = min(x for x in buckets.prefill_seq if x >= n)
        tokens = np.zeros((1, s), np.int32)
        tokens[0, :n] = r.prompt
        logits, cache = model.prefill(params, cache, tokens, np.array([n], np.int32), table)
        nxt = int(np.asarray(logits)[0].argmax())
        slots = buckets.decode_slots[0]
        d_tables = np.zeros((slots, buckets.max_blocks), np.int32)
        d_tables[0] = table[0]
        positions = np.full(slots, -1, np.int32)
        positions[0] = n
        d_tokens = np.zeros(slots, np.int32)
        d_tokens[0] = nxt
        d_logits, cache = model.decode(params, cache, d_tokens, positions, d_tables)
        ref = np.asarray(model.forward_reference(params, np.array([r.prompt + [nxt]], np.int32)))[0]
        scale = np.abs(ref).max()
        worst = max(worst, np.abs(np.asarray(logits)[0] - ref[n - 1]).max() / scale,
                    np.abs(np.asarray(d_logits)[0] - ref[n]).max() / scale)
    return float(worst)


# -- the parent ------------------------------------------------------------------------------
def build_store(args) -> None:
    pkg = model_package(args.model)
    manifest = pkg.manifest_path(args.config)
    log(f"building {manifest.relative_to(REPO)} for {args.target} into {args.store} (incremental)")
    cmd = [sys.executable, "-m", "ejaot.cli", "build", "--manifest", str(manifest),
           "--target", args.target, "--out", str(args.store)]
    subprocess.run(cmd, check=True, cwd=REPO, env=_env())


def _env(extra=None) -> dict:
    """The environment of a child: the examples importable (a model's steps are kernels
    from its own package)."""
    path = os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def run_child(args, mode: str, extra_env=None, check=False) -> dict:
    env = _env({**(extra_env or {}), "EJAOT_DEMO_T0": repr(time.time())})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--model", args.model,
           "--config", args.config, "--store", str(args.store), "--workload", args.workload,
           "--weights", str(args.weights)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"demo: the {mode} process failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama", choices=sorted(MODELS))
    ap.add_argument("--config", default="small")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--workload", default=None, choices=sorted(WORKLOADS))
    ap.add_argument("--no-build", action="store_true", help="use --store as it is")
    ap.add_argument("--modes", default="jit,warm_cache,ejaot,steps")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.workload = args.workload or ("small" if args.config == "small" else "large")
    if args.store is None:
        args.store = REPO / "artifacts" / "demo" / f"{args.model}-{args.config}-{args.target}"
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return 0

    if not args.no_build:
        build_store(args)
    modes = args.modes.split(",")
    results, ready, tps = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="ejaot-demo-") as tmp:
        cache_dir = os.path.join(tmp, "jax-cache")
        args.weights = os.path.join(tmp, "weights.npz")
        log("writing the model's weights (untimed process): every mode loads them from disk")
        run_child(args, "weights")
        for mode in modes:
            env = None
            if mode == "warm_cache":
                env = {"JAX_COMPILATION_CACHE_DIR": cache_dir,
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
                log("warm_cache: filling JAX's persistent cache (untimed process)")
                run_child(args, "jit", env)
            log(f"{mode}: fresh process, every bucket once, then the requests")
            child_mode = mode if mode in ("ejaot", "steps") else "jit"
            r = results[mode] = run_child(args, child_mode, env, check=mode in ("ejaot", "steps"))
            ready[mode], tps[mode] = r["ready_s"], r["tokens_per_s"]
            log(f"{mode}: ready in {r['ready_s']:.2f} s (buckets {r['buckets_s']:.2f} s), "
                f"{r['tokens_per_s']:.0f} decode tokens/s"
                + (f"; the store rejected {r['rejected']} entries: {r['rejected_reasons']}" if r.get("rejected") else ""))
    checked = {m: r for m, r in results.items() if "tokens_match" in r}
    e = results.get("ejaot") or next(iter(checked.values()), {})
    st = results.get("steps", {})
    summary = {
        "model": f"{args.model}/{args.config}", "target": args.target, "device": e.get("device"),
        "tokens_match": all(r["tokens_match"] for r in checked.values()) if checked else None,
        "tokens_match_by_mode": {m: r["tokens_match"] for m, r in checked.items()},
        "teacher_forced": {m: r.get("teacher_forced") for m, r in checked.items()},
        "divergences": {m: r.get("mismatched_requests") for m, r in checked.items() if r.get("mismatched_requests")},
        "max_logit_error": max((r["max_logit_error"] for r in checked.values()), default=None),
        "ready_s": ready, "buckets_s": {m: r["buckets_s"] for m, r in results.items()},
        "tokens_per_s": tps.get("steps", tps.get("ejaot")), "tokens_per_s_by_mode": tps,
        "decode_steps_per_s": st.get("decode_steps_per_s"), "decode_vs_jit": st.get("decode_vs_jit"),
        "store_calls": {m: r.get("store_calls") for m, r in checked.items()},
        "store_tiers": {m: r.get("store_tiers") for m, r in checked.items()},
        "store": str(args.store),
    }
    if "jit" in ready:
        summary["speedup_vs_jit"] = {m: round(ready["jit"] / t, 1) for m, t in ready.items() if m != "jit"}
    if "warm_cache" in ready and "steps" in ready:
        summary["steps_vs_warm_cache"] = round(ready["warm_cache"] / ready["steps"], 1)
    print(json.dumps(summary))
    return 0 if summary["tokens_match"] in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())

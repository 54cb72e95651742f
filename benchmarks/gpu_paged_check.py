#!/usr/bin/env python3
"""Numerics and speed of the Triton `page_attention` kernel (paged GQA decode) on a GPU
(H100), against the XLA backend (kernels/page_attention/xla.py).

Run on the GPU host, from anywhere (the repo is found from this file's path):

    python3 benchmarks/gpu_paged_check.py --out bench-results/paged_h100.json
    python3 benchmarks/gpu_paged_check.py --quick --out /tmp/paged_quick.json

Two ways to get the Triton kernel:
  * default (JIT): imports `ejaot_kernels.page_attention.triton_gpu`, which needs
    `jax_triton` (and a triton it works with) importable on the GPU host;
  * artifacts: `--export DIR` on a CPU build host with the CUDA extras (it lowers every
    case for --cc, default 90, through jax.export), then `--artifacts DIR` on the GPU host,
    which needs only jax with CUDA: the serialized modules carry the compiled kernels.
The XLA backend needs no triton: it is jitted on the GPU host in both modes.

Numerics: fresh random inputs per run; context lengths random, with 0, a negative one, a
full table, one past the table (clamped) and partial last pages; block tables a random
permutation of the pages, every entry the result must not depend on (past the context,
or wholly before a sliding window) pointing at a page full of NaN. The kernel (float32,
dots in tf32x3; and bfloat16) is compared with the XLA backend computed in float32 at the
highest matmul precision; rows with context <= 0 must be exactly zero.

Speed: bfloat16, 32 q heads / 8 kv heads, head_dim 128, every context 4096 tokens, page
size 16 and 64, at 64, 8 and 1 sequences, and 64 sequences of random context lengths in
[1, 4096] (page size 16; split-KV's load balancing). Bytes = the K and V pages the contexts need +
q + out; reported as GB/s and as a % of --peak-tbps (3.0 TB/s: an H100 SXM's HBM3). One
timed call runs the kernel once on each of several input sets (distinct pages of one big
cache, distinct queries; >= 256 MB of K/V in all) so L2 (50 MB) never holds the next
call's pages; median over batches of such calls, after warm-up, block_until_ready at the
end of each batch. Every row catches its own failure; the markdown tables come last.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

from gpu_check_common import base_parser, load_exported, rel_err, setup_paths  # noqa: E402

# name, num_seqs, q_heads, kv_heads, head_dim, page_size, max_blocks, window, cap, scale,
# config override (merged over the heuristic)
NUMERIC_CASES = [
    ("gqa32_8_ps16_nosplit", 6, 32, 8, 128, 16, 24, None, None, None, {"num_splits": 1}),
    ("gqa32_8_ps16_split4_cap", 6, 32, 8, 128, 16, 24, None, 30.0, None,
     {"num_splits": 4, "pages_per_block": 2}),
    ("gqa32_8_ps64_window_split3", 5, 32, 8, 128, 64, 8, 100, None, None, {"num_splits": 3}),
    ("gqa32_8_ps64_window_cap_scale", 5, 32, 8, 128, 64, 8, 37, 20.0, 0.05,
     {"num_splits": 4, "pages_per_block": 1}),
    ("mha_d64_ps16", 4, 8, 8, 64, 16, 16, None, None, None, {}),
    ("mqa_d256_ps32_split2", 3, 16, 1, 256, 32, 8, None, 10.0, None, {"num_splits": 2}),
    ("gqa6_d96_ps8_odd", 5, 12, 2, 96, 8, 20, 50, None, None, {"pages_per_block": 3, "num_splits": 2}),
    ("heuristic_b16_ctx4096", 16, 32, 8, 128, 16, 256, None, None, None, {}),
]
QUICK_NUMERIC = ["gqa32_8_ps16_split4_cap", "gqa32_8_ps64_window_split3", "heuristic_b16_ctx4096"]
BF16_NUMERIC = ["gqa32_8_ps16_nosplit", "gqa32_8_ps64_window_split3", "heuristic_b16_ctx4096"]

# name, num_seqs, page_size, contexts (q_heads 32, kv_heads 8, head_dim 128, bfloat16; tables
# of 4096 tokens). "full": every context 4096; "rand": uniform in [1, 4096] (fresh per run)
TIMING_CASES = [
    ("B64_ctx4096_ps16", 64, 16, "full"),
    ("B64_ctx4096_ps64", 64, 64, "full"),
    ("B8_ctx4096_ps16", 8, 16, "full"),
    ("B8_ctx4096_ps64", 8, 64, "full"),
    ("B1_ctx4096_ps16", 1, 16, "full"),
    ("B1_ctx4096_ps64", 1, 64, "full"),
    ("B64_ctxrand_ps16", 64, 16, "rand"),
]
QUICK_TIMING = ["B64_ctx4096_ps16", "B64_ctx4096_ps64"]
T_HQ, T_HK, T_D, T_CTX = 32, 8, 128, 4096
ROTATE_BYTES = 256 << 20     # K/V bytes across the rotated input sets, >> the 50 MB L2

TOL = {"float32": 2e-4, "bfloat16": 2.5e-2}


def parse_args():
    p = base_parser(__doc__.split("\n\n")[0], "paged_check.json",
                    "3 numerics cases, the two batch-64 timings",
                    "JSON dict merged into every Triton config")
    p.add_argument("--configs", default="[]",
                   help="JSON list of extra config dicts to time beside the heuristic's (timing only)")
    p.add_argument("--skip-xla", action="store_true", help="time the Triton kernel only")
    p.add_argument("--peak-tbps", type=float, default=3.0, help="HBM bandwidth the %% column is of")
    return p.parse_args()


# ---------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------

def numeric_case(row):
    name, s, hq, hk, d, ps, mb, window, cap, scale, cfg = row
    return dict(name=name, S=s, HQ=hq, HK=hk, D=d, PS=ps, MB=mb, PAGES=s * mb + 1, window=window,
                cap=cap, scale=scale, config=cfg, kind="numeric")


def timing_case(row):
    name, s, ps, ctx = row
    mb = T_CTX // ps
    set_bytes = 2 * T_HK * s * mb * ps * T_D * 2
    n_sets = max(3, min(32, math.ceil(ROTATE_BYTES / set_bytes)))
    return dict(name=name, S=s, HQ=T_HQ, HK=T_HK, D=T_D, PS=ps, MB=mb, PAGES=n_sets * s * mb,
                window=None, cap=None, scale=None, config={}, kind="timing", n_sets=n_sets, ctx=ctx)


def case_static(c):
    return dict(attn_scale=c["scale"], attn_logits_soft_cap=c["cap"], sliding_window=c["window"])


def case_dims(c):
    return dict(num_seqs=c["S"], q_heads=c["HQ"], kv_heads=c["HK"], head_dim=c["D"],
                total_pages=c["PAGES"], page_size=c["PS"], max_blocks=c["MB"])


def resolved_config(c, cc, overrides):
    """The config the Triton kernel runs with: the heuristic for cc, then the case's and the
    command line's overrides (what the kernel itself would resolve)."""
    from types import SimpleNamespace
    from ejaot_kernels.page_attention.configs import triton_heuristic
    cfg = triton_heuristic(case_dims(c), case_static(c), SimpleNamespace(facts={"compute_capability": cc}))
    cfg.update(c["config"])
    cfg.update(overrides)
    cfg["compute_capability"] = cc
    return cfg


def avals(c, dtype):
    import jax
    import jax.numpy as jnp
    dt = jnp.dtype(dtype)
    cache = (c["HK"], c["PAGES"], c["PS"], c["D"])
    return [jax.ShapeDtypeStruct((c["S"], c["HQ"], c["D"]), dt), jax.ShapeDtypeStruct(cache, dt),
            jax.ShapeDtypeStruct(cache, dt), jax.ShapeDtypeStruct((c["S"],), jnp.int32),
            jax.ShapeDtypeStruct((c["S"], c["MB"]), jnp.int32)]


def make_fn(c, impl, config):
    def fn(q, kc, vc, ctx, tables):
        inputs = {"query": q, "key_cache": kc, "value_cache": vc, "context_lens": ctx,
                  "block_tables": tables}
        import jax.numpy as jnp
        return impl(inputs, jnp.zeros((0,), jnp.int32), config=config, **case_static(c))[0]
    return fn


def config_label(i):
    return "heuristic" if i == 0 else f"cfg{i}"


def export_name(c, dtype, label):
    return f"{c['name']}__{dtype}__{label}.bin"


def selected(args):
    only = {x for x in args.only.split(",") if x}
    num = [numeric_case(r) for r in NUMERIC_CASES]
    tim = [timing_case(r) for r in TIMING_CASES]
    if args.quick:
        num = [c for c in num if c["name"] in QUICK_NUMERIC]
        tim = [c for c in tim if c["name"] in QUICK_TIMING]
    if only:
        num = [c for c in num if c["name"] in only]
        tim = [c for c in tim if c["name"] in only]
    dtypes = {c["name"]: ["float32"] + (["bfloat16"] if c["name"] in BF16_NUMERIC else []) for c in num}
    return num, tim, dtypes


def timing_configs(args):
    """[(label, overrides)]: the heuristic (with --config) first, then each of --configs."""
    base = json.loads(args.config)
    extra = json.loads(args.configs)
    return [(config_label(0), base)] + [(config_label(i + 1), {**base, **e}) for i, e in enumerate(extra)]


# ---------------------------------------------------------------------------------------
# export mode (CPU build host)
# ---------------------------------------------------------------------------------------

def do_export(args):
    import jax
    from ejaot_kernels.page_attention.triton_gpu import page_attention_impl
    out_dir = Path(args.export)
    out_dir.mkdir(parents=True, exist_ok=True)
    checks = [jax.export.DisabledSafetyCheck.custom_call("triton_kernel_call_ffi")]
    num, tim, dtypes = selected(args)
    jobs = [] if args.skip_numerics else [(c, dt, config_label(0), json.loads(args.config))
                                          for c in num for dt in dtypes[c["name"]]]
    if not args.skip_timing:
        jobs += [(c, "bfloat16", label, ov) for c in tim for label, ov in timing_configs(args)]
    meta = {"cc": args.cc, "jax": jax.__version__, "entries": {}}
    for c, dt, label, ov in jobs:
        cfg = resolved_config(c, args.cc, ov)
        t0 = time.perf_counter()
        exp = jax.export.export(jax.jit(make_fn(c, page_attention_impl, cfg)), platforms=("cuda",),
                                disabled_checks=checks)(*avals(c, dt))
        name = export_name(c, dt, label)
        (out_dir / name).write_bytes(exp.serialize())
        meta["entries"][name] = {"case": c["name"], "dtype": dt, "label": label, "config": cfg}
        print(f"exported {name} {cfg} in {time.perf_counter() - t0:.1f}s", flush=True)
    (out_dir / "export.json").write_text(json.dumps(meta, indent=1))


class Kernel:
    """The Triton kernel for a case: jitted from source, or deserialized from --artifacts."""

    def __init__(self, args):
        self.artifacts = Path(args.artifacts) if args.artifacts else None
        self.cc = args.cc
        self.meta = {}
        self.impl = None
        if self.artifacts is not None:
            self.meta = json.loads((self.artifacts / "export.json").read_text())["entries"]
        else:
            from ejaot_kernels.page_attention.triton_gpu import page_attention_impl
            self.impl = page_attention_impl
            self.cc = None

    def fn(self, c, dtype, label, overrides):
        """(callable(q, kc, vc, ctx, tables), the config it runs with)."""
        if self.artifacts is not None:
            name = export_name(c, dtype, label)
            return load_exported(self.artifacts, name).call, self.meta.get(name, {}).get("config")
        from ejaot_kernels.triton_support import local_compute_capability
        cfg = resolved_config(c, local_compute_capability("page_attention"), overrides)
        return make_fn(c, self.impl, cfg), cfg


# ---------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------

def make_numeric_inputs(c, dtype, rng):
    """numpy inputs: NaN poison page (the last) behind every entry not to be read."""
    import ml_dtypes  # noqa: F401  (bfloat16 in numpy)
    import numpy as np
    s, hq, hk, d, ps, mb = c["S"], c["HQ"], c["HK"], c["D"], c["PS"], c["MB"]
    longest = mb * ps
    lens = rng.integers(0, longest + 1, size=s)
    specials = [0, longest, int(rng.integers(1, max(mb, 2))) * ps + int(rng.integers(1, ps)) if ps > 1 else 1,
                longest + 7, -3]
    for i, v in enumerate(specials[:s]):
        lens[i] = v
    rng.shuffle(lens)
    pages = s * mb + 1
    poison = pages - 1
    kc = rng.standard_normal((hk, pages, ps, d)).astype(np.float32)
    vc = rng.standard_normal((hk, pages, ps, d)).astype(np.float32)
    kc[:, poison] = vc[:, poison] = np.nan
    tables = rng.permutation(poison)[: s * mb].reshape(s, mb)
    for i, n in enumerate(lens):
        n = min(max(int(n), 0), longest)
        tables[i, -(-n // ps):] = poison
        if c["window"] is not None:
            tables[i, : max(0, n - c["window"]) // ps] = poison
    q = rng.standard_normal((s, hq, d)).astype(np.float32)
    return [q.astype(dtype), kc.astype(dtype), vc.astype(dtype), lens.astype(np.int32),
            tables.astype(np.int32)]


def run_numerics(kernel, cases, dtypes, rng, overrides, results):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ejaot_kernels.page_attention.xla import page_attention_impl as xla_impl
    for c in cases:
        for dt in dtypes[c["name"]]:
            rec = {"case": c["name"], "dtype": dt}
            try:
                fn, cfg = kernel.fn(c, dt, config_label(0), overrides)
                rec["config"] = cfg
                args = make_numeric_inputs(c, dt, rng)
                out = np.asarray(jax.jit(fn)(*[jnp.asarray(a) for a in args]).astype(jnp.float32))
                f32 = [jnp.asarray(a.astype(np.float32) if a.dtype.kind == "f" or str(a.dtype) == "bfloat16"
                                   else a) for a in args]
                with jax.default_matmul_precision("highest"):
                    ref = np.asarray(jax.jit(make_fn(c, xla_impl, {}))(*f32))
                err, mx = rel_err(out, ref)
                empty = args[3] <= 0
                zeros_ok = bool(np.all(out[empty] == 0.0))
                finite = bool(np.all(np.isfinite(out)))
                ok = finite and zeros_ok and err <= TOL[dt]
                rec.update(rel_l2=err, max_abs=mx, zero_rows=int(empty.sum()), zero_rows_exact=zeros_ok,
                           finite=finite, tol=TOL[dt], passed=ok,
                           context_lens=[int(x) for x in args[3]])
            except Exception as e:  # noqa: BLE001 - report and go on
                rec.update(passed=False, error=f"{type(e).__name__}: {str(e)[:400]}",
                           trace=traceback.format_exc(limit=6))
            print(f"  numerics {c['name']} {dt}: " + (f"rel {rec['rel_l2']:.2e} {'PASS' if rec['passed'] else 'FAIL'}"
                  if "rel_l2" in rec else rec.get("error", "?")), flush=True)
            results.append(rec)


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------

def needed_bytes(c, ctx_lens, itemsize=2):
    """K and V pages the contexts need (whole pages), plus q, out and the table entries."""
    ps = c["PS"]
    pages = sum(-(-min(max(int(n), 0), c["MB"] * ps) // ps) for n in ctx_lens)
    kv = 2 * c["HK"] * pages * ps * c["D"] * itemsize
    q_out = 2 * c["S"] * c["HQ"] * c["D"] * itemsize
    return kv + q_out + 4 * pages + 4 * c["S"]


def make_timing_inputs(c, rng):
    """One cache holding n_sets disjoint regions; set i's tables are a random permutation
    of region i's pages, and it has its own query. Caches are filled on the device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    s, hq, hk, d, ps, mb, n = c["S"], c["HQ"], c["HK"], c["D"], c["PS"], c["MB"], c["n_sets"]
    key = jax.random.PRNGKey(int(rng.integers(1 << 31)))
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (hk, c["PAGES"], ps, d)
    kc = jax.random.normal(k1, shape, jnp.bfloat16)
    vc = jax.random.normal(k2, shape, jnp.bfloat16)
    qs = [jax.random.normal(k, (s, hq, d), jnp.bfloat16) for k in jax.random.split(k3, n)]
    if c["ctx"] == "full":
        lens = np.full((s,), T_CTX, np.int32)
    else:
        lens = rng.integers(1, T_CTX + 1, size=s).astype(np.int32)
    ctx = jnp.asarray(lens)
    region = s * mb
    tables = [jnp.asarray((i * region + rng.permutation(region)).reshape(s, mb).astype(np.int32))
              for i in range(n)]
    jax.block_until_ready((kc, vc, qs, tables))
    return qs, kc, vc, ctx, tables, lens


def rotating(fn, n):
    """One jitted call = fn on each of the n input sets (every output returned, so no call
    is dropped; all operands differ, so none is merged)."""
    import jax

    def run(qs, kc, vc, ctx, tables):
        return tuple(fn(qs[i], kc, vc, ctx, tables[i]) for i in range(n))
    return jax.jit(run)


def bench(fn, args, n_calls, iters):
    """Median seconds per kernel call."""
    import jax
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = time.perf_counter() - t0
    reps = max(1, min(50, int(0.01 / max(one, 1e-6))))   # ~10 ms per timed batch
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / (reps * n_calls))
    return statistics.median(times), times


def run_timing(kernel, cases, rng, iters, configs, skip_xla, peak, results):
    import gc
    import jax
    from ejaot_kernels.page_attention.xla import page_attention_impl as xla_impl
    for c in cases:
        rec = {"case": c["name"], "S": c["S"], "Hq": c["HQ"], "Hk": c["HK"], "D": c["D"],
               "page_size": c["PS"], "max_context": T_CTX, "n_sets": c["n_sets"], "ms": {}, "gbps": {},
               "pct_peak": {}, "configs": {}, "errors": {}}
        results.append(rec)
        try:
            qs, kc, vc, ctx, tables, lens = make_timing_inputs(c, rng)
        except Exception as e:  # noqa: BLE001
            rec["errors"]["inputs"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"  timing {c['name']}: inputs failed: {rec['errors']['inputs']}", flush=True)
            continue
        nbytes = needed_bytes(c, lens)
        rec["bytes_per_call"] = nbytes
        rec["context_lens"] = "all 4096" if c["ctx"] == "full" else [int(x) for x in lens]
        args = (qs, kc, vc, ctx, tables)
        impls = [(f"triton[{label}]", lambda label=label, ov=ov: kernel.fn(c, "bfloat16", label, ov))
                 for label, ov in configs]
        if not skip_xla:
            impls.append(("xla", lambda: (make_fn(c, xla_impl, {}), None)))
        for key, get in impls:
            try:
                fn, cfg = get()
                if cfg is not None:
                    rec["configs"][key] = cfg
                sec, _ = bench(rotating(fn, c["n_sets"]), args, c["n_sets"], iters)
                rec["ms"][key] = sec * 1e3
                rec["gbps"][key] = nbytes / sec / 1e9
                rec["pct_peak"][key] = 100.0 * nbytes / sec / (peak * 1e12)
                print(f"  timing {c['name']} {key}: {sec * 1e3:.3f} ms, {nbytes / sec / 1e9:.0f} GB/s "
                      f"({rec['pct_peak'][key]:.1f}% of {peak} TB/s) {cfg or ''}", flush=True)
            except Exception as e:  # noqa: BLE001
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                rec["errors"][key] = msg
                print(f"  timing {c['name']} {key} failed: {msg}", flush=True)
        del qs, kc, vc, tables, args
        gc.collect()


def print_tables(numerics, timing, peak, configs):
    if numerics:
        print("\n## numerics (relative L2 error vs the XLA backend in float32, highest precision)\n")
        print("| case | dtype | rel L2 | max abs | ctx<=0 rows exact 0 | config | result |")
        print("|---|---|---|---|---|---|---|")
        for r in numerics:
            cfg = r.get("config") or {}
            cfg_s = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "compute_capability")
            if "rel_l2" in r:
                print(f"| {r['case']} | {r['dtype']} | {r['rel_l2']:.2e} | {r['max_abs']:.2e} | "
                      f"{r['zero_rows_exact']} ({r['zero_rows']}) | {cfg_s} | {'PASS' if r['passed'] else 'FAIL'} |")
            else:
                print(f"| {r['case']} | {r['dtype']} | ERROR {r.get('error', '')[:160]} | | | {cfg_s} | FAIL |")
    if timing:
        keys = [f"triton[{label}]" for label, _ in configs] + ["xla"]
        print(f"\n## speed (bf16, Hq 32 / Hk 8, D 128, context 4096 (ctxrand: uniform 1..4096); GB/s of "
              f"needed K/V pages + q + out, "
              f"% of {peak} TB/s, ms per call)\n")
        print("| shape | " + " | ".join(keys) + " | triton/xla |")
        print("|---|" + "---|" * len(keys) + "---|")
        for r in timing:
            cells = []
            for k in keys:
                if k in r["gbps"]:
                    cells.append(f"{r['gbps'][k]:.0f} GB/s, {r['pct_peak'][k]:.1f}% ({r['ms'][k]:.3f} ms)")
                else:
                    cells.append("err" if k in r["errors"] or "inputs" in r["errors"] else "-")
            t, x = r["ms"].get(keys[0]), r["ms"].get("xla")
            ratio = f"{x / t:.2f}x" if t and x else "-"
            print(f"| {r['case']} | " + " | ".join(cells) + f" | {ratio} |")
        for r in timing:
            for k, cfg in r["configs"].items():
                print(f"  {r['case']} {k}: {json.dumps(cfg)}")
    sys.stdout.flush()


def main():
    args = parse_args()
    setup_paths(export=bool(args.export))
    if args.export:
        do_export(args)
        return 0
    import jax
    import numpy as np
    t_start = time.perf_counter()
    dev = jax.devices()[0]
    info = {"device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
            "jax": jax.__version__, "mode": "artifacts" if args.artifacts else "jit",
            "config_override": json.loads(args.config), "extra_configs": json.loads(args.configs),
            "peak_tbps": args.peak_tbps}
    print(f"# page_attention triton check on {info['device']} (jax {info['jax']}, mode {info['mode']})",
          flush=True)
    seed = int.from_bytes(os.urandom(4), "little")
    info["seed"] = seed
    rng = np.random.default_rng(seed)
    num, tim, dtypes = selected(args)
    configs = timing_configs(args)
    numerics, timing = [], []
    kernel = None
    try:
        kernel = Kernel(args)
    except Exception as e:  # noqa: BLE001
        info["kernel_error"] = f"{type(e).__name__}: {e}"
        print(f"kernel unavailable: {info['kernel_error']}", flush=True)
    if kernel is not None and not args.skip_numerics:
        run_numerics(kernel, num, dtypes, rng, json.loads(args.config), numerics)
    if not args.skip_timing:
        iters = args.iters or (3 if args.quick else 7)
        run_timing(kernel or _NoKernel(), tim, rng, iters, configs, args.skip_xla, args.peak_tbps, timing)
    n_fail = sum(not r.get("passed") for r in numerics)
    info["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    verdict = "PASS" if numerics and not n_fail else ("FAIL" if numerics else "NO NUMERICS")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "numerics": numerics, "timing": timing,
                               "verdict": verdict}, indent=1, default=str))
    print(f"wrote {out}")
    print_tables(numerics, timing, args.peak_tbps, configs)
    print(f"\nnumerics: {verdict} ({len(numerics) - n_fail}/{len(numerics)} passed); "
          f"elapsed {info['elapsed_s']} s", flush=True)
    return 0 if verdict != "FAIL" else 1


class _NoKernel:
    def fn(self, c, dtype, label, overrides):
        raise RuntimeError("triton kernel unavailable")


if __name__ == "__main__":
    sys.exit(main())

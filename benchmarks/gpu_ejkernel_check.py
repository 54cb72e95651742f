#!/usr/bin/env python3
"""ejkernel 0.0.80.3's Triton kernels on the shapes that gpu_paged_check.py and
gpu_mla_check.py time for ejaot, measured the same way, so the numbers sit side by side.

Run on the GPU host from the repo root (ejkernel and its pure-Python dependencies are
carried in .gpu/ejk/site, since the device image has neither ejkernel nor a network):

    PYTHONPATH=.gpu/ejk/site:$PYTHONPATH python3 benchmarks/gpu_ejkernel_check.py --out DIR
    ... --quick                 the two batch-64 paged shapes only
    ... --sweep                 also every config ejkernel's own autotuner would try
    ... --ejaot DIR2            add the ejaot columns from DIR2/paged.json, DIR2/mla.json
    ... --dry-run               CPU host: import, build small inputs, check the reference,
                                trace (and, with the CUDA plugin, lower) every kernel

What is compared
  paged decode (gpu_paged_check.py's TIMING_CASES: bf16, 32 q heads over 8 kv heads,
  head_dim 128, 4096-token tables, page size 16 / 64, 64 / 8 / 1 sequences, and 64
  sequences of random length):
    * page_attention     ejkernel.kernels._triton.page_attention.page_attention: the same
                         computation and interface as ejaot's page_attention, but its
                         caches are [pages, kv_heads, page_size, head_dim] (ejaot's are
                         [kv_heads, pages, page_size, head_dim]); config = ejkernel's
                         PageAttention.heuristic_cfg (num_splits 0 = its own split rule,
                         4 warps, 1 stage).
    * unified_attention  ejkernel's port of vLLM's unified kernel, one query token per
                         sequence (query_start_loc = arange), causal (so each query sees
                         its whole context); caches [pages, page_size, kv_heads, head_dim].
    * decode_attention   ejkernel's port of vLLM's two-stage decode kernel (one program per
                         query head, no GQA sharing of K/V loads); unified_attention's
                         cache seen as [pages * page_size, kv_heads, head_dim].
  unified_attention fails to compile at one sequence (the B1 shapes): ejkernel's
  triton_call turns a scalar equal to 1 into a constexpr, and the kernel calls
  num_seqs.to(); that row reports the error.
  Each gets its own cache layout built from one set of random values, so all see the same
  data; the bytes counted are gpu_paged_check.needed_bytes (K/V pages needed + q + out +
  table entries), whatever the layout.
  MLA decode (gpu_mla_check.py's TIMING_CASES): ejkernel 0.0.80.3 has no Triton MLA kernel.
  Its Triton flash_mla (ejkernel.kernels._triton.flash_mla.flash_mla: query, key_value,
  w_kc, w_vc, b_q, b_k, the interface of ejaot's whole path) is a stub: at decode shapes
  its jaxtyping signature (query and keys share "seq_len") rejects the call, and with equal
  lengths its body raises NotImplementedError, as does the latent_key/latent_value launcher
  in _triton_impl_fwd.py. The script probes all three and reports that; if a later ejkernel
  implements flash_mla, the same cases run against an absorbed-form float32 reference and
  are timed like gpu_mla_check.py's "triton" (whole path) column.

Numerics: fresh random normal inputs (fixed --seed, printed), compared on the first input
set of each timing shape with a plain float32 jnp reference at the highest matmul
precision: relative L2 error <= 2.5e-2 (gpu_paged_check's bf16 bound) and max abs <= 5e-2.
Timing: gpu_paged_check's own rotating()/bench() (one jitted call runs the kernel on each
of several input sets over >= 256 MB of distinct pages, so L2 never holds the next call's
pages; median of timed batches), gpu_mla_check's bench() for MLA. GB/s and % of
--peak-tbps (3.0 TB/s, the H100's measured device-to-device copy rate).

jax 0.11.2 compatibility: ejkernel carries its own fork of jax-triton's triton_call
(ejkernel/callib/_triton_call.py); it traces and lowers under jax 0.11.2 with triton 3.6.0
and 3.7.1 (checked on a CPU host). It lowers to the legacy custom call
"triton_kernel_call" (api_version 2), which jaxlib 0.11.2 still registers and runs (on the
H100 image, 2026-11-22).

Rebuilding .gpu/ejk/site on the CPU host (gpu_prepare.sh keeps it):
    .venv/bin/python -m pip install --no-deps --no-compile --target .gpu/ejk/site \\
      ejkernel==0.0.80.3 beartype jaxtyping wadler_lindig chex toolz einops absl-py \\
      pydantic pydantic_core typing_extensions annotated_types typing_inspection
    then delete the CUDA sources the wheel drops at the top of the target (blocksparse_attention/,
    flash_attention/, quantized_matmul/, ragged_page_attention_v3/, unified_attention/,
    code_gen.py): only ejkernel's never-called CUDA build step reads them.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

import gpu_check_common as common
import gpu_mla_check as mla
import gpu_paged_check as paged

TOL_REL = paged.TOL["bfloat16"]
TOL_ABS = 5e-2
LEGACY_TARGET = "triton_kernel_call"     # the custom call ejkernel's triton_call emits


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results/ejkernel", help="results folder (ejkernel.json)")
    p.add_argument("--quick", action="store_true", help="the two batch-64 paged shapes, fewer iters")
    p.add_argument("--only", default="", help="comma-separated case names (default all)")
    p.add_argument("--kernels", default="page_attention,unified_attention,decode_attention",
                   help="comma-separated paged kernels to run")
    p.add_argument("--sweep", action="store_true",
                   help="also time every config ejkernel's autotuner lists for the kernel (slow)")
    p.add_argument("--iters", type=int, default=0, help="timed batches per measurement (0: auto)")
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--peak-tbps", type=float, default=3.0)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--ejaot", metavar="DIR", help="folder holding gpu_paged_check/gpu_mla_check "
                   "results (paged.json, mla.json) to print beside")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU needed: small shapes, reference check, trace and lower only")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------
# ejkernel import
# ---------------------------------------------------------------------------------------

def import_ejkernel():
    """Import the entry points once; returns (module dict, versions)."""
    import jax
    import triton
    import ejkernel
    import ejkernel.callib._triton_call as tcall
    from ejkernel.kernels._triton.decode_attention import decode_attention
    from ejkernel.kernels._triton.flash_mla import _triton_impl_fwd as mla_fwd
    from ejkernel.kernels._triton.flash_mla import flash_mla
    from ejkernel.kernels._triton.page_attention import page_attention
    from ejkernel.kernels._triton.unified_attention import unified_attention
    mods = dict(page_attention=page_attention, unified_attention=unified_attention,
                decode_attention=decode_attention, flash_mla=flash_mla,
                mla_fwd_launcher=mla_fwd._fwd_mla_attention_kernel_call, tcall=tcall)
    vers = {"ejkernel": ejkernel.__version__, "ejkernel_path": str(Path(ejkernel.__file__).parent),
            "jax": jax.__version__, "triton": triton.__version__,
            "jax_triton_imported": "jax_triton" in sys.modules}
    return mods, vers


# ---------------------------------------------------------------------------------------
# paged decode: cases, configs, inputs, reference
# ---------------------------------------------------------------------------------------

def selected_rows(rows, quick_names, args):
    """The timing rows --quick and --only leave."""
    if args.quick:
        rows = [r for r in rows if r[0] in quick_names]
    only = {x for x in args.only.split(",") if x}
    return [r for r in rows if r[0] in only] if only else list(rows)


def paged_cases(args):
    rows = selected_rows(paged.TIMING_CASES, paged.QUICK_TIMING, args)
    return [dict(paged.timing_case(r), T=paged.T_CTX) for r in rows]


def small_paged_cases():
    """Dry-run shapes: the same structure at a size a CPU handles."""
    out = []
    for name, s, ps, ctx in (("small_B4_ctx256_ps16", 4, 16, "full"), ("small_B4_ctxrand_ps64", 4, 64, "rand")):
        t = 256
        out.append(dict(name=name, S=s, HQ=paged.T_HQ, HK=paged.T_HK, D=paged.T_D, PS=ps, MB=t // ps,
                        PAGES=2 * s * (t // ps), n_sets=2, ctx=ctx, T=t, window=None, cap=None, scale=None))
    return out


def paged_configs(kernel, c, sweep):
    """[(label, config)]: ejkernel's heuristic (its modules/operations heuristic_cfg), then,
    with --sweep, the candidates its autotuner lists (candidate_cfgs_gpu, Triton ones)."""
    if kernel == "page_attention":
        heur = dict(num_splits=0, num_warps=4, num_stages=1)
        cands = [dict(num_splits=n, num_warps=w, num_stages=st) for n in (0, 1, 2, 4)
                 for w, st in ((2, 4), (4, 3), (4, 4), (8, 2), (8, 3), (8, 4), (16, 2), (16, 3), (16, 4))]
    elif kernel == "unified_attention":
        thr, seg = 128 // c["HK"], 16          # MIN_LAUNCH_GRID_SIZE_2D // kv_heads, NUM_PAR_SOFTMAX_SEGMENTS
        heur = dict(seq_threshold_3d=thr, num_par_softmax_segments=seg)

        def launch(t, sg):   # what runs: any threshold below the batch gives the same 2D kernel
            return ("2d",) if c["S"] > t else ("3d", sg)
        cands, seen = [], {launch(thr, seg)}
        for t in sorted({max(1, thr // 2), thr, thr * 2}):
            for sg in sorted({max(1, seg // 2), seg, min(seg * 2, 64)}):
                if launch(t, sg) not in seen:
                    seen.add(launch(t, sg))
                    cands.append(dict(seq_threshold_3d=t, num_par_softmax_segments=sg))
    elif kernel == "decode_attention":
        t = c["MB"] * c["PS"]
        heur = dict(num_kv_splits=1 if t <= 1024 else 4 if t <= 4096 else 8 if t <= 8192 else 16,
                    num_warps=8 if c["D"] >= 128 else 4, num_stages=2)
        splits = [n for n in (1, 2, 4, 8, 16, 32) if n <= max(1, t // 128)] or [1]
        cands = [dict(num_kv_splits=n, num_warps=w, num_stages=2) for n in splits[:5]
                 for w in ((4, 8) if c["D"] >= 128 else (2, 4))]
    else:
        raise ValueError(f"unknown kernel {kernel}")
    out = [("heuristic", heur)]
    if sweep:
        out += [(f"sweep{i}", cfg) for i, cfg in enumerate(cands) if cfg != heur]
    return out


# cache layouts, as views of one canonical [pages, kv_heads, page_size, head_dim] cache
LAYOUT = {"page_attention": "phsd", "unified_attention": "pshd", "decode_attention": "pshd"}


def to_layout(x, layout):
    import jax.numpy as jnp
    return x if layout == "phsd" else jnp.transpose(x, (0, 2, 1, 3))


def make_paged_fn(kernel, c, cfg, mods):
    """fn(q, kc, vc, ctx, tables) -> out, the signature gpu_paged_check.rotating() calls;
    kc/vc are in LAYOUT[kernel]."""
    import jax.numpy as jnp
    k = mods[kernel]
    if kernel == "page_attention":
        # max_context_len must be static: left None, ejkernel reads it off the device
        # (jax.device_get), which fails under jit; the table's capacity is what ejaot assumes too
        def fn(q, kc, vc, ctx, tables):
            return k(q, kc, vc, ctx, tables, max_context_len=c["MB"] * c["PS"], **cfg)
    elif kernel == "unified_attention":
        def fn(q, kc, vc, ctx, tables):
            starts = jnp.arange(c["S"] + 1, dtype=jnp.int32)     # one query token per sequence
            return k(q, kc, vc, ctx, tables, starts, causal=True, **cfg)
    else:
        def fn(q, kc, vc, ctx, tables):
            p, ps, hk, d = kc.shape
            return k(q, kc.reshape(p * ps, hk, d), vc.reshape(p * ps, hk, d), tables, ctx,
                     page_size=ps, **cfg)[0]
    return fn


def make_paged_inputs(c, rng, key):
    """gpu_paged_check.make_timing_inputs' scheme in ejkernel's page_attention layout: one
    cache of n_sets disjoint regions, set i's tables a random permutation of region i's
    pages, its own query; contexts all T ("full") or uniform in [1, T] ("rand")."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    s, hq, hk, d, ps, mb, n = c["S"], c["HQ"], c["HK"], c["D"], c["PS"], c["MB"], c["n_sets"]
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (c["PAGES"], hk, ps, d)
    kc = jax.random.normal(k1, shape, jnp.bfloat16)
    vc = jax.random.normal(k2, shape, jnp.bfloat16)
    qs = [jax.random.normal(k, (s, hq, d), jnp.bfloat16) for k in jax.random.split(k3, n)]
    lens = (np.full((s,), c["T"], np.int32) if c["ctx"] == "full"
            else rng.integers(1, c["T"] + 1, size=s).astype(np.int32))
    region = s * mb
    tables = [jnp.asarray((i * region + rng.permutation(region)).reshape(s, mb).astype(np.int32))
              for i in range(n)]
    ctx = jnp.asarray(lens)
    jax.block_until_ready((kc, vc, qs, tables))
    return qs, kc, vc, ctx, tables, lens


def paged_reference(q, kc, vc, ctx, tables):
    """float32 paged GQA decode on the canonical layout: gather each sequence's pages, mask
    past its context, softmax at scale head_dim**-0.5."""
    import jax
    import jax.numpy as jnp
    f32, hi = jnp.float32, jax.lax.Precision.HIGHEST
    s, hq, d = q.shape
    _, hk, ps, _ = kc.shape
    t = tables.shape[1] * ps

    def gather(x):   # [s, mb, hk, ps, d] -> [s, hk, t, d]
        return jnp.transpose(x[tables].astype(f32), (0, 2, 1, 3, 4)).reshape(s, hk, t, d)
    qg = q.astype(f32).reshape(s, hk, hq // hk, d)
    logits = jnp.einsum("shgd,shtd->shgt", qg, gather(kc), precision=hi) * (d ** -0.5)
    keep = jnp.arange(t)[None, None, None, :] < ctx[:, None, None, None]
    p = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1)
    return jnp.einsum("shgt,shtd->shgd", p, gather(vc), precision=hi).reshape(s, hq, d)


def compare(out, ref):
    import numpy as np
    rel, mx = common.rel_err(out, ref)
    return dict(rel_l2=rel, max_abs=mx, tol_rel=TOL_REL, tol_abs=TOL_ABS,
                passed=bool(np.isfinite(rel) and rel <= TOL_REL and mx <= TOL_ABS))


def run_paged(args, mods, key, rng, iters, peak, log):
    import jax
    import numpy as np
    kernels = [k for k in args.kernels.split(",") if k]
    results = []
    for c in paged_cases(args):
        log(f"paged {c['name']}: S={c['S']} ps={c['PS']} ctx={c['ctx']} n_sets={c['n_sets']}")
        try:
            key, sub = jax.random.split(key)
            qs, kc, vc, ctx, tables, lens = make_paged_inputs(c, rng, sub)
            ref = np.asarray(jax.jit(paged_reference)(qs[0], kc, vc, ctx, tables[0]))
        except Exception as e:  # noqa: BLE001
            results.append(dict(case=c["name"], error=f"inputs/reference: {type(e).__name__}: {str(e)[:300]}"))
            log(f"  inputs failed: {results[-1]['error']}")
            continue
        nbytes = paged.needed_bytes(c, lens)
        for kernel in kernels:
            try:
                kl = to_layout(kc, LAYOUT[kernel])
                vl = to_layout(vc, LAYOUT[kernel])
            except Exception as e:  # noqa: BLE001
                results.append(dict(case=c["name"], kernel=kernel, error=f"layout: {type(e).__name__}: {e}"))
                continue
            for label, cfg in paged_configs(kernel, c, args.sweep):
                rec = dict(case=c["name"], kernel=kernel, label=label, config=cfg, S=c["S"], page_size=c["PS"],
                           ctx=c["ctx"], bytes_per_call=nbytes, n_sets=c["n_sets"])
                results.append(rec)
                try:
                    def numerics(kernel=kernel, c=c, cfg=cfg, xs=(qs[0], kl, vl, ctx, tables[0])):
                        fn = make_paged_fn(kernel, c, cfg, mods)
                        return np.asarray(jax.jit(fn)(*xs).astype(np.float32)), fn
                    out, fn = numerics()
                    rec["numerics"] = compare(out, ref)
                    if not args.skip_timing:
                        sec, _ = paged.bench(paged.rotating(fn, c["n_sets"]), (qs, kl, vl, ctx, tables),
                                             c["n_sets"], iters)
                        rec.update(us=sec * 1e6, gbps=nbytes / sec / 1e9, pct_peak=100 * nbytes / sec / (peak * 1e12))
                    n = rec["numerics"]
                    speed = (f"; {rec['us']:.1f} us, {rec['gbps']:.0f} GB/s ({rec['pct_peak']:.1f}%)"
                             if "us" in rec else "")
                    log(f"  {kernel}[{label}] {cfg}: rel {n['rel_l2']:.2e} max_abs {n['max_abs']:.2e} "
                        f"{'PASS' if n['passed'] else 'FAIL'}{speed}")
                except Exception as e:  # noqa: BLE001 - report and go on
                    rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                    rec["trace"] = traceback.format_exc(limit=8)
                    log(f"  {kernel}[{label}] {cfg}: ERROR {rec['error'][:300]}")
            del kl, vl
        del qs, kc, vc, tables, ref
        gc.collect()
    return results


# ---------------------------------------------------------------------------------------
# MLA decode
# ---------------------------------------------------------------------------------------

def mla_cases(args):
    return [mla.timing_case(r) for r in selected_rows(mla.TIMING_CASES, mla.QUICK_TIMING, args)]


def mla_avals(c):
    import jax
    import jax.numpy as jnp
    b, s, t, h, d, r, e = (c[k] for k in ("B", "S", "T", "HQ", "D", "R", "E"))
    bf = jnp.bfloat16
    return [jax.ShapeDtypeStruct(x, bf) for x in
            ((b, s, h, d), (b, t, r), (r, h, d), (r, h, d), (b, s, e), (b, t, e))]


def make_mla_fn(c, mods):
    """gpu_mla_check's whole-path interface (q, kv, w_kc, w_vc, b_q, b_k), which ejkernel's
    flash_mla shares; the scale is given so both sides use (d + rope)**-0.5."""
    scale = (c["D"] + c["E"]) ** -0.5

    def fn(q, kv, wk, wv, bq, bk):
        return mods["flash_mla"](q, kv, wk, wv, bq, bk, softmax_scale=scale, causal=True)
    return fn


def mla_reference(q, kv, wk, wv, bq, bk):
    """float32 MLA in the absorbed form (q through w_kc into the latent space, attention over
    the latent cache + rope keys, back through w_vc): the naive form's result without its
    [B, T, H, D] key/value copies. Causal with the queries at the end of the keys."""
    import jax
    import jax.numpy as jnp
    f32, hi = jnp.float32, jax.lax.Precision.HIGHEST
    q, kv, wk, wv, bq, bk = (x.astype(f32) for x in (q, kv, wk, wv, bq, bk))
    s, t, d, e = q.shape[1], kv.shape[1], q.shape[3], bq.shape[2]
    q_lat = jnp.einsum("bshd,rhd->bshr", q, wk, precision=hi)
    logits = (jnp.einsum("bshr,btr->bhst", q_lat, kv, precision=hi)
              + jnp.einsum("bse,bte->bst", bq, bk, precision=hi)[:, None]) * (d + e) ** -0.5
    keep = jnp.arange(t)[None, :] <= (t - s + jnp.arange(s))[:, None]
    p = jax.nn.softmax(jnp.where(keep[None, None], logits, -jnp.inf), axis=-1)
    out_lat = jnp.einsum("bhst,btr->bshr", p, kv, precision=hi)
    return jnp.einsum("bshr,rhd->bshd", out_lat, wv, precision=hi)


def make_mla_inputs(c, key):
    import jax
    import jax.numpy as jnp
    ks = jax.random.split(key, 6)
    av = mla_avals(c)
    # w_kc, w_vc ~ N(0, 1/rank) so logits stay O(1) (gpu_mla_check's generator does the same)
    scales = (1.0, 1.0, c["R"] ** -0.5, c["R"] ** -0.5, 1.0, 1.0)
    return [(jax.random.normal(k, a.shape, jnp.float32) * sc).astype(a.dtype)
            for k, a, sc in zip(ks, av, scales, strict=True)]


def probe_mla(mods):
    """Whether ejkernel's Triton MLA entry points do anything: (supported, evidence). The
    decode shape (one query over 64 keys) is tried first; flash_mla's jaxtyping signature
    names the query and key lengths alike ("batch seq_len ..."), so it also gets a shape with
    equal lengths, to show what the body does."""
    import jax
    evidence = {}
    for label, t in (("flash_mla", 64), ("flash_mla[S=T]", 1)):
        c = dict(B=1, S=1, T=t, HQ=4, D=128, R=512, E=64)
        try:
            jax.eval_shape(make_mla_fn(c, mods), *mla_avals(c))
            evidence[label] = "traced"
        except Exception as e:  # noqa: BLE001
            first = str(e).splitlines()[0] if str(e) else ""
            evidence[label] = f"{type(e).__name__}: {first}"[:400]
    try:
        mods["mla_fwd_launcher"](None, None, None, None, None)
        evidence["_fwd_mla_attention_kernel_call"] = "returned"
    except Exception as e:  # noqa: BLE001
        evidence["_fwd_mla_attention_kernel_call"] = f"{type(e).__name__}: {e}"
    return evidence["flash_mla"] == "traced", evidence


def run_mla(args, mods, key, iters, peak, log):
    import jax
    import numpy as np
    results = []
    supported, evidence = probe_mla(mods)
    log(f"mla: ejkernel Triton flash_mla {'traces' if supported else 'unsupported'}: {evidence}")
    for c in mla_cases(args):
        b, s, t, hq, d, r, e = (c[k] for k in ("B", "S", "T", "HQ", "D", "R", "E"))
        nbytes = b * t * (r + e) * 2 + 2 * b * s * hq * d * 2      # gpu_mla_check.run_timing's count
        rec = dict(case=c["name"], kernel="flash_mla", B=b, T=t, bytes_per_call=nbytes)
        results.append(rec)
        if not supported:
            rec["unsupported"] = "ejkernel has no Triton MLA kernel: " + "; ".join(
                f"{k}: {v[:150]}" for k, v in evidence.items())
            continue
        try:
            key, k1, k2 = jax.random.split(key, 3)
            sets = [make_mla_inputs(c, k) for k in (k1, k2)]

            def numerics(c=c, xs=sets[0]):
                fn = jax.jit(make_mla_fn(c, mods))
                return np.asarray(fn(*xs).astype(np.float32)), fn
            out, fn = numerics()
            ref = np.asarray(jax.jit(mla_reference)(*sets[0]))
            rec["numerics"] = compare(out, ref)
            if not args.skip_timing:
                sec = mla.bench(fn, sets, iters, 20)
                rec.update(us=sec * 1e6, gbps=nbytes / sec / 1e9, pct_peak=100 * nbytes / sec / (peak * 1e12))
            log(f"  {c['name']}: {rec['numerics']} {rec.get('us', '-')} us")
        except Exception as ex:  # noqa: BLE001
            rec["error"] = f"{type(ex).__name__}: {str(ex)[:400]}"
            rec["trace"] = traceback.format_exc(limit=8)
            log(f"  {c['name']}: ERROR {rec['error'][:300]}")
    return results, evidence


# ---------------------------------------------------------------------------------------
# dry run (CPU host)
# ---------------------------------------------------------------------------------------

def dry_run(args, log):
    """What can be checked without a GPU: the reference against ejaot's XLA page_attention at
    small shapes, every kernel/config traced at the real shapes, and, where the CUDA plugin
    is importable (the build host's .venv/ejaot-extras/cuda), lowered for cuda: the Triton
    kernels compile to PTX and the legacy Triton custom call shows in the module."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    report = {"mode": "dry-run", "checks": []}

    def check(name, thunk):
        try:
            detail = thunk()
            report["checks"].append(dict(name=name, ok=True, detail=detail))
            log(f"  ok   {name}: {detail}")
        except Exception as e:  # noqa: BLE001
            report["checks"].append(dict(name=name, ok=False, detail=f"{type(e).__name__}: {str(e)[:300]}",
                                         trace=traceback.format_exc(limit=6)))
            log(f"  FAIL {name}: {type(e).__name__}: {str(e)[:300]}")

    try:
        mods, vers = import_ejkernel()
    except Exception as e:  # noqa: BLE001
        report["import_error"] = f"{type(e).__name__}: {e}"
        report["trace"] = traceback.format_exc()
        log(f"ejkernel import failed: {report['import_error']}")
        return report
    report["versions"] = vers
    log(f"ejkernel {vers['ejkernel']} from {vers['ejkernel_path']}; jax {vers['jax']}, triton {vers['triton']}, "
        f"jax_triton imported: {vers['jax_triton_imported']}")
    # no GPU to ask for its compute capability while lowering: say sm_90 (H100)
    mods["tcall"]._get_cuda_compute_capability = lambda device: 90
    rng = np.random.default_rng(args.seed)
    key = jax.random.PRNGKey(args.seed)

    from ejaot_kernels.page_attention.xla import page_attention_impl as ejaot_xla
    for c in small_paged_cases():
        key, sub = jax.random.split(key)
        qs, kc, vc, ctx, tables, lens = make_paged_inputs(c, rng, sub)

        def ref_vs_ejaot(c=c, qs=qs, kc=kc, vc=vc, ctx=ctx, tables=tables, lens=lens):
            f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
            ours = np.asarray(paged_reference(qs[0], kc, vc, ctx, tables[0]))
            with jax.default_matmul_precision("highest"):
                theirs = np.asarray(paged.make_fn(c, ejaot_xla, {})(
                    f32(qs[0]), f32(jnp.transpose(kc, (1, 0, 2, 3))), f32(jnp.transpose(vc, (1, 0, 2, 3))),
                    ctx, tables[0]))
            rel, mx = common.rel_err(ours, theirs)
            assert rel < 1e-5, (rel, mx)
            return (f"contexts {lens.tolist()}, rel {rel:.1e} vs ejaot's XLA page_attention, "
                    f"min |x| {np.abs(ours).min():.1e}")
        check(f"reference {c['name']}", ref_vs_ejaot)
        for kernel in args.kernels.split(","):
            for label, cfg in paged_configs(kernel, c, args.sweep)[:2]:
                def trace(kernel=kernel, cfg=cfg, c=c, qs=qs, kc=kc, vc=vc, ctx=ctx, tables=tables):
                    fn = make_paged_fn(kernel, c, cfg, mods)
                    kl, vl = to_layout(kc, LAYOUT[kernel]), to_layout(vc, LAYOUT[kernel])
                    return str(jax.eval_shape(paged.rotating(fn, c["n_sets"]), qs, kl, vl, ctx, tables)[0])
                check(f"trace {kernel}[{label}] {c['name']}", trace)

    plugin = mods["tcall"].triton_kernel_call_lib
    can_lower = all(hasattr(plugin, a) for a in ("TritonKernel", "TritonKernelCall"))
    report["cuda_lowering_available"] = can_lower
    if not can_lower:
        log("  (no CUDA plugin importable: skipping the lowering for cuda)")
    for c in paged_cases(args):
        av = [jax.ShapeDtypeStruct((c["S"], c["HQ"], c["D"]), jnp.bfloat16), None, None,
              jax.ShapeDtypeStruct((c["S"],), jnp.int32), jax.ShapeDtypeStruct((c["S"], c["MB"]), jnp.int32)]
        for kernel in args.kernels.split(","):
            shape = (c["PAGES"], c["HK"], c["PS"], c["D"])
            if LAYOUT[kernel] == "pshd":
                shape = (c["PAGES"], c["PS"], c["HK"], c["D"])
            av[1] = av[2] = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
            for label, cfg in paged_configs(kernel, c, args.sweep):
                if not can_lower:
                    check(f"trace {kernel}[{label}] {c['name']}", lambda kernel=kernel, c=c, cfg=cfg, av=tuple(av): str(
                        jax.eval_shape(make_paged_fn(kernel, c, cfg, mods), *av)))
                    continue
                def lower(kernel=kernel, c=c, cfg=cfg, av=tuple(av)):
                    fn = make_paged_fn(kernel, c, cfg, mods)
                    t0 = time.perf_counter()
                    txt = jax.jit(fn).trace(*av).lower(lowering_platforms=("cuda",)).as_text()
                    targets = sorted({ln.split("custom_call @")[1].split("(")[0]
                                      for ln in txt.splitlines() if "custom_call @" in ln})
                    assert targets == [LEGACY_TARGET], targets
                    return f"{txt.count('custom_call @')} x {targets[0]} in {time.perf_counter() - t0:.1f}s"
                check(f"lower cuda {kernel}[{label}] {c['name']}", lower)
    supported, evidence = probe_mla(mods)
    report["mla_supported"], report["mla_evidence"] = supported, evidence
    log(f"  mla: supported={supported} {evidence}")
    c = dict(B=2, S=1, T=64, HQ=16, HK=16, D=128, R=512, E=64, causal=True, valid=None)

    def mla_ref_vs_ejaot():
        from ejaot_kernels.mla_attention.xla import mla_attention_impl
        x = [a.astype(jnp.float32) for a in make_mla_inputs(c, jax.random.PRNGKey(args.seed))]
        ours = np.asarray(mla_reference(*x))
        with jax.default_matmul_precision("highest"):
            theirs = np.asarray(mla.make_fn(c, mla_attention_impl, {})(
                x[0], x[1], x[2], x[3], jnp.asarray([1, c["T"]], jnp.int32), x[4], x[5]))
        rel, mx = common.rel_err(ours, theirs)
        assert rel < 1e-5, (rel, mx)
        return f"rel {rel:.1e} vs ejaot's XLA mla_attention"
    check("mla reference", mla_ref_vs_ejaot)
    return report


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------

def load_ejaot(folder):
    """{case: (label, gbps, us)} from gpu_paged_check / gpu_mla_check JSON, where present."""
    out = {}
    if not folder:
        return out
    for name, key in (("paged.json", "triton[heuristic]"), ("mla.json", "triton")):
        f = Path(folder) / name
        if not f.exists():
            continue
        for r in json.loads(f.read_text()).get("timing", []):
            g = r.get("gbps", {})
            if key in g:
                us = r["ms"][key] * 1e3 if "ms" in r else r.get("us", {}).get(key)
                out[r["case"]] = (g[key], us)
    return out


def print_tables(paged_res, mla_res, mla_evidence, ejaot, peak):
    def cell(gbps, us):
        return f"{gbps:.0f} GB/s, {100 * gbps * 1e9 / (peak * 1e12):.1f}% ({us:.1f} us)"

    if paged_res:
        print("\n## numerics (bf16 vs float32 jnp reference; pass: rel L2 <= "
              f"{TOL_REL:g} and max abs <= {TOL_ABS:g})\n")
        print("| case | kernel | config | rel L2 | max abs | result |")
        print("|---|---|---|---|---|---|")
        swept = [r for r in paged_res if r.get("label", "heuristic") != "heuristic"]
        for r in paged_res:
            if r in swept and r.get("numerics", {}).get("passed"):
                continue          # sweep configs: only the failures get a row, the rest a count below
            if "numerics" in r:
                n = r["numerics"]
                print(f"| {r['case']} | {r['kernel']} | {r['label']} | {n['rel_l2']:.2e} | {n['max_abs']:.2e} | "
                      f"{'PASS' if n['passed'] else 'FAIL'} |")
            elif "error" in r:
                print(f"| {r['case']} | {r.get('kernel', '-')} | {r.get('label', '-')} | ERROR "
                      f"{r['error'][:150]} | | FAIL |")
        if swept:
            ok = sum(bool(r.get("numerics", {}).get("passed")) for r in swept)
            print(f"\n{ok}/{len(swept)} swept configs passed (the rest are listed above)")
        kernels = list(dict.fromkeys(r["kernel"] for r in paged_res if "kernel" in r))
        cases = list(dict.fromkeys(r["case"] for r in paged_res))
        cols = (["ejaot triton"] if ejaot else []) + kernels
        print(f"\n## paged decode speed (bf16, Hq 32 / Hk 8, D 128, tables of 4096 tokens; GB/s of needed K/V "
              f"pages + q + out, % of {peak} TB/s, us per call; heuristic config, best of sweep after '/')\n")
        print("| case | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for case in cases:
            cells = []
            if ejaot:
                e = ejaot.get(case)
                cells.append(cell(*e) if e and e[1] else "-")
            for k in kernels:
                rs = [r for r in paged_res if r["case"] == case and r.get("kernel") == k]
                heur = next((r for r in rs if r.get("label") == "heuristic"), None)
                s = (cell(heur["gbps"], heur["us"]) if heur and "gbps" in heur
                     else ("err" if heur and "error" in heur else "-"))
                good = [r for r in rs if "gbps" in r and r["numerics"]["passed"]]
                best = max(good, key=lambda r: r["gbps"], default=None)
                if best is not None and best is not heur:
                    s += f" / {cell(best['gbps'], best['us'])} {best['config']}"
                cells.append(s)
            print(f"| {case} | " + " | ".join(cells) + " |")
    if mla_res:
        print(f"\n## MLA decode (bf16, 128 heads, rank 512, rope 64, T 4096; GB/s as gpu_mla_check counts "
              f"it, % of {peak} TB/s)\n")
        print("| case | ejaot triton (whole path) | ejkernel Triton flash_mla |")
        print("|---|---|---|")
        for r in mla_res:
            e = ejaot.get(r["case"])
            ours = (cell(r["gbps"], r["us"]) if "gbps" in r else
                    "not available (see below)" if "unsupported" in r else f"err: {r.get('error', '')[:80]}")
            print(f"| {r['case']} | {cell(*e) if e and e[1] else '-'} | {ours} |")
        for name, ev in mla_evidence.items():
            print(f"  ejkernel {name}: {ev[:200]}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / "ejkernel.json"
    t_start = time.perf_counter()

    def log(msg):
        print(msg, flush=True)

    if args.dry_run:
        common.setup_paths(export=True)      # cpu platform, CUDA plugin on the path if the host has it
        log(f"# ejkernel check, dry run (seed {args.seed})")
        report = dry_run(args, log)
        report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        out_file.write_text(json.dumps(report, indent=1, default=str))
        # the script's own checks decide the exit code; an ejkernel kernel that fails to trace
        # or lower (unified_attention at one sequence does) is a finding, listed above
        bad = [c["name"] for c in report["checks"] if not c["ok"]]
        own = [n for n in bad if "reference" in n] + (["import"] if "import_error" in report else [])
        log(f"\nwrote {out_file}; dry run: {len(report['checks']) - len(bad)}/{len(report['checks'])} checks ok"
            + (f"; failing: {', '.join(bad)}" if bad else ""))
        return 1 if own else 0

    import jax
    import numpy as np
    info = {"seed": args.seed, "peak_tbps": args.peak_tbps, "argv": sys.argv[1:]}
    dev = jax.devices()[0]
    info.update(device=getattr(dev, "device_kind", str(dev)), platform=dev.platform, jax=jax.__version__)
    if dev.platform != "gpu":
        msg = (f"no GPU: jax sees only {dev.platform} devices; run this on the GPU machine "
               "(PYTHONPATH=.gpu/ejk/site:$PYTHONPATH), or use --dry-run here")
        log(msg)
        out_file.write_text(json.dumps({"info": info, "error": msg}, indent=1))
        return 2
    log(f"# ejkernel Triton check on {info['device']} (jax {info['jax']}), seed {args.seed}")
    paged_res, mla_res, mla_evidence = [], [], {}
    try:
        mods, vers = import_ejkernel()
        info.update(vers)
        log(f"ejkernel {vers['ejkernel']} ({vers['ejkernel_path']}), triton {vers['triton']}, "
            f"jax_triton imported: {vers['jax_triton_imported']}")
    except Exception as e:  # noqa: BLE001
        info["import_error"] = f"{type(e).__name__}: {e}"
        info["import_trace"] = traceback.format_exc()
        log(f"ejkernel import failed: {info['import_error']}")
        mods = None
    if mods is not None:
        rng = np.random.default_rng(args.seed)
        key = jax.random.PRNGKey(args.seed)
        iters = args.iters or (3 if args.quick else 7)
        k1, k2 = jax.random.split(key)
        paged_res = run_paged(args, mods, k1, rng, iters, args.peak_tbps, log)
        mla_res, mla_evidence = run_mla(args, mods, k2, args.iters or (5 if args.quick else 9),
                                        args.peak_tbps, log)
    info["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    checked = [r for r in paged_res + mla_res if "numerics" in r or "error" in r]
    n_fail = sum(not r.get("numerics", {}).get("passed", False) for r in checked)
    verdict = ("IMPORT FAILED" if mods is None else "NO RESULTS" if not checked
               else "PASS" if not n_fail else "FAIL")
    out_file.write_text(json.dumps({"info": info, "paged": paged_res, "mla": mla_res,
                                    "mla_evidence": mla_evidence, "verdict": verdict}, indent=1, default=str))
    log(f"\nwrote {out_file}")
    print_tables(paged_res, mla_res, mla_evidence, load_ejaot(args.ejaot), args.peak_tbps)
    log(f"\nverdict: {verdict} ({len(checked) - n_fail}/{len(checked)} kernel runs passed numerics); "
        f"elapsed {info['elapsed_s']} s")
    return 0 if verdict in ("PASS", "NO RESULTS") else 1


if __name__ == "__main__":
    sys.exit(main())

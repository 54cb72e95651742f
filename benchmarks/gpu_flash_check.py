#!/usr/bin/env python3
"""Numerics and speed of the Triton `flash_attention` kernel on a GPU (H100), forward and
backward, against the XLA reference (numerics) and cuDNN / XLA (speed).

Run on the GPU host, from anywhere (the repo is found from this file's path):

    python3 benchmarks/gpu_flash_check.py --out bench-results/flash_h100.json
    python3 benchmarks/gpu_flash_check.py --quick --out /tmp/flash_quick.json

Two ways to get the kernel:
  * default (JIT): imports `ejaot_kernels.flash_attention.triton_gpu`, which needs
    `jax_triton` and a triton it works with (jax-triton 0.4.1 needs triton >= 3.7; with
    triton 3.6 its NVIDIA backend import fails) importable on the GPU host;
  * artifacts: `--export DIR` on a CPU build host with the CUDA extras (it lowers every
    case for --cc, default 90, through jax.export), then `--artifacts DIR` on the GPU host,
    which needs only jax with CUDA: the serialized modules carry the compiled kernels.

Numerics run in float32 (kernel dots in tf32x3) and bfloat16 on fresh random inputs and
compare out, dq, dk, dv (and dbias) with the XLA implementation (kernels/flash_attention/
xla.py) computed in float32 at the highest matmul precision. Speed is the median of
several timed batches after warm-up; FLOPs are 4*B*Hq*S*S*D for a full forward, halved
when causal, and 3.5x that for forward+backward. Every row catches its own failure.
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

# name, B, S, T, Hq, Hk, D, causal, window, soft_cap, bias, segments, valid (q_len, kv_len) or None
NUMERIC_CASES = [
    ("gqa4_causal_d64_tail", 2, 384, 384, 8, 2, 64, True, None, None, False, False, None),
    ("gqa32_8_full_d128", 1, 512, 512, 32, 8, 128, False, None, None, False, False, None),
    ("causal_d256_padded", 2, 256, 256, 4, 4, 256, True, None, None, False, False, (200, 230)),
    ("window_softcap_d128", 2, 512, 512, 8, 4, 128, False, (96, 32), 20.0, False, False, None),
    ("mqa_prefill_causal_window_padded", 1, 256, 640, 4, 1, 64, True, (128, 0), None, False, False, (256, 600)),
    ("bias_segments_causal_d64", 2, 256, 256, 4, 2, 64, True, None, None, True, True, None),
    ("bias_full_padded_d128", 1, 192, 320, 4, 2, 128, False, None, 30.0, True, False, (150, 300)),
    ("q_longer_causal_d64", 1, 384, 256, 4, 2, 64, True, None, None, False, False, None),
    # plain scores in bfloat16: the Hopper forward is the Gluon kernel (gluon_sm90.py); its
    # masked blocks, the producer's kv tail, padded lengths and rows that see no key
    ("gluon_causal_padded_d128", 2, 384, 384, 8, 2, 128, True, None, None, False, False, (300, 330)),
    ("gluon_full_padded_mqa_d64", 1, 256, 448, 4, 1, 64, False, None, None, False, False, (200, 390)),
    ("gluon_q_longer_causal_d128", 1, 512, 256, 4, 2, 128, True, None, None, False, False, None),
]
QUICK_NUMERIC = ["gqa4_causal_d64_tail", "window_softcap_d128"]
BF16_NUMERIC = ["gqa4_causal_d64_tail", "gqa32_8_full_d128", "causal_d256_padded", "window_softcap_d128",
                "gluon_causal_padded_d128", "gluon_full_padded_mqa_d64", "gluon_q_longer_causal_d128"]

# name, B, S, Hq, Hk, D, causal
TIMING_CASES = [
    ("B4_S2048_H16_D128_causal", 4, 2048, 16, 16, 128, True),
    ("B2_S8192_H16_D128_full", 2, 8192, 16, 16, 128, False),
    ("B2_S8192_H16_D128_causal", 2, 8192, 16, 16, 128, True),
    ("B1_S16384_H16_D128_causal", 1, 16384, 16, 16, 128, True),
    ("B1_S4096_H32/8_D128_causal", 1, 4096, 32, 8, 128, True),
    ("B2_S4096_H16_D64_causal", 2, 4096, 16, 16, 64, True),
    ("B2_S4096_H16_D256_causal", 2, 4096, 16, 16, 256, True),
]
QUICK_TIMING = ["B2_S8192_H16_D128_causal"]

TOL = {"float32": 2e-3, "bfloat16": 2.5e-2}


def parse_args():
    p = base_parser(__doc__.split("\n\n")[0], "flash_check.json",
                    "one timing shape, two numerics cases, few iters",
                    "JSON dict merged into the kernel config")
    p.add_argument("--tuned", action="store_true",
                   help="(with --export) a case whose exact shape, dtype and static arguments have "
                        "a current tuning record uses its config, as `ejaot build` would for that "
                        "bucket; the others use the heuristic (+ --config)")
    return p.parse_args()


# ---------------------------------------------------------------------------------------
# the functions under test
# ---------------------------------------------------------------------------------------

def case_static(c):
    return dict(causal=c["causal"], sliding_window=None if c["window"] is None else list(c["window"]),
                logits_soft_cap=c["cap"], softmax_scale=None)


def make_fns(c, impl, config):
    """fwd(q, k, v, vl, [bias], [qseg, kseg]) -> out; bwd(same..., ct) -> grads of q, k, v[, bias]."""
    import jax
    has_bias, has_seg = c["bias"], c["seg"]

    def call(q, k, v, vl, bias, qseg, kseg):
        inputs = {"query": q, "key": k, "value": v, "bias": bias,
                  "q_segment_ids": qseg, "kv_segment_ids": kseg}
        return impl(inputs, vl, config=config, **case_static(c))[0]

    def split(rest):
        rest = list(rest)
        bias = rest.pop(0) if has_bias else None
        qseg, kseg = (rest.pop(0), rest.pop(0)) if has_seg else (None, None)
        return bias, qseg, kseg

    def fwd(q, k, v, vl, *rest):
        bias, qseg, kseg = split(rest)
        return call(q, k, v, vl, bias, qseg, kseg)

    def bwd(q, k, v, vl, *rest):
        *rest, ct = rest
        bias, qseg, kseg = split(rest)
        if has_bias:
            _, pull = jax.vjp(lambda q, k, v, b: call(q, k, v, vl, b, qseg, kseg), q, k, v, bias)
        else:
            _, pull = jax.vjp(lambda q, k, v: call(q, k, v, vl, None, qseg, kseg), q, k, v)
        return pull(ct)

    return fwd, bwd


def avals(c, dtype):
    import jax
    import jax.numpy as jnp
    dt = jnp.dtype(dtype)
    b, s, t, hq, hk, d = c["B"], c["S"], c["T"], c["HQ"], c["HK"], c["D"]
    out = [jax.ShapeDtypeStruct((b, s, hq, d), dt), jax.ShapeDtypeStruct((b, t, hk, d), dt),
           jax.ShapeDtypeStruct((b, t, hk, d), dt), jax.ShapeDtypeStruct((2,), jnp.int32)]
    if c["bias"]:
        out.append(jax.ShapeDtypeStruct((b, hq, s, t), dt))
    if c["seg"]:
        out += [jax.ShapeDtypeStruct((b, s), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.int32)]
    return out


def make_args(c, dtype, rng):
    import jax.numpy as jnp
    import numpy as np
    b, s, t, hq, hk, d = c["B"], c["S"], c["T"], c["HQ"], c["HK"], c["D"]
    dt = jnp.dtype(dtype)
    args = [jnp.asarray(rng.standard_normal((b, s, hq, d)), dt),
            jnp.asarray(rng.standard_normal((b, t, hk, d)), dt),
            jnp.asarray(rng.standard_normal((b, t, hk, d)), dt),
            jnp.asarray(c["valid"] or (s, t), jnp.int32)]
    if c["bias"]:
        args.append(jnp.asarray(0.5 * rng.standard_normal((b, hq, s, t)), dt))
    if c["seg"]:   # two packed segments per row, split at a random point, aligned bottom-right
        cut = rng.integers(1, t, size=b)
        kv = (np.arange(t)[None, :] >= cut[:, None]).astype(np.int32)
        qs = kv[:, t - s:] if s <= t else np.pad(kv, [(0, 0), (s - t, 0)])
        args += [jnp.asarray(qs), jnp.asarray(kv)]
    return args


def export_name(c, dtype, kind):
    return f"{c['name'].replace('/', '-')}__{dtype}__{kind}.bin"


class Kernel:
    """The Triton kernel's fwd/bwd for a case: jitted from source, or deserialized."""

    def __init__(self, args):
        self.artifacts = Path(args.artifacts) if args.artifacts else None
        self.config = json.loads(args.config)
        self.impl = None
        if self.artifacts is None:
            from ejaot_kernels.flash_attention.triton_gpu import flash_attention_impl
            self.impl = flash_attention_impl

    def fns(self, c, dtype):
        import jax
        if self.artifacts is not None:
            fwd = load_exported(self.artifacts, export_name(c, dtype, "fwd"))
            bwd = load_exported(self.artifacts, export_name(c, dtype, "bwd"))
            return jax.jit(fwd.call), jax.jit(bwd.call)
        fwd, bwd = make_fns(c, self.impl, self.config)
        return jax.jit(fwd), jax.jit(bwd)


def numeric_case(row):
    name, b, s, t, hq, hk, d, causal, window, cap, bias, seg, valid = row
    return dict(name=name, B=b, S=s, T=t, HQ=hq, HK=hk, D=d, causal=causal, window=window, cap=cap,
                bias=bias, seg=seg, valid=valid)


def timing_case(row):
    name, b, s, hq, hk, d, causal = row
    return dict(name=name, B=b, S=s, T=s, HQ=hq, HK=hk, D=d, causal=causal, window=None, cap=None,
                bias=False, seg=False, valid=None)


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


# ---------------------------------------------------------------------------------------
# export mode (CPU build host)
# ---------------------------------------------------------------------------------------

def do_export(args):
    import jax
    from ejaot_kernels.flash_attention.triton_gpu import flash_attention_impl
    out_dir = Path(args.export)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"compute_capability": args.cc, **json.loads(args.config)}
    checks = [jax.export.DisabledSafetyCheck.custom_call("triton_kernel_call_ffi")]
    num, tim, dtypes = selected(args)
    jobs = [] if args.skip_numerics else [(c, dt) for c in num for dt in dtypes[c["name"]]]
    jobs += [] if args.skip_timing else [(c, "bfloat16") for c in tim]
    used = {}
    for c, dt in jobs:
        cfg = config
        if args.tuned:
            cfg = tuned_config(c, dt, args.cc) or config
            used[f"{c['name']} {dt}"] = "tuned" if cfg is not config else "heuristic"
        fwd, bwd = make_fns(c, flash_attention_impl, cfg)
        av = avals(c, dt)
        t0 = time.perf_counter()
        e_f = jax.export.export(jax.jit(fwd), platforms=("cuda",), disabled_checks=checks)(*av)
        e_b = jax.export.export(jax.jit(bwd), platforms=("cuda",), disabled_checks=checks)(*av, av[0])
        (out_dir / export_name(c, dt, "fwd")).write_bytes(e_f.serialize())
        (out_dir / export_name(c, dt, "bwd")).write_bytes(e_b.serialize())
        print(f"exported {c['name']} {dt} in {time.perf_counter() - t0:.1f}s", flush=True)
    (out_dir / "export.json").write_text(json.dumps({"config": config, "jax": jax.__version__,
                                                     "tuned": used if args.tuned else None}, indent=1))


def tuned_config(c, dtype, cc):
    """The config `ejaot build` would give a bucket of exactly this case's shape, dtype and
    static arguments on gpu-sm<cc> if it has a current record in
    kernels/flash_attention/tuned/; else None."""
    from ejaot import toolchain, tuning
    from ejaot.registry import get_kernel
    from ejaot.targets import get_target
    spec = get_kernel("flash_attention")
    target = get_target(f"gpu-sm{cc}")
    dims = dict(batch=c["B"], seq=c["S"], kv_seq=c["T"], q_heads=c["HQ"], kv_heads=c["HK"], head_dim=c["D"])
    static = spec.canonical_static(case_static(c))
    cfg, source = tuning.choose_config(spec, "triton", target, dims, dtype, static,
                                       toolchain.toolchain(target.platform, "triton"))
    return {**cfg, "compute_capability": cc} if source["kind"] == "tuned" else None


# ---------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------

def run_numerics(kernel, cases, dtypes, rng, results):
    import jax
    import jax.numpy as jnp
    from ejaot_kernels.flash_attention.xla import flash_attention_impl as xla_impl
    print("\n## numerics (relative L2 error vs XLA reference in float32, highest precision)\n", flush=True)
    print("| case | dtype | out | dq | dk | dv | dbias | max abs (out) | result |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for c in cases:
        for dt in dtypes[c["name"]]:
            rec = {"case": c["name"], "dtype": dt}
            try:
                fwd, bwd = kernel.fns(c, dt)
                ref_fwd, ref_bwd = make_fns(c, xla_impl, {})
                args = make_args(c, dt, rng)
                ct = jnp.asarray(rng.standard_normal(args[0].shape), args[0].dtype)
                out = fwd(*args)
                grads = bwd(*args, ct)
                f32 = [a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args]
                with jax.default_matmul_precision("highest"):
                    ref_out = jax.jit(ref_fwd)(*f32)
                    ref_grads = jax.jit(ref_bwd)(*f32, ct.astype(jnp.float32))
                errs = {"out": rel_err(out, ref_out)}
                for nm, g, r in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
                    errs[nm] = rel_err(g, r)
                tol = TOL[dt]
                ok = all(e[0] <= tol for e in errs.values())
                rec.update(errors={k: {"rel": v[0], "max_abs": v[1]} for k, v in errs.items()},
                           tol=tol, passed=ok)
                cells = [f"{errs[k][0]:.2e}" if k in errs else "-" for k in ("out", "dq", "dk", "dv", "dbias")]
                print(f"| {c['name']} | {dt} | " + " | ".join(cells)
                      + f" | {errs['out'][1]:.2e} | {'PASS' if ok else 'FAIL'} |", flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                rec.update(passed=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=6))
                print(f"| {c['name']} | {dt} | ERROR {type(e).__name__}: {str(e)[:200]} | | | | | | FAIL |",
                      flush=True)
            results.append(rec)


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------

def bench(fn, args, iters):
    """Median seconds per call over `iters` timed batches; each batch runs enough
    back-to-back calls (about 20 ms) that launch and dispatch overheads stay hidden."""
    import jax
    jax.block_until_ready(fn(*args))          # compile, first run
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    reps = max(1, min(50, int(0.02 / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def run_timing(kernel, cases, rng, iters, results):
    import jax
    import jax.numpy as jnp
    print("\n## speed (TFLOP/s; fwd+bwd counts 3.5x the forward FLOPs; ms in parentheses)\n", flush=True)
    print("| shape | triton fwd | cudnn fwd | xla fwd | triton/cudnn fwd | triton fwd+bwd | cudnn fwd+bwd "
          "| xla fwd+bwd | triton/cudnn fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for c in cases:
        b, s, hq, hk, d = c["B"], c["S"], c["HQ"], c["HK"], c["D"]
        flops = 4.0 * b * hq * s * s * d * (0.5 if c["causal"] else 1.0)
        rec = {"case": c["name"], "B": b, "S": s, "Hq": hq, "Hk": hk, "D": d, "causal": c["causal"],
               "fwd_flops": flops, "ms": {}, "tflops": {}, "errors": {}}
        try:
            args = make_args(c, "bfloat16", rng)
            ct = jnp.asarray(rng.standard_normal(args[0].shape), jnp.bfloat16)
        except Exception as e:  # noqa: BLE001
            rec["errors"]["inputs"] = f"{type(e).__name__}: {e}"
            results.append(rec)
            print(f"| {c['name']} | inputs failed: {e} |", flush=True)
            continue
        q, k, v, vl = args
        fns = {}
        try:
            kf, kb = kernel.fns(c, "bfloat16")
            fns["triton"] = (lambda kf=kf: (kf, (q, k, v, vl)), lambda kb=kb: (kb, (q, k, v, vl, ct)))
        except Exception as e:  # noqa: BLE001
            rec["errors"]["triton"] = f"{type(e).__name__}: {e}"
        for impl in ("cudnn", "xla"):
            def attn(q, k, v, impl=impl):
                return jax.nn.dot_product_attention(q, k, v, is_causal=c["causal"], implementation=impl)

            def attn_vjp(q, k, v, ct, attn=attn):
                return jax.vjp(attn, q, k, v)[1](ct)
            fns[impl] = (lambda attn=attn: (jax.jit(attn), (q, k, v)),
                         lambda attn_vjp=attn_vjp: (jax.jit(attn_vjp), (q, k, v, ct)))
        for impl in ("triton", "cudnn", "xla"):
            for kind, idx, mult in (("fwd", 0, 1.0), ("fwd+bwd", 1, 3.5)):
                key = f"{impl} {kind}"
                if impl not in fns:
                    continue
                try:
                    fn, fargs = fns[impl][idx]()
                    sec = bench(fn, fargs, iters)
                    rec["ms"][key] = sec * 1e3
                    rec["tflops"][key] = flops * mult / sec / 1e12
                except Exception as e:  # noqa: BLE001
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                    rec["errors"][key] = msg
                    print(f"  ({c['name']}: {key} failed: {msg})", flush=True)

        def cell(key):
            if key in rec["tflops"]:
                return f"{rec['tflops'][key]:.0f} ({rec['ms'][key]:.2f})"
            return "err" if key in rec["errors"] else "-"

        def ratio(kind):
            a, b_ = rec["tflops"].get(f"triton {kind}"), rec["tflops"].get(f"cudnn {kind}")
            if a and b_:
                rec[f"triton_over_cudnn_{kind}"] = a / b_
                return f"{a / b_:.2f}x"
            return "-"
        print(f"| {c['name']} | {cell('triton fwd')} | {cell('cudnn fwd')} | {cell('xla fwd')} | {ratio('fwd')} "
              f"| {cell('triton fwd+bwd')} | {cell('cudnn fwd+bwd')} | {cell('xla fwd+bwd')} "
              f"| {ratio('fwd+bwd')} |", flush=True)
        results.append(rec)


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
            "config_override": json.loads(args.config)}
    if args.artifacts and (Path(args.artifacts) / "export.json").exists():
        info["export"] = json.loads((Path(args.artifacts) / "export.json").read_text())
        if info["export"].get("tuned"):
            print("# configs: " + ", ".join(f"{k} {v}" for k, v in info["export"]["tuned"].items()), flush=True)
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    print(f"# flash_attention triton check on {info['device']} (jax {info['jax']}, triton "
          f"{info['triton']}, mode {info['mode']})", flush=True)
    seed = int.from_bytes(os.urandom(4), "little")
    info["seed"] = seed
    rng = np.random.default_rng(seed)
    num, tim, dtypes = selected(args)
    numerics, timing = [], []
    kernel = None
    try:
        kernel = Kernel(args)
    except Exception as e:  # noqa: BLE001
        info["kernel_error"] = f"{type(e).__name__}: {e}"
        print(f"kernel unavailable: {info['kernel_error']}\n(jax-triton 0.4.1 needs triton >= 3.7; "
              "without one, export on the build host with --export DIR and run here with "
              "--artifacts DIR)", flush=True)
    if kernel is not None and not args.skip_numerics:
        run_numerics(kernel, num, dtypes, rng, numerics)
    if not args.skip_timing:
        iters = args.iters or (3 if args.quick else 7)
        run_timing(kernel or _NoKernel(), tim, rng, iters, timing)
    n_fail = sum(not r.get("passed") for r in numerics)
    info["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    verdict = "PASS" if numerics and not n_fail else ("FAIL" if numerics else "NO NUMERICS")
    print(f"\nnumerics: {verdict} ({len(numerics) - n_fail}/{len(numerics)} passed); "
          f"elapsed {info['elapsed_s']} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "numerics": numerics, "timing": timing,
                               "verdict": verdict}, indent=1, default=str))
    print(f"wrote {out}")
    return 0 if verdict != "FAIL" else 1


class _NoKernel:
    def fns(self, c, dtype):
        raise RuntimeError("triton kernel unavailable")


if __name__ == "__main__":
    sys.exit(main())

"""Numerics of the Triton backends' tl kernels on the CPU, through Triton's interpreter
(tests/triton_interpret.py): each kernel launched directly on NumPy arrays and checked in
float32 against a float64 reference on fresh random inputs. The Gluon (sm90) kernels have
no interpreter; the H200 verify runs check them (BENCHMARKS.md).

Checked here: the shared MLA decode library (kernels/_shared/mla_triton.py: the portable
decode kernel over a contiguous and a paged latent cache, one key range or split keys, and the
combine kernel that merges the splits), page_attention's paged GQA decode and combine, and
flash_attention's Triton forward and two-kernel backward (the reference's gradients by
jax.vjp in float64). Rows no query may attend to hold NaN in the paged and MLA caches: a
kernel that read them into an output would fail. Last, the Triton backends' JAX wrappers end
to end (jax_triton.triton_call replaced by the interpreter), under jax.jit, against each
kernel's XLA backend."""
from __future__ import annotations

import pytest

from triton_interpret import run_interpreted

pytest.importorskip("triton")


def _assert_close(errs: dict, rel: float) -> None:
    """errs: {output: [max |got - want|, max |want|, got all finite]}."""
    for what, (err, scale, finite) in errs.items():
        assert finite, (what, errs)
        assert err <= rel * max(1.0, scale), (what, errs)

_MLA = r'''
import json
import numpy as np
from triton_interpret import NpTensor
from ejaot_kernels._shared.mla_triton import _combine_kernel, _mla_decode_kernel, combine_tiles

LOG2E = 1.4426950408889634
rng = np.random.default_rng(20261204)


def pow2(n):
    return max(16, 1 << (n - 1).bit_length())


def combine(part, lse):
    b, splits, m, r = part.shape
    out = np.full((b, m, r), np.nan, np.float32)     # a row left unwritten stays NaN
    sp, bm, bc = combine_tiles(splits, m, r)
    _combine_kernel[(-(-m // bm), -(-r // bc), b)](NpTensor(part), NpTensor(lse), NpTensor(out), M=m, R=r,
                                                  NUM_SPLITS=splits, SP=sp, BLOCK_M=bm, BLOCK_C=bc)
    return out


def decode(ql, bq, kv_rows, bk_rows, vl, bt, s, hq, t, splits, causal, page):
    b, m, r = ql.shape
    e = bq.shape[-1]
    if splits == 1:
        o, lse = np.full((b, m, r), np.nan, np.float32), np.zeros(1, np.float32)
    else:
        o, lse = np.full((b, splits, m, r), np.nan, np.float32), np.full((b, splits, m), np.nan, np.float32)
    scale = 1.0 / np.sqrt(r + e)
    _mla_decode_kernel[(-(-m // 16), splits, b)](
        NpTensor(ql), NpTensor(bq), NpTensor(kv_rows), NpTensor(bk_rows), NpTensor(vl), NpTensor(bt),
        NpTensor(o), NpTensor(lse), qk_scale=float(scale) * LOG2E, SEQ=s, KV_SEQ=t, HQ=hq, R=r, RP=pow2(r),
        E=e, EP=pow2(e), HAS_ROPE=True, CAUSAL=causal, NUM_SPLITS=splits, BLOCK_H=16, BLOCK_N=16, STAGES=1,
        DOT_PREC="ieee", PAGE=page, KV_ROWS=kv_rows.shape[0])
    return (o if splits == 1 else combine(o, lse)), scale


def attend(q, qe, keys, ekeys, keep, scale):
    """float64 reference for one sequence: q [s, hq, r], qe [s, e], keys [t, r], ekeys [t, e],
    keep [s, t] -> [s, hq, r]; a row that keeps no key gives zeros."""
    logits = (np.einsum("shr,tr->sht", q, keys) + np.einsum("se,te->st", qe, ekeys)[:, None, :]) * scale
    logits = np.where(keep[:, None, :], logits, -np.inf)
    mx = logits.max(-1, keepdims=True)
    p = np.exp(logits - np.where(np.isinf(mx), 0.0, mx))
    den = p.sum(-1, keepdims=True)
    return np.einsum("sht,tr->shr", p / np.where(den == 0, 1.0, den), np.nan_to_num(keys))   # NaN rows: weight 0


def contiguous(b, s, hq, t, r, e, splits, causal, kv_len, q_len):
    ql = rng.standard_normal((b, s * hq, r)).astype(np.float32)
    bq = rng.standard_normal((b, s, e)).astype(np.float32)
    kv = rng.standard_normal((b, t, r)).astype(np.float32)
    bk = rng.standard_normal((b, t, e)).astype(np.float32)
    kv[:, kv_len:] = np.nan       # past the valid length: never read into the output
    bk[:, kv_len:] = np.nan
    out, scale = decode(ql, bq, kv.reshape(b * t, r), bk.reshape(b * t, e), np.array([q_len, kv_len], np.int32),
                        np.zeros(1, np.int32), s, hq, t, splits, causal, 0)
    kpos, qpos = np.arange(t), np.arange(s) + kv_len - q_len
    keep = (kpos[None, :] < kv_len) & ((kpos[None, :] <= qpos[:, None]) | (not causal))
    ref = np.stack([attend(ql[i].reshape(s, hq, r).astype(np.float64), bq[i].astype(np.float64),
                           kv[i].astype(np.float64), bk[i].astype(np.float64), keep, scale) for i in range(b)])
    return out, ref.reshape(b, s * hq, r)


def paged(b, hq, page, blocks, pages, r, e, splits, ctx, bad):
    """`bad`: (sequence, block) table entries set out of range inside the context: their keys
    are dropped, never read from another page."""
    ql = rng.standard_normal((b, hq, r)).astype(np.float32)
    bq = rng.standard_normal((b, 1, e)).astype(np.float32)
    kv = rng.standard_normal((pages, page, r)).astype(np.float32)
    bk = rng.standard_normal((pages, page, e)).astype(np.float32)
    bt = rng.permutation(pages)[:b * blocks].reshape(b, blocks).astype(np.int32)
    t = blocks * page
    for i in range(b):            # a context's unused rows of its pages hold NaN
        for j in range(ctx[i], t):
            kv[bt[i, j // page], j % page] = np.nan
            bk[bt[i, j // page], j % page] = np.nan
    for i, j, v in bad:
        bt[i, j] = v
    out, scale = decode(ql, bq, kv.reshape(pages * page, r), bk.reshape(pages * page, e), np.array(ctx, np.int32),
                        bt, 1, hq, t, splits, False, page)
    ref = []
    for i in range(b):
        j = np.arange(t)
        pg = bt[i, j // page]
        keep = (j < ctx[i]) & (pg >= 0) & (pg < pages)
        rows = np.where(keep, pg, 0) * page + j % page
        ref.append(attend(ql[i][None].astype(np.float64), bq[i].astype(np.float64),
                          kv.reshape(-1, r)[rows].astype(np.float64), bk.reshape(-1, e)[rows].astype(np.float64),
                          keep[None], scale)[0])
    return out, np.stack(ref)


def combine_only(b, splits, m, r):
    """The combine alone on random partials: several row and column blocks per sequence, a
    row no split saw (lse -inf everywhere) and a split that saw nothing."""
    part = rng.standard_normal((b, splits, m, r)).astype(np.float32)
    lse = (rng.standard_normal((b, splits, m)) * 4).astype(np.float32)
    lse[0, :, 1] = -np.inf
    part[0, :, 1] = 0.0
    lse[:, splits // 2] = -np.inf
    part[:, splits // 2] = 0.0
    mx = lse.max(1, keepdims=True)
    w = np.exp2(lse.astype(np.float64) - np.where(np.isinf(mx), 0.0, mx))
    den = w.sum(1)
    ref = (w[..., None] * part).sum(1) / np.where(den == 0, 1.0, den)[..., None]
    return combine(part, lse), ref


for name, fn, kw in CASES:
    out, ref = {"contiguous": contiguous, "paged": paged, "combine": combine_only}[fn](**kw)
    print("RESULT " + json.dumps({"name": name, "err": float(np.abs(out - ref).max()),
                                  "ref": float(np.abs(ref).max()), "finite": bool(np.isfinite(out).all()),
                                  "zero_rows": int((np.abs(ref).max(-1) == 0).sum()),
                                  "zero_out_rows": int((np.abs(out).max(-1) == 0).sum())}), flush=True)
'''

_CASES = [
    ("one range, kv_len past a block edge", "contiguous",
     dict(b=2, s=1, hq=16, t=96, r=32, e=16, splits=1, causal=False, kv_len=83, q_len=1)),
    ("3 splits", "contiguous",
     dict(b=2, s=1, hq=16, t=96, r=32, e=16, splits=3, causal=False, kv_len=83, q_len=1)),
    ("2 queries, causal, 2 splits", "contiguous",
     dict(b=1, s=2, hq=8, t=64, r=32, e=16, splits=2, causal=True, kv_len=40, q_len=2)),
    ("rank not a power of two, 5 splits", "contiguous",
     dict(b=1, s=1, hq=4, t=80, r=48, e=8, splits=5, causal=False, kv_len=49, q_len=1)),
    ("combine: 64 splits over 8 row x 4 column blocks", "combine", dict(b=2, splits=64, m=16, r=128)),
    ("combine: 128 splits, rank 96", "combine", dict(b=1, splits=128, m=8, r=96)),
    ("combine: 3 splits, 128 rows", "combine", dict(b=1, splits=3, m=128, r=512)),
    ("paged, random contexts", "paged",
     dict(b=3, hq=16, page=16, blocks=6, pages=40, r=32, e=16, splits=1, ctx=[96, 37, 1], bad=[])),
    ("paged, 4 splits, an empty context, bad table entries", "paged",
     dict(b=3, hq=16, page=16, blocks=6, pages=40, r=32, e=16, splits=4, ctx=[90, 0, 70],
          bad=[(0, 2, -1), (2, 1, 40), (2, 5, 1 << 30)])),
]


@pytest.fixture(scope="module")
def mla_results():
    script = f"CASES = {_CASES!r}\n" + _MLA
    return {r["name"]: r for r in run_interpreted(script)}


@pytest.mark.parametrize("name", [c[0] for c in _CASES])
def test_mla_decode_and_combine_match_the_float64_reference(mla_results, name):
    r = mla_results[name]
    assert r["finite"], r
    assert r["err"] <= 2e-6 * max(1.0, r["ref"]), r
    assert r["zero_out_rows"] == r["zero_rows"], r     # rows that see no key: zeros, not NaN


# -- page_attention (kernels/page_attention/triton_gpu.py): paged GQA decode, split keys ------

_PAGED_GQA = r'''
import json
import numpy as np
from triton_interpret import NpTensor
from ejaot_kernels.page_attention.triton_gpu import _combine_kernel, _decode_kernel

LOG2E = 1.4426950408889634
rng = np.random.default_rng(20261205)


def pow2(n):
    return max(16, 1 << (n - 1).bit_length())


def run(s, hq, hk, d, ps, mb, pages, ppb, splits, ctx, bad, window=None, cap=None):
    g = hq // hk
    q = rng.standard_normal((s, hq, d)).astype(np.float32)
    kc = rng.standard_normal((hk, pages, ps, d)).astype(np.float32)
    vc = rng.standard_normal((hk, pages, ps, d)).astype(np.float32)
    tables = rng.permutation(pages)[:s * mb].reshape(s, mb).astype(np.int32)
    ctx = np.array(ctx, np.int32)
    for i in range(s):            # rows a sequence does not attend to (past its context, before
        for p in range(mb * ps):  # its window) hold NaN
            if p >= ctx[i] or (window is not None and p < ctx[i] - window):
                kc[:, tables[i, p // ps], p % ps] = np.nan
                vc[:, tables[i, p // ps], p % ps] = np.nan
    for i, j, v in bad:
        tables[i, j] = v
    scale = d ** -0.5
    if splits == 1:
        first, lse = np.full((s, hq, d), np.nan, np.float32), np.zeros(1, np.float32)
    else:
        first, lse = np.full((s, hq, splits, d), np.nan, np.float32), np.full((s, hq, splits), np.nan, np.float32)
    _decode_kernel[(s, hk, splits)](
        NpTensor(q), NpTensor(kc), NpTensor(vc), NpTensor(ctx), NpTensor(tables), NpTensor(first), NpTensor(lse),
        sm_scale=scale, qk_scale=scale * LOG2E, soft_cap=cap if cap is not None else 1.0, HAS_CAP=cap is not None,
        WINDOW=window or 0, HAS_WINDOW=window is not None, HQ=hq, G=g, BLOCK_G=pow2(g), D=d, BLOCK_D=pow2(d),
        TOTAL_PAGES=pages, PS=ps, MB=mb, PPB=ppb, BLOCK_N=pow2(ppb * ps), NUM_SPLITS=splits, DOT_PREC="tf32x3")
    out = first
    if splits > 1:
        out = np.full((s, hq, d), np.nan, np.float32)
        _combine_kernel[(s * hq,)](NpTensor(first), NpTensor(lse), NpTensor(out), HQ=hq, D=d, BLOCK_D=pow2(d),
                                   NUM_SPLITS=splits, BLOCK_S=1 << (splits - 1).bit_length())
    # float64 reference: page_attention's rule (xla.token_keep)
    t = mb * ps
    pos = np.arange(t)
    c = np.maximum(ctx, 0)[:, None]
    keep = pos[None, :] < c
    if window is not None:
        keep &= pos[None, :] >= c - window
    page_of = tables[:, pos // ps]
    keep &= (page_of >= 0) & (page_of < pages)
    safe = np.where(keep, page_of, 0)
    k = kc[:, safe, pos % ps].astype(np.float64)            # [hk, s, t, d]
    v = vc[:, safe, pos % ps].astype(np.float64)
    logits = np.einsum("skgd,kstd->skgt", q.reshape(s, hk, g, d).astype(np.float64), k) * scale
    if cap is not None:
        logits = cap * np.tanh(logits / cap)
    logits = np.where(keep[:, None, None, :], logits, -np.inf)
    mx = logits.max(-1, keepdims=True)
    p = np.exp(logits - np.where(np.isinf(mx), 0.0, mx))
    den = p.sum(-1, keepdims=True)
    ref = np.einsum("skgt,kstd->skgd", p / np.where(den == 0, 1.0, den), np.where(keep[None, :, :, None], v, 0.0))
    ref = ref.reshape(s, hq, d)
    return out, ref


for name, kw in CASES:
    out, ref = run(**kw)
    print("RESULT " + json.dumps({"name": name, "err": float(np.abs(out - ref).max()),
                                  "ref": float(np.abs(ref).max()), "finite": bool(np.isfinite(out).all()),
                                  "zero_rows": int((np.abs(ref).max(-1) == 0).sum()),
                                  "zero_out_rows": int((np.abs(out).max(-1) == 0).sum())}), flush=True)
'''

_GQA_CASES = [
    ("one range, partial last pages", dict(s=3, hq=8, hk=2, d=32, ps=16, mb=6, pages=40, ppb=2, splits=1,
                                            ctx=[96, 37, 5], bad=[])),
    ("3 splits, head_dim 40, a context past the table, an empty one",
     dict(s=3, hq=8, hk=2, d=40, ps=16, mb=6, pages=40, ppb=1, splits=3, ctx=[500, 0, 61], bad=[])),
    ("2 splits, bad table entries inside contexts",
     dict(s=2, hq=4, hk=4, d=32, ps=8, mb=8, pages=30, ppb=2, splits=2, ctx=[64, 50],
          bad=[(0, 3, -1), (1, 0, 30), (1, 5, -(1 << 31))])),
    ("sliding window and soft cap, 2 splits",
     dict(s=2, hq=8, hk=1, d=32, ps=16, mb=6, pages=40, ppb=2, splits=2, ctx=[90, 20], bad=[], window=33,
          cap=5.0)),
]


@pytest.fixture(scope="module")
def gqa_results():
    return {r["name"]: r for r in run_interpreted(f"CASES = {_GQA_CASES!r}\n" + _PAGED_GQA)}


@pytest.mark.parametrize("name", [c[0] for c in _GQA_CASES])
def test_page_attention_decode_and_combine_match_the_float64_reference(gqa_results, name):
    r = gqa_results[name]
    assert r["finite"], r
    assert r["err"] <= 2e-6 * max(1.0, r["ref"]), r
    assert r["zero_out_rows"] == r["zero_rows"], r


# -- flash_attention (kernels/flash_attention/triton_gpu.py): the Triton forward and the ------
# two-kernel backward (pointer loads; the TMA, fused-dQ and Gluon paths need a GPU)

_FLASH = r'''
import json
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from triton_interpret import NpTensor
from ejaot_kernels.attention.xla import attention_core
from ejaot_kernels.flash_attention.triton_gpu import (_bwd_dkdv_kernel, _bwd_dq_kernel, _bwd_preprocess_kernel,
                                                      _fwd_kernel)

LOG2E = 1.4426950408889634
rng = np.random.default_rng(20261206)
T = NpTensor


def run(b, s, t, hq, hk, d, q_len, kv_len, causal, window=None, cap=None, bias=False, segments=False, bm=16, bn=16):
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    q, k, v, do = f32(b, s, hq, d), f32(b, t, hk, d), f32(b, t, hk, d), f32(b, s, hq, d)
    bias_a = f32(b, hq, s, t) if bias else np.zeros(1, np.float32)
    qseg = rng.integers(0, 2, (b, s)).astype(np.int32) if segments else np.zeros(1, np.int32)
    kseg = rng.integers(0, 2, (b, t)).astype(np.int32) if segments else np.zeros(1, np.int32)
    vl = np.array([q_len, kv_len], np.int32)
    scale = d ** -0.5
    wl, wr = window if window is not None else (0, 0)
    ce = dict(sm_scale=scale, qk_scale=scale * LOG2E, soft_cap=cap if cap is not None else 1.0, SEQ=s, KV_SEQ=t,
              HQ=hq, HK=hk, D=d, WL=wl, WR=wr, CAUSAL=causal, WINDOW=window is not None, HAS_CAP=cap is not None,
              HAS_BIAS=bias, HAS_SEG=segments, FAST=cap is None and not bias, DOT_PREC="tf32x3")
    out, lse = np.zeros_like(q), np.zeros((b, hq, s), np.float32)
    _fwd_kernel[(-(-s // bm), b * hq)](T(q), T(k), T(v), T(k), T(v), T(bias_a), T(qseg), T(kseg), T(vl), T(out),
                                       T(lse), BLOCK_M=bm, BLOCK_N=bn, USE_TMA=False, WS=False, **ce)
    delta = np.zeros((b, hq, s), np.float32)
    _bwd_preprocess_kernel[(-(-s // 64), b * hq)](T(out), T(do), T(delta), SEQ=s, HQ=hq, D=d, BLOCK_M=64)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    dbias = np.zeros_like(bias_a)
    _bwd_dkdv_kernel[(-(-t // bn), b * hk)](T(q), T(k), T(v), T(bias_a), T(qseg), T(kseg), T(vl), T(do), T(lse),
                                           T(delta), T(np.zeros(1, np.float32)), T(dk), T(dv), T(dbias),
                                           BLOCK_M=bm, BLOCK_N=bn, FUSED_DQ=False, **ce)
    dq = np.zeros_like(q)
    _bwd_dq_kernel[(-(-s // bm), b * hq)](T(q), T(k), T(v), T(bias_a), T(qseg), T(kseg), T(vl), T(do), T(lse),
                                         T(delta), T(dq), BLOCK_M=bm, BLOCK_N=bn, **ce)

    def ref(q, k, v, bias_r):
        keep = ((jnp.asarray(qseg)[:, :, None] == jnp.asarray(kseg)[:, None, :])[:, None] if segments else None)
        return attention_core(q, k, v, (q_len, kv_len), bias=bias_r if bias else None, keep_mask=keep,
                              causal=causal, sliding_window=window, logits_soft_cap=cap, softmax_scale=scale,
                              dtype="float64", softmax_dtype="float64")[0]
    x64 = lambda a: jnp.asarray(a, jnp.float64)
    want, vjp = jax.vjp(ref, x64(q), x64(k), x64(v), x64(bias_a))
    grads = vjp(x64(do))
    # rows past q_len are padding: compare the valid rows (their outputs are unspecified)
    got = {"out": out[:, :q_len], "dq": dq[:, :q_len], "dk": dk, "dv": dv}
    ref_ = {"out": np.asarray(want)[:, :q_len], "dq": np.asarray(grads[0])[:, :q_len], "dk": np.asarray(grads[1]),
            "dv": np.asarray(grads[2])}
    if bias:
        got["dbias"], ref_["dbias"] = dbias[:, :, :q_len], np.asarray(grads[3])[:, :, :q_len]
    return {n: [float(np.abs(got[n] - ref_[n]).max()), float(np.abs(ref_[n]).max()), bool(np.isfinite(got[n]).all())]
            for n in got}


for name, kw in CASES:
    print("RESULT " + json.dumps({"name": name, "errs": run(**kw)}), flush=True)
'''

_FLASH_CASES = [
    ("causal, GQA, ragged blocks", dict(b=2, s=40, t=56, hq=4, hk=2, d=32, q_len=40, kv_len=56, causal=True)),
    ("causal, valid lengths short of the bucket",
     dict(b=1, s=48, t=64, hq=2, hk=1, d=32, q_len=37, kv_len=50, causal=True)),
    ("bias, soft cap, sliding window", dict(b=1, s=32, t=48, hq=2, hk=2, d=16, q_len=32, kv_len=48, causal=False,
                                            window=(9, 4), cap=3.0, bias=True)),
    ("segments, causal, GQA", dict(b=2, s=32, t=32, hq=4, hk=1, d=32, q_len=32, kv_len=32, causal=True,
                                   segments=True)),
]


@pytest.fixture(scope="module")
def flash_results():
    return {r["name"]: r for r in run_interpreted(f"CASES = {_FLASH_CASES!r}\n" + _FLASH)}


@pytest.mark.parametrize("name", [c[0] for c in _FLASH_CASES])
def test_flash_attention_forward_and_backward_match_the_float64_reference(flash_results, name):
    errs = flash_results[name]["errs"]
    assert set(errs) >= {"out", "dq", "dk", "dv"}
    _assert_close(errs, 1e-5)


# -- the Triton backends' JAX wrappers end to end: jax_triton.triton_call replaced by the --------
# interpreter (triton_interpret.emulated_triton_call), each against the kernel's XLA backend
# on its own example inputs, under jax.jit; configs for sm80 (no TMA, no Gluon)

_WRAPPERS = r'''
import json
import numpy as np
import jax
import jax.numpy as jnp
import jax_triton
from triton_interpret import emulated_triton_call
jax_triton.triton_call = emulated_triton_call
from ejaot.spec.registry import get_kernel

rng = np.random.default_rng(20261207)


def inputs_for(name, dims, present=(), static={}):
    spec = get_kernel(name)
    dims = spec.resolve_dims(dims)
    inputs = spec.make_inputs(dims, "float32", tuple(present), static, rng)
    return inputs, np.array([dims[d] for d in spec.valid_length_dims], np.int32)


def err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return [float(np.abs(got - want).max()), float(np.abs(want).max()), bool(np.isfinite(got).all())]


def forward(kernel, dims, present, static, config):
    import importlib
    tri = importlib.import_module(f"ejaot_kernels.{kernel}.triton_gpu")
    xla = importlib.import_module(f"ejaot_kernels.{kernel}.xla")
    inputs, vl = inputs_for(kernel, dims, present, static)
    impl = getattr(tri, f"{kernel}_impl")
    got = jax.jit(lambda arrays: impl(arrays, vl, config=config, **static)[0])(inputs)     # as a server runs it
    want = getattr(xla, f"{kernel}_impl")(inputs, vl, config={}, **static)[0]
    return {"out": err(got, want)}


def flash_grads(dims, present, static, config):
    from ejaot_kernels.flash_attention import triton_gpu as tri, xla
    inputs, vl = inputs_for("flash_attention", dims, present, static)
    names = ("query", "key", "value")

    def f(impl, cfg):
        def call(q, k, v):
            return impl({**inputs, "query": q, "key": k, "value": v}, vl, config=cfg, **static)[0]
        return call
    primals = [jnp.asarray(inputs[n]) for n in names]
    got, vjp_t = jax.vjp(jax.jit(f(tri.flash_attention_impl, config)), *primals)
    want, vjp_x = jax.vjp(f(xla.flash_attention_impl, {}), *primals)
    ct = jnp.asarray(rng.standard_normal(got.shape).astype(np.float32))
    out = {"out": err(got, want)}
    for n, g, w in zip(("dq", "dk", "dv"), vjp_t(ct), vjp_x(ct)):
        out[n] = err(g, w)
    return out


for name, fn, kw in CASES:
    print("RESULT " + json.dumps({"name": name, "errs": {"forward": forward, "flash_grads": flash_grads}[fn](**kw)}),
          flush=True)
'''

_WRAPPER_CASES = [
    ("mla_attention, contiguous, causal, 3 splits", "forward", dict(
        kernel="mla_attention",
        dims=dict(batch=2, seq=2, kv_seq=80, q_heads=8, kv_heads=8, head_dim=16, kv_lora_rank=32, rope_dim=16),
        present=("b_q", "b_k"), static=dict(causal=True, softmax_scale=None),
        config={"kernel": "dot", "num_splits": 3, "compute_capability": 80})),
    ("paged_mla_attention, 4 splits", "forward", dict(
        kernel="paged_mla_attention",
        dims=dict(num_seqs=3, max_blocks=6, page_size=16, total_pages=40, q_heads=8, kv_heads=8, head_dim=16,
                  kv_lora_rank=32, rope_dim=16),
        present=("b_q", "rope_cache"), static=dict(softmax_scale=None),
        config={"kernel": "dot", "num_splits": 4, "compute_capability": 80})),
    ("page_attention, window, soft cap, 2 splits", "forward", dict(
        kernel="page_attention",
        dims=dict(num_seqs=3, max_blocks=6, page_size=16, total_pages=40, q_heads=8, kv_heads=2, head_dim=32),
        present=(), static=dict(attn_scale=None, attn_logits_soft_cap=4.0, sliding_window=40),
        config={"num_splits": 2, "pages_per_block": 2, "compute_capability": 80})),
    ("flash_mla_attention, causal, latent 16 (flash's kernels in the latent space)", "forward", dict(
        kernel="flash_mla_attention", dims=dict(batch=2, heads=2, seq=40, head_dim=32, latent_dim=16), present=(),
        static=dict(causal=True, softmax_scale=None),
        config={"compute_capability": 80, "block_m": 16, "block_n": 16})),
    ("flash_attention, causal GQA, forward and gradients", "flash_grads", dict(
        dims=dict(batch=2, seq=48, kv_seq=64, q_heads=4, kv_heads=2, head_dim=32), present=(),
        static=dict(causal=True, sliding_window=None, logits_soft_cap=None, softmax_scale=None),
        config={"compute_capability": 80, "block_m": 16, "block_n": 16, "bwd_block_m": 16, "bwd_block_n": 16,
                "dq_block_m": 16, "dq_block_n": 16})),
]


@pytest.fixture(scope="module")
def wrapper_results():
    return {r["name"]: r for r in run_interpreted(f"CASES = {_WRAPPER_CASES!r}\n" + _WRAPPERS)}


@pytest.mark.parametrize("name", [c[0] for c in _WRAPPER_CASES])
def test_triton_backend_matches_the_xla_backend_under_jit(wrapper_results, name):
    _assert_close(wrapper_results[name]["errs"], 1e-5)

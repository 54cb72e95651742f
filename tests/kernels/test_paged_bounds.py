"""Paged attention never reads another sequence's pages: page_attention and
paged_mla_attention mask out every token whose block-table entry is out of range (negative,
or >= total_pages) and clamp a context longer than its table to what the table covers, on
every backend (XLA directly, the Pallas TPU kernels in interpret mode, the Triton kernels'
index helper and lowering) and through a store's padded path. Each case is compared with a
float64 NumPy reference that skips those tokens; the pages an out-of-range entry used to
be clipped to (page 0 and the last page) hold NaN and large values, and no real entry
points at them, so any read of them shows."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import jax.numpy as jnp
from conftest import build_cpu_store

PA_NAMES = ("query", "key_cache", "value_cache", "context_lens", "block_tables")
MLA_NAMES = ("query", "latent_cache", "w_kc", "w_vc", "context_lens", "block_tables", "b_q", "rope_cache")
BIG = 3.0e3                        # the last page's values: finite, but a leak moves the softmax
OUT_OF_RANGE = (-1, -7, -(2 ** 31), None, None, 2 ** 31 - 1)   # None: total_pages, total_pages + 5


# -- the rule, in float64 NumPy --------------------------------------------------------------


def attended(ctx, table, page_size, total_pages, window=None):
    """(token positions, their pages) a sequence attends to: t < max(ctx, 0), inside the
    window counted back from that context, inside the table, on a page of the cache."""
    c = max(int(ctx), 0)
    lo = max(0, c - window) if window is not None else 0
    hi = min(c, len(table) * page_size)
    tok = np.arange(lo, max(lo, hi))
    page = np.asarray(table, np.int64)[tok // page_size]
    ok = (page >= 0) & (page < total_pages)
    return tok[ok], page[ok]


def pa_reference(query, key_cache, value_cache, context_lens, block_tables, *, attn_scale=None,
                 attn_logits_soft_cap=None, sliding_window=None):
    q, kc, vc = (np.asarray(x, np.float64) for x in (query, key_cache, value_cache))
    seqs, hq, d = q.shape
    hk, pages, ps, _ = kc.shape
    scale = d ** -0.5 if attn_scale is None else attn_scale
    out = np.zeros((seqs, hq, d))
    for s in range(seqs):
        tok, page = attended(context_lens[s], block_tables[s], ps, pages, sliding_window)
        if tok.size == 0:
            continue
        for h in range(hq):
            k, v = kc[h // (hq // hk), page, tok % ps], vc[h // (hq // hk), page, tok % ps]
            logits = k @ q[s, h] * scale
            if attn_logits_soft_cap is not None:
                logits = attn_logits_soft_cap * np.tanh(logits / attn_logits_soft_cap)
            p = np.exp(logits - logits.max())
            out[s, h] = (p / p.sum()) @ v
    return out


def mla_reference(query, latent_cache, w_kc, w_vc, context_lens, block_tables, b_q=None, rope_cache=None, *,
                  softmax_scale=None):
    f = lambda x: None if x is None else np.asarray(x, np.float64)
    q, cache, wk, wv, bq, rc = map(f, (query, latent_cache, w_kc, w_vc, b_q, rope_cache))
    seqs, hq, d = q.shape
    pages, ps = cache.shape[:2]
    hk = wk.shape[1]
    scale = (d + (0 if bq is None else bq.shape[-1])) ** -0.5 if softmax_scale is None else softmax_scale
    out = np.zeros((seqs, hq, d))
    for s in range(seqs):
        tok, page = attended(context_lens[s], block_tables[s], ps, pages)
        if tok.size == 0:
            continue
        kv = cache[page, tok % ps]
        for h in range(hq):
            kh = h // (hq // hk)
            logits = (kv @ wk[:, kh]) @ q[s, h]
            if bq is not None:
                logits = logits + rc[page, tok % ps] @ bq[s]
            p = np.exp(logits * scale - (logits * scale).max())
            out[s, h] = (p / p.sum()) @ (kv @ wv[:, kh])
    return out


# -- cases ----------------------------------------------------------------------------------


def tables_and_lens(rng, lens, mb, ps, pages, holes):
    """Block tables over the real pages 1..pages-2 (distinct where they suffice), with
    entries past each context on the poison pages (0, pages - 1) and, inside contexts,
    out-of-range entries at the columns `holes[s]` ("all": every column)."""
    real = np.arange(1, pages - 1)
    seqs = len(lens)
    if seqs * mb <= real.size:
        tables = rng.permutation(real)[: seqs * mb].reshape(seqs, mb)
    else:
        tables = np.stack([rng.choice(real, mb, replace=mb > real.size) for _ in range(seqs)])
    oor = [pages if v is None and i == 3 else pages + 5 if v is None else v
           for i, v in enumerate(OUT_OF_RANGE)]
    for s, n in enumerate(lens):
        used = -(-max(int(n), 0) // ps)
        tables[s, used:] = rng.choice([0, pages - 1], size=max(0, mb - used))
        cols = range(mb) if holes.get(s) == "all" else holes.get(s, ())
        for c in cols:
            tables[s, c] = oor[rng.integers(len(oor))]
    return tables.astype(np.int32)


def poison(cache, axis):
    """Page 0 full of NaN, the last page of large values: the pages an out-of-range entry
    used to be clipped to."""
    idx = [slice(None)] * cache.ndim
    idx[axis] = 0
    cache[tuple(idx)] = np.nan
    idx[axis] = -1
    cache[tuple(idx)] = BIG * (1 + np.abs(cache[tuple(idx)]))
    return cache


# lens: a long context (clamped: 100 > 5 * 8), a negative one, 0, a partial page; holes:
# out-of-range entries inside contexts, one sequence with every page out of range
PA_LENS = [100, 27, -3, 0, 13, 40, 38]
PA_HOLES = {0: (1, 4), 1: (0, 2), 4: (1,), 5: "all", 6: (4,)}


def pa_case(rng, *, lens=PA_LENS, holes=PA_HOLES, hq=8, hk=2, d=32, ps=8, mb=5, dtype=np.float32):
    pages = len(lens) * mb + 2
    kc = poison(rng.standard_normal((hk, pages, ps, d)), 1)
    vc = poison(rng.standard_normal((hk, pages, ps, d)), 1)
    q = rng.standard_normal((len(lens), hq, d))
    tables = tables_and_lens(rng, lens, mb, ps, pages, holes)
    return (q.astype(dtype), kc.astype(dtype), vc.astype(dtype), np.asarray(lens, np.int32), tables)


MLA_LENS = [100, 9, -2, 0, 31, 20]
MLA_HOLES = {0: (0, 3), 1: (1,), 4: (2,), 5: "all"}


def mla_case(rng, *, lens=MLA_LENS, holes=MLA_HOLES, hq=8, hk=2, d=16, r=32, e=8, ps=8, mb=4,
             dtype=np.float32, rope=True):
    pages = len(lens) * mb + 2
    cache = poison(rng.standard_normal((pages, ps, r)), 0)
    rc = poison(rng.standard_normal((pages, ps, e)), 0)
    cast = lambda x: x.astype(dtype)
    return {"query": cast(rng.standard_normal((len(lens), hq, d))), "latent_cache": cast(cache),
            "w_kc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
            "w_vc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
            "context_lens": np.asarray(lens, np.int32),
            "block_tables": tables_and_lens(rng, lens, mb, ps, pages, holes),
            "b_q": cast(rng.standard_normal((len(lens), e))) if rope else None,
            "rope_cache": cast(rc) if rope else None}


def run_pa(impl, args, config=None, **static):
    static = {"attn_scale": None, "attn_logits_soft_cap": None, "sliding_window": None, **static}
    inputs = {n: jnp.asarray(a) for n, a in zip(PA_NAMES, args)}
    (out,) = impl(inputs, jnp.zeros((0,), jnp.int32), config=config or {}, **static)
    return np.asarray(out, np.float64)


def run_mla(impl, x, config=None, softmax_scale=None):
    inputs = {n: None if x[n] is None else jnp.asarray(x[n]) for n in MLA_NAMES}
    (out,) = impl(inputs, jnp.zeros((0,), jnp.int32), config=config or {}, softmax_scale=softmax_scale)
    return np.asarray(out, np.float64)


def check(got, want, lens, dtype, holes):
    tol = 2e-5 if dtype == np.float32 else 3e-2
    assert np.isfinite(got).all(), "a poison page (or a NaN) reached the output"
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    for s, n in enumerate(lens):
        if n <= 0 or holes.get(s) == "all":
            assert (got[s] == 0).all(), f"sequence {s} attends to nothing: exact zeros expected"


# -- page_attention ----------------------------------------------------------------------------

PA_STATICS = [
    pytest.param({}, np.float32, id="f32"),
    pytest.param(dict(attn_logits_soft_cap=5.0, attn_scale=0.3), np.float32, id="f32-cap-scale"),
    # the window counts back from the given context: sequence 0's (100) lies past its table
    pytest.param(dict(sliding_window=11), np.float32, id="f32-window"),
    pytest.param(dict(sliding_window=70, attn_logits_soft_cap=8.0), ml_dtypes.bfloat16, id="bf16-window-cap"),
]


@pytest.mark.parametrize("static,dtype", PA_STATICS)
def test_page_attention_xla_masks_out_of_range_pages(static, dtype, rng):
    from ejaot_kernels.page_attention.xla import page_attention_impl
    args = pa_case(rng, dtype=dtype)
    got = run_pa(page_attention_impl, args, **static)
    check(got, pa_reference(*args, **static), PA_LENS, dtype, PA_HOLES)
    if static.get("sliding_window") == 11:
        assert (got[0] == 0).all(), "a window wholly past the table attends to nothing"


def test_page_attention_xla_long_context_is_clamped_to_the_table(rng):
    """A context longer than the table equals the table's length (no window); the chunked
    path (sequences in several gathers) agrees."""
    import ejaot_kernels.page_attention.xla as xla
    args = pa_case(rng, holes={})
    clamped = (*args[:3], np.minimum(args[3], 5 * 8), args[4])
    want = run_pa(xla.page_attention_impl, clamped)
    np.testing.assert_array_equal(run_pa(xla.page_attention_impl, args), want)
    np.testing.assert_allclose(want, pa_reference(*args), atol=2e-5, rtol=2e-5)


def test_page_attention_xla_chunked_gather_agrees(rng, monkeypatch):
    import ejaot_kernels.page_attention.xla as xla
    args = pa_case(rng)
    hk, _, ps, d = args[1].shape
    monkeypatch.setattr(xla, "_MAX_GATHER_ELEMENTS", 3 * hk * args[4].shape[1] * ps * d)   # 3 per chunk
    check(run_pa(xla.page_attention_impl, args), pa_reference(*args), PA_LENS, np.float32, PA_HOLES)


PA_PALLAS = [
    pytest.param(dict(pages_per_compute_block=1, inline_seq_dim=False), {}, id="ppcb1-grid"),
    pytest.param(dict(pages_per_compute_block=2, inline_seq_dim=True), dict(sliding_window=21), id="ppcb2-inline-window"),
    pytest.param(dict(pages_per_compute_block=5, megacore_mode="batch"), dict(attn_logits_soft_cap=10.0),
                 id="ppcb5-batch-cap"),
    pytest.param(dict(pages_per_compute_block=3, inline_seq_dim=False, megacore_mode="kv_head"),
                 dict(sliding_window=11), id="ppcb3-grid-window-past-table"),
]


@pytest.mark.parametrize("config,static", PA_PALLAS)
def test_page_attention_pallas_tpu_masks_out_of_range_pages(config, static, rng):
    """TPU interpret mode raises on an out-of-bounds DMA and fills unfetched VMEM with NaN:
    an out-of-range page fetched, or its stale slot used, fails here."""
    from ejaot_kernels.page_attention.pallas_tpu import page_attention_impl
    args = pa_case(rng, d=128)
    got = run_pa(page_attention_impl, args, {**config, "interpret": True}, **static)
    check(got, pa_reference(*args, **static), PA_LENS, np.float32, PA_HOLES)


def test_page_attention_triton_token_rule(rng):
    """The Triton kernel's page test (page_in_range, operators only) on NumPy arrays,
    combined with its token range as the kernel computes it, against the rule."""
    triton_gpu = pytest.importorskip("ejaot_kernels.page_attention.triton_gpu")
    in_range = getattr(triton_gpu.page_in_range, "fn", triton_gpu.page_in_range)
    pages, ps, mb = 11, 4, 6
    for _ in range(50):
        ctx = int(rng.integers(-5, mb * ps + 20))
        window = None if rng.random() < 0.3 else int(rng.integers(1, 30))
        table = rng.integers(-3, pages + 3, size=mb)
        c = max(ctx, 0)                                          # as the kernel computes them
        hi = min(c, mb * ps)
        lo = min(max(c - window, 0), hi) if window else 0
        pos = np.arange(mb * ps)
        got = (pos < hi) & (pos >= lo) & in_range(table[pos // ps], pages)
        tok, _ = attended(ctx, table, ps, pages, window)
        np.testing.assert_array_equal(np.flatnonzero(got), tok)
    assert in_range(np.array([-1, 0, pages - 1, pages, -(2 ** 31), 2 ** 31 - 1]), pages).tolist() == \
        [False, True, True, False, False, False]


# -- paged_mla_attention -------------------------------------------------------------------------

MLA_CASES = [
    pytest.param(dict(), None, id="rope"),
    pytest.param(dict(rope=False, hq=4, hk=1), 0.2, id="no-rope-scale"),
    pytest.param(dict(dtype=ml_dtypes.bfloat16), None, id="bf16"),
]


@pytest.mark.parametrize("case,scale", MLA_CASES)
def test_paged_mla_xla_masks_out_of_range_pages(case, scale, rng):
    from ejaot_kernels.paged_mla_attention.xla import paged_mla_attention_impl
    x = mla_case(rng, **case)
    got = run_mla(paged_mla_attention_impl, x, softmax_scale=scale)
    want = mla_reference(*(x[n] for n in MLA_NAMES), softmax_scale=scale)
    check(got, want, MLA_LENS, x["query"].dtype, MLA_HOLES)


def test_paged_mla_xla_long_context_is_clamped_and_chunks_agree(rng, monkeypatch):
    from ejaot_kernels.paged_mla_attention import xla
    x = mla_case(rng, holes={})
    want = run_mla(xla.paged_mla_attention_impl, dict(x, context_lens=np.minimum(x["context_lens"], 32)))
    np.testing.assert_array_equal(run_mla(xla.paged_mla_attention_impl, x), want)
    x = mla_case(rng)
    monkeypatch.setattr(xla, "_MAX_GATHER_ELEMENTS", 2 * 32 * 32)        # 2 sequences per chunk
    check(run_mla(xla.paged_mla_attention_impl, x), mla_reference(*(x[n] for n in MLA_NAMES)), MLA_LENS,
          np.float32, MLA_HOLES)


@pytest.mark.parametrize("case,config", [
    pytest.param(dict(), dict(pages_per_compute_block=1, block_h=8), id="rope-ppcb1"),
    pytest.param(dict(rope=False, hq=4, hk=1), dict(pages_per_compute_block=2, block_h=4), id="no-rope-ppcb2"),
    pytest.param(dict(dtype=ml_dtypes.bfloat16), dict(pages_per_compute_block=4, block_h=8), id="bf16-ppcb4"),
])
def test_paged_mla_pallas_tpu_masks_out_of_range_pages(case, config, rng):
    from ejaot_kernels.paged_mla_attention.pallas_tpu import paged_mla_attention_impl
    x = mla_case(rng, **case)
    got = run_mla(paged_mla_attention_impl, x, {**config, "interpret": True})
    check(got, mla_reference(*(x[n] for n in MLA_NAMES)), MLA_LENS, x["query"].dtype, MLA_HOLES)


# -- public functions and the store's padded path ---------------------------------------------------

STORE_MANIFEST = """
format = 1
[[kernel]]
name = "page_attention"
dtypes = ["float32"]
[kernel.dims]
num_seqs = 8
max_blocks = 8
q_heads = 8
kv_heads = 2
head_dim = 32
page_size = 8
total_pages = 37
[kernel.static]
sliding_window = 70

[[kernel]]
name = "paged_mla_attention"
dtypes = ["float32"]
inputs = ["b_q", "rope_cache"]
[kernel.dims]
num_seqs = 8
max_blocks = 8
q_heads = 8
kv_heads = 2
head_dim = 16
kv_lora_rank = 32
rope_dim = 8
page_size = 8
total_pages = 26
"""


def test_padded_bucket_agrees_with_the_unpadded_call(tmp_path, rng):
    """7 sequences x 5 blocks padded into the 8 x 8 bucket: the padded columns lie inside
    the long context (100 tokens > 5 * 8), so they must count as out of range, exactly as
    the columns past the unpadded table; the public (JIT) functions agree."""
    from ejaot_kernels.page_attention import page_attention
    from ejaot_kernels.paged_mla_attention import paged_mla_attention
    _, bundle = build_cpu_store(tmp_path, STORE_MANIFEST, entries=2)

    args = pa_case(rng)                                     # 7 x 5, 37 pages
    static = dict(sliding_window=70)
    want = pa_reference(*args, **static)
    got = np.asarray(bundle.call("page_attention", *args, **static), np.float64)
    check(got, want, PA_LENS, np.float32, PA_HOLES)
    check(np.asarray(page_attention(*args, **static), np.float64), want, PA_LENS, np.float32, PA_HOLES)

    x = mla_case(rng)                                       # 6 x 4, 26 pages
    a = [x[n] for n in MLA_NAMES]
    want = mla_reference(*a)
    check(np.asarray(bundle.call("paged_mla_attention", *a), np.float64), want, MLA_LENS, np.float32, MLA_HOLES)
    check(np.asarray(paged_mla_attention(*a), np.float64), want, MLA_LENS, np.float32, MLA_HOLES)
    assert bundle.stats()["calls"]["padded"] == 2 and bundle.stats()["calls"]["fallback"] == 0

"""paged_mla_attention: the XLA and Pallas TPU (interpret mode) backends against an
independent float64 reference (cache rows decompressed per head, token by token through
the block table), NaN-poisoned pages and rows past every context, agreement with
mla_attention on a contiguous cache, the call checks, the configs the Triton and TPU
backends get, TPU lowering, and the engine end to end on CPU."""
import ml_dtypes
import numpy as np
import pytest

import jax.numpy as jnp
from conftest import build_cpu_store
from ejaot.errors import CallError
from ejaot.targets import get_target
from ejaot_kernels.mla_attention.xla import mla_attention_impl as mla_xla
from ejaot_kernels.paged_mla_attention import SPEC, paged_mla_attention
from ejaot_kernels.paged_mla_attention.configs import (tpu_candidates, tpu_heuristic, triton_candidates,
                                                        triton_heuristic)
from ejaot_kernels.paged_mla_attention.pallas_tpu import paged_mla_attention_impl as tpu_impl
from ejaot_kernels.paged_mla_attention.xla import paged_mla_attention_impl as xla_impl

NAMES = ("query", "latent_cache", "w_kc", "w_vc", "context_lens", "block_tables", "b_q", "rope_cache")


def reference(query, latent_cache, w_kc, w_vc, context_lens, block_tables, b_q=None, rope_cache=None, *,
              softmax_scale=None):
    """Per sequence and head: gather tokens 0..ctx-1 from their pages, decompress K and V
    with the head's weights (the naive form), softmax in float64."""
    f = lambda x: None if x is None else np.asarray(x, np.float64)
    q, cache, wk, wv, bq, rc = map(f, (query, latent_cache, w_kc, w_vc, b_q, rope_cache))
    seqs, hq, d = q.shape
    ps, hk = cache.shape[1], wk.shape[1]
    rope = 0 if bq is None else bq.shape[-1]
    scale = (d + rope) ** -0.5 if softmax_scale is None else softmax_scale
    out = np.zeros((seqs, hq, d))
    for s in range(seqs):
        tok = np.arange(int(context_lens[s]))
        if tok.size == 0:
            continue
        page = np.asarray(block_tables)[s, tok // ps]
        kv = cache[page, tok % ps]                                   # [n, rank]
        for h in range(hq):
            kh = h // (hq // hk)
            logits = (kv @ wk[:, kh]) @ q[s, h]
            if bq is not None:
                logits = logits + rc[page, tok % ps] @ bq[s]
            p = np.exp(logits * scale - (logits * scale).max())
            out[s, h] = (p / p.sum()) @ (kv @ wv[:, kh])
    return out


def make_case(rng, *, lens, hq=8, hk=2, d=16, r=32, e=8, ps=8, mb=4, dtype=np.float32, rope=True):
    """Random inputs with distinct pages per token slot. Table entries past each context
    point at a page full of NaN, and the rows of each last page past its context are NaN
    too: neither may reach the result."""
    seqs = len(lens)
    pages = seqs * mb + 1
    poison = pages - 1
    cache = rng.standard_normal((pages, ps, r))
    rc = rng.standard_normal((pages, ps, e))
    tables = rng.permutation(poison)[: seqs * mb].reshape(seqs, mb)
    for s, n in enumerate(lens):
        tables[s, -(-n // ps):] = poison
        if n % ps:
            cache[tables[s, n // ps], n % ps:] = np.nan
            rc[tables[s, n // ps], n % ps:] = np.nan
    cache[poison] = rc[poison] = np.nan
    cast = lambda x: x.astype(dtype)
    x = {"query": cast(rng.standard_normal((seqs, hq, d))), "latent_cache": cast(cache),
         "w_kc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
         "w_vc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
         "context_lens": np.asarray(lens, np.int32), "block_tables": tables.astype(np.int32),
         "b_q": cast(rng.standard_normal((seqs, e))) if rope else None,
         "rope_cache": cast(rc) if rope else None}
    return x


def args(x):
    return [x[n] for n in NAMES]


def run_xla(x, softmax_scale=None):
    return run_impl(xla_impl, x, {}, softmax_scale)


def run_impl(impl, x, config, softmax_scale=None):
    inputs = {n: None if x[n] is None else jnp.asarray(x[n]) for n in NAMES}
    (out,) = impl(inputs, jnp.zeros((0,), jnp.int32), config=config, softmax_scale=softmax_scale)
    return out


def check(out, x, **static):
    q = x["query"]
    assert out.shape == q.shape and out.dtype == q.dtype
    got = np.asarray(out, np.float64)
    tol = 2e-5 if q.dtype == np.float32 else 3e-2
    np.testing.assert_allclose(got, reference(*args(x), **static), atol=tol, rtol=tol)
    assert (got[np.asarray(x["context_lens"]) == 0] == 0).all(), "context 0 must give exact zeros"


CASES = [
    # lens: a 0 row, one token, non-multiples of page_size, a full table
    pytest.param(dict(lens=[0, 1, 13, 32, 27]), id="gqa-rope"),
    pytest.param(dict(lens=[5, 0, 16], hq=4, hk=1, rope=False), id="mqa-no-rope"),
    pytest.param(dict(lens=[40, 7], hq=16, hk=1, r=64, e=16, ps=16, mb=3), id="deepseek-like"),
    pytest.param(dict(lens=[12, 0, 31], dtype=ml_dtypes.bfloat16), id="bf16"),
]


@pytest.mark.parametrize("case", CASES)
def test_xla_matches_reference(case, rng):
    x = make_case(rng, **case)
    check(run_xla(x), x)


def test_xla_scale_and_garbage_table_entries(rng):
    """Entries past a context may be anything, even out of range: never a fault, never a
    change in the result."""
    x = make_case(rng, lens=[9, 30, 0])
    want = reference(*args(x), softmax_scale=0.3)
    tables = x["block_tables"].copy()
    for s, n in enumerate(x["context_lens"]):
        tables[s, -(-n // 8):] = [-7, 10 ** 9, 3, 2 ** 31 - 1][: 4 - -(-n // 8)]
    x["block_tables"] = tables
    np.testing.assert_allclose(np.asarray(run_xla(x, softmax_scale=0.3), np.float64), want, atol=2e-5, rtol=2e-5)


def test_xla_chunks_sequences_when_the_gather_is_large(rng, monkeypatch):
    from ejaot_kernels.paged_mla_attention import xla
    x = make_case(rng, lens=[3, 0, 32, 17, 9])
    monkeypatch.setattr(xla, "_MAX_GATHER_ELEMENTS", 2 * 32 * 32)     # 2 sequences per chunk
    check(run_xla(x), x)


def test_contiguous_pages_agree_with_mla_attention(rng):
    """Pages laid out in order, one context length for all: mla_attention's decode step
    over the same cache (its valid kv_len) gives the same output."""
    b, t, ps, n = 3, 32, 8, 29
    x = make_case(rng, lens=[n] * b, mb=t // ps)
    x["block_tables"] = np.arange(b * t // ps, dtype=np.int32).reshape(b, t // ps)
    x["latent_cache"] = np.nan_to_num(x["latent_cache"], nan=1e3)   # rows past n: finite here
    x["rope_cache"] = np.nan_to_num(x["rope_cache"], nan=1e3)
    kv = x["latent_cache"][: b * t // ps].reshape(b, t, -1)
    bk = x["rope_cache"][: b * t // ps].reshape(b, t, -1)
    inputs = {"query": x["query"][:, None], "key_value": kv, "w_kc": x["w_kc"], "w_vc": x["w_vc"],
              "b_q": x["b_q"][:, None], "b_k": bk, "cu_seqlens": None}
    (want,) = mla_xla({k: None if v is None else jnp.asarray(v) for k, v in inputs.items()},
                      jnp.asarray([1, n], jnp.int32), config={"form": "absorbed"}, causal=True,
                      softmax_scale=None)
    np.testing.assert_allclose(np.asarray(run_xla(x)), np.asarray(want[:, 0]), atol=1e-5, rtol=1e-5)


PALLAS_CASES = [
    pytest.param(CASES[0].values[0], dict(pages_per_compute_block=2, block_h=8), id="gqa-rope-ppcb2"),
    pytest.param(CASES[1].values[0], dict(pages_per_compute_block=1, block_h=4), id="mqa-no-rope-ppcb1"),
    pytest.param(CASES[2].values[0], dict(pages_per_compute_block=3, block_h=8), id="deepseek-like-2-head-blocks"),
    pytest.param(CASES[3].values[0], {}, id="bf16-heuristic"),
]


@pytest.mark.parametrize("case,config", PALLAS_CASES)
def test_pallas_tpu_interpret_matches_reference(case, config, rng):
    """TPU interpret mode fills VMEM with NaN and lands a DMA only at its wait, so a page
    used before it arrives, or a row past a context that reaches p @ kv, fails here."""
    x = make_case(rng, **case)
    check(run_impl(tpu_impl, x, {**config, "interpret": True}), x)


def test_pallas_tpu_scale_garbage_tables_and_table_chunks(rng, monkeypatch):
    """Out-of-range table entries past a context are never read; a block table too large
    for one call's SMEM runs as several calls with the same result."""
    from ejaot_kernels.paged_mla_attention import pallas_tpu
    x = make_case(rng, lens=[9, 30, 0, 17, 25])
    tables = x["block_tables"].copy()
    for s, n in enumerate(x["context_lens"]):
        tables[s, -(-n // 8):] = [-7, 10 ** 9, 3, 2 ** 31 - 1][: 4 - -(-n // 8)]
    x["block_tables"] = tables
    want = reference(*args(x), softmax_scale=0.3)
    cfg = {"interpret": True, "pages_per_compute_block": 2, "block_h": 8}
    np.testing.assert_allclose(np.asarray(run_impl(tpu_impl, x, cfg, 0.3), np.float64), want, atol=2e-5, rtol=2e-5)
    calls = []
    real = pallas_tpu._call
    monkeypatch.setattr(pallas_tpu, "_call", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(pallas_tpu, "SMEM_TABLE_ENTRIES", 2 * 4)       # 2 sequences per call
    np.testing.assert_allclose(np.asarray(run_impl(tpu_impl, x, cfg, 0.3), np.float64), want, atol=2e-5, rtol=2e-5)
    assert len(calls) == 3


@pytest.mark.parametrize("block_h", [3, 4])
def test_pallas_tpu_rejects_head_blocks_mosaic_cannot_tile(rng, block_h):
    x = make_case(rng, lens=[3, 4])           # 8 heads: 3 does not divide them, 4 is not 8-aligned
    with pytest.raises(ValueError, match=f"block_h={block_h} must divide q_heads=8"):
        run_impl(tpu_impl, x, {"interpret": True, "block_h": block_h})


@pytest.mark.parametrize("dtype,rope", [("bfloat16", True), ("float32", False)])
def test_pallas_tpu_lowers_for_tpu(dtype, rope):
    """DeepSeek-V3 decode at the default manifest's largest bucket."""
    import jax
    s, hq, d, r, e, pages, ps, mb = 128, 128, 128, 512, 64, 8192, 64, 64
    dims = dict(num_seqs=s, q_heads=hq, kv_heads=hq, head_dim=d, kv_lora_rank=r, rope_dim=e if rope else 0,
                total_pages=pages, page_size=ps, max_blocks=mb)

    def fn(*arrays):
        x = dict(zip(NAMES, arrays + ((None, None) if not rope else ())))
        return tpu_impl(x, None, config=tpu_heuristic(dims, {}), softmax_scale=None)
    shapes = [((s, hq, d), dtype), ((pages, ps, r), dtype), ((r, hq, d), dtype), ((r, hq, d), dtype),
              ((s,), jnp.int32), ((s, mb), jnp.int32)]
    if rope:
        shapes += [((s, e), dtype), ((pages, ps, e), dtype)]
    exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(*[jax.ShapeDtypeStruct(*a) for a in shapes])
    assert "tpu_custom_call" in exported.mlir_module() and exported.platforms == ("tpu",)
    assert exported.out_avals[0].shape == (s, hq, d)


@pytest.mark.parametrize("target", ["tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"])
@pytest.mark.parametrize("q_heads,kv_heads,page_size,max_blocks", [(128, 128, 64, 64), (16, 16, 64, 16),
                                                                   (24, 8, 16, 12), (256, 1, 8, 1000)])
def test_tpu_configs_are_valid(target, q_heads, kv_heads, page_size, max_blocks):
    """Blocks never straddle the end of a table row, head blocks are Mosaic-tileable
    divisors of q_heads, and the heuristic comes first among distinct candidates."""
    t = get_target(target)
    dims = dict(num_seqs=8, q_heads=q_heads, kv_heads=kv_heads, head_dim=128, kv_lora_rank=512, rope_dim=64,
                total_pages=8192, page_size=page_size, max_blocks=max_blocks)
    base = tpu_heuristic(dims, {}, t)
    cands = tpu_candidates(dims, {}, t)
    assert cands[0] == base and len(cands) == len({tuple(sorted(c.items())) for c in cands})
    for c in cands:
        assert max_blocks % c["pages_per_compute_block"] == 0
        assert q_heads % c["block_h"] == 0 and (c["block_h"] % 8 == 0 or c["block_h"] == q_heads)
        assert c["block_h"] <= 128 or c["block_h"] == q_heads
    assert base["block_h"] == min(q_heads, 128)


def test_public_function_checks_arguments(rng):
    x = make_case(rng, lens=[9, 0, 32])
    check(paged_mla_attention(*args(x)), x)
    a = args(x)
    with pytest.raises(CallError, match="give both b_q and rope_cache"):
        paged_mla_attention(*a[:7])
    with pytest.raises(CallError, match="'context_lens' must have dtype int32"):
        paged_mla_attention(*a[:4], a[4].astype(np.int64), *a[5:])
    with pytest.raises(CallError, match="dimension 'num_seqs'"):
        paged_mla_attention(a[0], *a[1:4], a[4][:2], *a[5:])
    with pytest.raises(CallError, match="softmax_scale must be"):
        paged_mla_attention(*a, softmax_scale="big")


def test_example_inputs_follow_the_contract():
    dims = {"num_seqs": 5, "q_heads": 8, "kv_heads": 1, "head_dim": 16, "kv_lora_rank": 32, "rope_dim": 8,
            "total_pages": 30, "page_size": 4, "max_blocks": 6}
    x = SPEC.make_inputs(dims, "bfloat16", ("b_q", "rope_cache"), {}, np.random.default_rng(0))
    assert x["latent_cache"].shape == (30, 4, 32) and x["rope_cache"].shape == (30, 4, 8)
    assert x["b_q"].shape == (5, 8) and str(x["query"].dtype) == "bfloat16"
    assert len(np.unique(x["block_tables"])) == 30 and ((x["context_lens"] >= 1) & (x["context_lens"] <= 24)).all()


@pytest.mark.parametrize("target,page_size,kernel", [("gpu-sm90", 64, "wgmma_ws"), ("gpu-sm90", 128, "wgmma_ws"),
                                                      ("gpu-sm90", 32, "wgmma_ws"), ("gpu-sm90", 8, "wgmma_ws"),
                                                      ("gpu-sm90", 48, "dot"), ("gpu-sm90", 4, "dot"),
                                                      ("gpu-sm80", 64, "dot")])
def test_triton_configs_name_the_kernel_the_page_size_allows(target, page_size, kernel):
    """The configs are mla_attention's for the decode step the block tables address, with
    the kernel that tiles the page size (a Gluon block is one TMA box, or one per page, of
    at least 8 rows), so the entry's config says what runs and no two candidates run the
    same kernel."""
    from ejaot_kernels.mla_attention.configs import triton_heuristic as mla_heuristic
    dims = {"num_seqs": 64, "q_heads": 128, "kv_heads": 1, "head_dim": 128, "kv_lora_rank": 512,
            "rope_dim": 64, "total_pages": 8192, "page_size": page_size, "max_blocks": 4032 // page_size}
    t = get_target(target)
    base = triton_heuristic(dims, {}, t)
    mla = mla_heuristic(dict(batch=64, seq=1, kv_seq=4032 // page_size * page_size, q_heads=128, kv_heads=1,
                             head_dim=128, kv_lora_rank=512, rope_dim=64), {}, t)
    assert base["kernel"] == kernel
    assert {k: v for k, v in base.items() if k not in ("kernel", "softmax_share")} == \
        {k: v for k, v in mla.items() if k not in ("kernel", "softmax_share")}
    if kernel != "dot" or target == "gpu-sm80":
        assert base == mla
    cands = triton_candidates(dims, {}, t)
    assert cands[0] == base
    gluon = page_size % 64 == 0 or (64 % page_size == 0 and page_size >= 8)
    assert {c["kernel"] for c in cands} <= ({"wgmma_ws", "wgmma", "dot"} if gluon else {"dot"})
    assert all(c["softmax_share"] == 2 for c in cands if c["kernel"] != "wgmma_ws")
    assert len(cands) == len({tuple(sorted(c.items())) for c in cands})
    if not gluon and target == "gpu-sm90":   # mla_attention's Gluon candidates collapse onto dot configs
        assert len(cands) < len(mla_candidates_for(dims, t))


def mla_candidates_for(dims, target):
    from ejaot_kernels.mla_attention.configs import triton_candidates as mla_candidates
    from ejaot_kernels.paged_mla_attention.configs import decode_dims
    return mla_candidates(decode_dims(dims), {}, target)


ENGINE_MANIFEST = """
format = 1
[[kernel]]
name = "paged_mla_attention"
dtypes = ["float32"]
inputs = ["b_q", "rope_cache"]
[kernel.dims]
num_seqs = [2, 4]
max_blocks = 4
q_heads = 8
kv_heads = 2
head_dim = 16
kv_lora_rank = 32
rope_dim = 8
page_size = 8
total_pages = 17
"""


def test_engine_exact_padded_and_fallback(tmp_path, rng):
    store, bundle = build_cpu_store(tmp_path, ENGINE_MANIFEST, entries=2)

    def call(x):    # total_pages must match the bucket: the cache is not paddable
        pad = 17 - x["latent_cache"].shape[0]
        for n in ("latent_cache", "rope_cache"):
            x[n] = np.pad(x[n], [(0, pad), (0, 0), (0, 0)])
        check(bundle.call("paged_mla_attention", *args(x)), x)

    call(make_case(rng, lens=[32, 0, 13, 20], mb=4))      # exact: 4 seqs x 4 blocks
    call(make_case(rng, lens=[17, 5, 0], mb=3))           # padded into 4 x 4
    call(make_case(rng, lens=[40, 3], mb=5))              # 5 blocks: no bucket
    assert bundle.stats()["calls"] == {"exact": 1, "padded": 1, "fallback": 1}
    # `ejaot verify`: the kernel's example inputs through both tiers, against the reference
    from ejaot.verify import verify_store
    lines = []
    assert verify_store(store, echo=lines.append, seed=0)
    assert "2 entries numerically verified, 0 not run here, 0 failures" in lines[-1], lines

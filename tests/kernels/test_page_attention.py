"""page_attention: XLA and Pallas TPU (interpret mode) backends against an independent
float64 reference, Mosaic lowering for TPU, configs, and the engine end to end on CPU."""
import functools

import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from conftest import build_cpu_store
from ejaot.errors import CallError
from ejaot.targets import get_target
from ejaot_kernels.page_attention import SPEC, page_attention
from ejaot_kernels.page_attention.configs import tpu_candidates, tpu_heuristic
from ejaot_kernels.page_attention.pallas_tpu import page_attention_impl as tpu_impl
from ejaot_kernels.page_attention.xla import page_attention_impl as xla_impl

NAMES = ("query", "key_cache", "value_cache", "context_lens", "block_tables")


def reference(query, key_cache, value_cache, context_lens, block_tables, *, attn_scale=None,
              attn_logits_soft_cap=None, sliding_window=None):
    """Token by token: gather tokens 0..ctx-1 of each sequence from its pages."""
    q, kc, vc = (np.asarray(x, np.float64) for x in (query, key_cache, value_cache))
    seqs, hq, d = q.shape
    hk, _, ps, _ = kc.shape
    group = hq // hk
    scale = d ** -0.5 if attn_scale is None else attn_scale
    out = np.zeros((seqs, hq, d))
    for s in range(seqs):
        n = int(context_lens[s])
        tok = np.arange(max(0, n - sliding_window) if sliding_window else 0, n)
        if tok.size == 0:
            continue
        page = np.asarray(block_tables)[s, tok // ps]
        for h in range(hq):
            k, v = kc[h // group, page, tok % ps], vc[h // group, page, tok % ps]
            logits = k @ q[s, h] * scale
            if attn_logits_soft_cap is not None:
                logits = attn_logits_soft_cap * np.tanh(logits / attn_logits_soft_cap)
            p = np.exp(logits - logits.max())
            out[s, h] = (p / p.sum()) @ v
    return out


def make_case(rng, *, lens, hq, hk, d, ps, mb, dtype=np.float32, window=None):
    """Random caches and distinct pages per token slot. Every table entry the result must
    not depend on (past the context, or wholly before the sliding window) points at a
    page full of NaN, so reading it anywhere would show."""
    seqs = len(lens)
    pages = seqs * mb + 1
    poison = pages - 1
    kc = rng.standard_normal((hk, pages, ps, d))
    vc = rng.standard_normal((hk, pages, ps, d))
    kc[:, poison] = vc[:, poison] = np.nan
    tables = rng.permutation(poison)[: seqs * mb].reshape(seqs, mb)
    for s, n in enumerate(lens):
        tables[s, -(-n // ps):] = poison
        if window is not None:
            tables[s, : max(0, n - window) // ps] = poison
    q = rng.standard_normal((seqs, hq, d))
    return (q.astype(dtype), kc.astype(dtype), vc.astype(dtype), np.asarray(lens, np.int32),
            tables.astype(np.int32))


def run_impl(impl, args, config=None, **static):
    static = {"attn_scale": None, "attn_logits_soft_cap": None, "sliding_window": None, **static}
    inputs = {n: jnp.asarray(a) for n, a in zip(NAMES, args)}
    (out,) = impl(inputs, jnp.zeros((0,), jnp.int32), config=config or {}, **static)
    return out


def check(out, args, **static):
    dtype = args[0].dtype
    assert out.shape == args[0].shape and out.dtype == dtype
    tol = 2e-5 if dtype == np.float32 else 3e-2
    got = np.asarray(out, np.float64)
    np.testing.assert_allclose(got, reference(*args, **static), atol=tol, rtol=tol)
    zero = np.asarray(args[3]) == 0
    assert (got[zero] == 0).all(), "a context-length-0 row must give exact zeros"


XLA_CASES = [
    # lens: a 0 row, a single token, non-multiples of page_size, a full table
    pytest.param(dict(lens=[0, 1, 13, 40, 27], hq=8, hk=2, d=32, ps=8, mb=5), id="gqa"),
    pytest.param(dict(lens=[5, 0, 16, 9], hq=4, hk=4, d=16, ps=4, mb=4), id="mha"),
    pytest.param(dict(lens=[33, 7, 0], hq=6, hk=1, d=64, ps=16, mb=3,
                      static=dict(attn_logits_soft_cap=5.0)), id="mqa-softcap"),
    pytest.param(dict(lens=[1, 30, 17, 0], hq=8, hk=2, d=32, ps=8, mb=4, window=6,
                      static=dict(sliding_window=6)), id="window"),
    pytest.param(dict(lens=[29, 3, 0], hq=4, hk=2, d=32, ps=8, mb=4,
                      static=dict(attn_scale=0.37)), id="scale"),
    pytest.param(dict(lens=[0, 45, 64, 11], hq=8, hk=2, d=64, ps=16, mb=4, dtype=ml_dtypes.bfloat16,
                      window=20, static=dict(attn_logits_soft_cap=8.0, sliding_window=20, attn_scale=0.2)),
                 id="bf16-all-statics"),
    pytest.param(dict(lens=[12, 0, 31], hq=4, hk=2, d=32, ps=8, mb=4, dtype=ml_dtypes.bfloat16), id="bf16"),
]


@pytest.mark.parametrize("case", XLA_CASES)
def test_xla_matches_reference(case, rng):
    case = dict(case)
    static = case.pop("static", {})
    args = make_case(rng, **case)
    check(run_impl(xla_impl, args, **static), args, **static)



@pytest.mark.parametrize("case", XLA_CASES[:4:3])
def test_xla_chunks_sequences_when_the_gather_is_large(case, rng, monkeypatch):
    """A bucket whose gathered pages would not fit runs over chunks of sequences (here 2
    per chunk, with a padded last chunk) and gives the same answer."""
    import ejaot_kernels.page_attention.xla as xla_mod
    case = dict(case)
    static = case.pop("static", {})
    args = make_case(rng, **case)
    hk, _, ps, d = args[1].shape
    monkeypatch.setattr(xla_mod, "_MAX_GATHER_ELEMENTS", 2 * hk * args[4].shape[1] * ps * d)
    check(run_impl(xla_mod.page_attention_impl, args, **static), args, **static)

_GQA = dict(lens=[0, 1, 13, 48, 30], hq=8, hk=2, d=128, ps=8, mb=6)
_BF16 = dict(lens=[40, 64, 3, 0], hq=8, hk=2, d=128, ps=16, mb=4, dtype=ml_dtypes.bfloat16, window=20,
             static=dict(attn_logits_soft_cap=8.0, sliding_window=20, attn_scale=0.2))
PALLAS_CASES = [
    # several pages_per_compute_block values, grid and inline page loops, a block size that
    # does not divide max_blocks, both megacore orders, and an empty config (the heuristic)
    pytest.param(_GQA, dict(pages_per_compute_block=1, inline_seq_dim=False), id="gqa-ppcb1-grid"),
    pytest.param(_GQA, dict(pages_per_compute_block=4, inline_seq_dim=True), id="gqa-ppcb4-inline"),
    pytest.param(_GQA, dict(pages_per_compute_block=4, inline_seq_dim=False), id="gqa-ppcb4-grid"),
    pytest.param(_GQA, dict(pages_per_compute_block=6, megacore_mode="batch"), id="gqa-ppcb6-batch"),
    pytest.param(dict(lens=[50, 0, 64], hq=4, hk=4, d=128, ps=16, mb=4), {}, id="mha-heuristic"),
    pytest.param(_BF16, dict(pages_per_compute_block=1, inline_seq_dim=False, megacore_mode="kv_head"),
                 id="bf16-statics-ppcb1-grid"),
    pytest.param(_BF16, dict(pages_per_compute_block=3, inline_seq_dim=True), id="bf16-statics-ppcb3-inline"),
]


@pytest.mark.parametrize("case,config", PALLAS_CASES)
def test_pallas_tpu_interpret_matches_reference(case, config, rng):
    case = dict(case)
    static = case.pop("static", {})
    args = make_case(rng, **case)
    # TPU interpret mode: simulated VMEM filled with NaN, DMAs land only at their wait
    out = run_impl(tpu_impl, args, {**config, "interpret": True}, **static)
    check(out, args, **static)


@pytest.mark.parametrize("dtype,config,static", [
    ("bfloat16", dict(pages_per_compute_block=4, inline_seq_dim=True, megacore_mode="kv_head"),
     dict(attn_logits_soft_cap=30.0, sliding_window=40)),
    ("float32", dict(pages_per_compute_block=2, inline_seq_dim=False), dict(attn_scale=0.1)),
])
def test_pallas_tpu_lowers_for_tpu(dtype, config, static):
    s, hq, hk, d, pages, ps, mb = 4, 8, 2, 128, 64, 16, 8
    full = {"attn_scale": None, "attn_logits_soft_cap": None, "sliding_window": None, **static}

    def fn(*arrays):
        return tpu_impl(dict(zip(NAMES, arrays)), jnp.zeros((0,), jnp.int32), config=config, **full)
    shapes = [jax.ShapeDtypeStruct(x, t) for x, t in [
        ((s, hq, d), dtype), ((hk, pages, ps, d), dtype), ((hk, pages, ps, d), dtype),
        ((s,), jnp.int32), ((s, mb), jnp.int32)]]
    exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(*shapes)
    text = exported.mlir_module()
    assert "tpu_custom_call" in text and exported.platforms == ("tpu",)
    assert exported.out_avals[0].shape == (s, hq, d)


def test_public_function_drops_seed_knobs_and_checks_arguments(rng):
    args = make_case(rng, lens=[9, 0, 32], hq=4, hk=2, d=32, ps=8, mb=4)
    out = page_attention(*args, attn_scale=0.5, max_context_len=32, num_splits=0, mask_value=-1e30,
                         pages_per_compute_block=2, megacore_mode="kv_head", inline_seq_dim=False)
    check(out, args, attn_scale=0.5)
    q, kc, vc, ctx, tables = args
    with pytest.raises(CallError, match="not a multiple of kv_heads"):
        page_attention(q[:, :3], kc, vc, ctx, tables)
    with pytest.raises(CallError, match="sliding_window must be"):
        page_attention(*args, sliding_window=0)
    with pytest.raises(CallError, match="'context_lens' must have dtype int32"):
        page_attention(q, kc, vc, ctx.astype(np.int64), tables)
    with pytest.raises(CallError, match="dimension 'num_seqs'"):
        page_attention(q, kc, vc, ctx[:2], tables)


@pytest.mark.parametrize("target", ["tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"])
def test_tpu_configs_are_valid(target):
    t = get_target(target)
    for dims in ({"num_seqs": 8, "q_heads": 32, "kv_heads": 8, "head_dim": 128, "total_pages": 2048,
                  "page_size": 16, "max_blocks": 256},
                 {"num_seqs": 3, "q_heads": 4, "kv_heads": 1, "head_dim": 64, "total_pages": 50,
                  "page_size": 8, "max_blocks": 7}):
        configs = [tpu_heuristic(dims, {}, t)] + tpu_candidates(dims, {}, t)
        for c in configs:
            ppcb = c["pages_per_compute_block"]
            assert dims["max_blocks"] % ppcb == 0
            assert 2 * 2 * ppcb * dims["page_size"] * dims["head_dim"] * 4 <= t.facts["vmem_bytes"] // 4
            assert c["megacore_mode"] in (None, "kv_head", "batch")
        megacore = t.facts["device_kind"] in ("TPU v4", "TPU v5")
        assert (configs[0]["megacore_mode"] is not None) == (megacore and dims["kv_heads"] == 8)
    big = tpu_heuristic({"num_seqs": 8, "q_heads": 32, "kv_heads": 8, "head_dim": 128,
                         "total_pages": 2048, "page_size": 16, "max_blocks": 256}, {}, t)
    assert big["pages_per_compute_block"] * 16 >= t.facts["mxu"]


def test_example_inputs_follow_the_contract():
    dims = {"num_seqs": 6, "q_heads": 4, "kv_heads": 2, "head_dim": 16, "total_pages": 40,
            "page_size": 4, "max_blocks": 5}
    for seed in range(20):
        x = SPEC.make_inputs(dims, "bfloat16", (), {}, np.random.default_rng(seed))
        lens, tables = x["context_lens"], x["block_tables"]
        assert lens.dtype == np.int32 and tables.dtype == np.int32
        assert ((lens >= 1) & (lens <= 20)).all() and not (lens == 20).all()
        assert len(np.unique(tables)) == tables.size and tables.max() < 40 and tables.min() >= 0
        assert x["key_cache"].shape == (2, 40, 4, 16) and str(x["query"].dtype) == "bfloat16"


ENGINE_MANIFEST = """
format = 1
[[kernel]]
name = "page_attention"
dtypes = ["float32"]
[kernel.dims]
num_seqs = [2, 4]
max_blocks = 8
q_heads = 4
kv_heads = 2
head_dim = 16
page_size = 8
total_pages = 65
[kernel.static]
attn_logits_soft_cap = 20.0
"""


def test_engine_exact_padded_and_fallback(tmp_path, rng):
    _, bundle = build_cpu_store(tmp_path, ENGINE_MANIFEST, entries=2)
    static = dict(attn_logits_soft_cap=20.0)
    shape = dict(hq=4, hk=2, d=16, ps=8)

    def call(args):   # total_pages must match the bucket: the cache is not paddable
        q, kc, vc, ctx, tables = args
        pad = 65 - kc.shape[1]
        kc, vc = (np.pad(c, [(0, 0), (0, pad), (0, 0), (0, 0)]) for c in (kc, vc))
        out = bundle.call("page_attention", q, kc, vc, ctx, tables, **static)
        check(out, (q, kc, vc, ctx, tables), **static)

    call(make_case(rng, lens=[64, 0, 13, 40], mb=8, **shape))        # exact: 4 seqs x 8 blocks
    call(make_case(rng, lens=[17, 40, 0], mb=5, **shape))            # padded into 4 x 8
    call(make_case(rng, lens=[70, 3], mb=9, **shape))                # 9 blocks: no bucket
    assert bundle.stats()["calls"] == {"exact": 1, "padded": 1, "fallback": 1}


def test_pallas_tpu_splits_block_tables_larger_than_smem(monkeypatch):
    """A block table too large for one call's SMEM runs as several calls over sequence
    chunks, with the same result."""
    import ejaot_kernels.page_attention.pallas_tpu as tpu
    rng = np.random.default_rng()
    dims = dict(num_seqs=5, q_heads=4, kv_heads=2, head_dim=128, total_pages=24, page_size=8, max_blocks=6)
    from ejaot_kernels.page_attention.examples import make_inputs
    inputs = make_inputs(dims, "float32", (), {}, rng)
    static = dict(attn_scale=None, attn_logits_soft_cap=None, sliding_window=None)
    cfg = {"interpret": True, "pages_per_compute_block": 2}
    whole = tpu.page_attention_impl(dict(inputs), None, config=cfg, **static)[0]
    calls = []
    real = tpu._call
    monkeypatch.setattr(tpu, "_call", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(tpu, "SMEM_TABLE_ENTRIES", 2 * dims["max_blocks"])
    chunked = tpu.page_attention_impl(dict(inputs), None, config=cfg, **static)[0]
    assert len(calls) == 3
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-6, atol=1e-6)

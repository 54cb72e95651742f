"""The Pallas TPU `flash_attention` kernels, run in Pallas interpret mode on CPU, against the
float64 reference (forward) and the XLA implementation's autodiff (backward); plus a
Mosaic lowering check through jax.export for the TPU platform."""
import ml_dtypes
import numpy as np
import pytest

from conftest import qkv
from reference import attention_reference

import jax
import jax.numpy as jnp
from ejaot_kernels.flash_attention import pallas_tpu, xla
from ejaot_kernels.flash_attention.tpu_blocks import BlockSizes, SegmentIds

TOL = {np.float32: 2e-5, ml_dtypes.bfloat16: 3e-2}
# Small tiles so every case spans several q tiles, kv tiles and kv sub-tiles.
SMALL = {"interpret": True, "block_q": 16, "block_k_major": 16, "block_k": 8, "block_b": 1,
         "block_q_major_dkv": 16, "block_k_major_dkv": 16, "block_k_dkv": 8, "block_q_dkv": 8,
         "block_k_major_dq": 16, "block_k_dq": 8, "block_q_dq": 16}
STATIC = ("causal", "sliding_window", "logits_soft_cap", "softmax_scale")


def _static(**given):
    return {name: given.get(name) if name != "causal" else given.get(name, False) for name in STATIC}


def _run(impl, q, k, v, extra=None, lens=None, config=SMALL, **static):
    lens = jnp.array(lens if lens is not None else (q.shape[1], k.shape[1]), jnp.int32)
    inputs = {"query": q, "key": k, "value": v, **(extra or {})}
    return impl(inputs, lens, config=config, **_static(**static))[0]


def _bottom_right_segments(rng, b, s, t):
    """Two packed segments per row, aligned like the queries: each query shares its
    segment with the key at its own position, so no row is left without keys."""
    cut = rng.integers(1, t, size=b)
    kv = (np.arange(t)[None, :] >= cut[:, None]).astype(np.int32)
    q = kv[:, t - s:] if s <= t else np.pad(kv, [(0, 0), (s - t, 0)])
    return q, kv


def _reference(q, k, v, extra, **static):
    """float64 reference; segment ids become a mask, or -inf bias next to a bias (the
    reference lets a bias override a mask)."""
    bias = extra.get("bias")
    mask = None
    if "q_segment_ids" in extra:
        same = extra["q_segment_ids"][:, :, None] == extra["kv_segment_ids"][:, None, :]
        mask = same[:, None]
        if bias is not None:
            bias = np.where(mask, np.asarray(bias, np.float64), -np.inf)
            mask = None
    return attention_reference(q, k, v, attention_mask=mask, bias=bias, **static)


CASES = {
    "mha": dict(hq=4, hk=4),
    "gqa_causal": dict(hq=8, hk=2, causal=True),
    "mqa_window": dict(hq=4, hk=1, sliding_window=(5, 3)),
    "causal_window": dict(causal=True, sliding_window=(6, 0)),
    "soft_cap_scale": dict(logits_soft_cap=2.0, softmax_scale=0.7, causal=True),
    "bias": dict(inputs=("bias",)),
    "segments": dict(inputs=("segments",), causal=True),
    "bias_segments": dict(inputs=("bias", "segments")),
    "kv_longer_causal": dict(s=16, t=48, causal=True),
    # odd offsets put tile edges exactly on the causal diagonal and the window's ends
    "odd_offset_causal": dict(s=16, t=33, causal=True),
    "offset_window_edges": dict(s=32, t=64, sliding_window=(17, 1)),
    "q_longer_causal": dict(s=48, t=32, causal=True),      # early rows see no key: zeros
    "uneven_tiles": dict(s=40, t=24, causal=True, inputs=("bias",)),   # padded to whole tiles
    "block_b2": dict(causal=True, config={**SMALL, "block_b": 2}),
    "default_blocks": dict(s=48, t=64, causal=True, config={"interpret": True}),
}


def _case_inputs(rng, case, dtype):
    s, t = case.get("s", 32), case.get("t", 32)
    hq, hk = case.get("hq", 4), case.get("hk", 2)
    q, k, v = qkv(rng, 2, s, hq=hq, hk=hk, d=32, t=t, dtype=dtype)
    extra = {}
    if "bias" in case.get("inputs", ()):
        extra["bias"] = (0.5 * rng.standard_normal((2, hq, s, t))).astype(dtype)
    if "segments" in case.get("inputs", ()):
        extra["q_segment_ids"], extra["kv_segment_ids"] = _bottom_right_segments(rng, 2, s, t)
    static = {name: case[name] for name in STATIC if name in case}
    return q, k, v, extra, static


# every case in float32; bfloat16 on a representative subset (the interpreter is slow)
FWD_PARAMS = ([pytest.param(n, np.float32, id=f"{n}-f32") for n in CASES]
              + [pytest.param(n, ml_dtypes.bfloat16, id=f"{n}-bf16")
                 for n in ("gqa_causal", "soft_cap_scale", "bias_segments", "uneven_tiles")])


@pytest.mark.parametrize("name,dtype", FWD_PARAMS)
def test_forward_matches_reference(rng, name, dtype):
    case = CASES[name]
    q, k, v, extra, static = _case_inputs(rng, case, dtype)
    got = _run(pallas_tpu.flash_attention_impl, q, k, v, extra, config=case.get("config", SMALL), **static)
    want = _reference(q, k, v, extra, **static)
    assert got.dtype == jnp.dtype(dtype) and got.shape == q.shape
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=TOL[dtype], rtol=TOL[dtype])


def test_rows_without_keys_are_zero_not_nan(rng):
    q, k, v = qkv(rng, 2, 32, hq=4, hk=2, d=32)
    q_ids = rng.integers(0, 3, size=(2, 32)).astype(np.int32)   # id 2 has no key
    kv_ids = rng.integers(0, 2, size=(2, 32)).astype(np.int32)
    extra = {"q_segment_ids": q_ids, "kv_segment_ids": kv_ids}
    got = np.asarray(_run(pallas_tpu.flash_attention_impl, q, k, v, extra, causal=True))
    assert np.isfinite(got).all()
    assert (got[q_ids == 2] == 0).all() and (q_ids == 2).any()
    np.testing.assert_allclose(got, _reference(q, k, v, extra, causal=True), atol=2e-5, rtol=2e-5)


def _pad_to(rng, x, shape, axis_values=None):
    """x embedded at the front of an array of `shape`, the rest random garbage."""
    if np.issubdtype(x.dtype, np.integer):
        out = np.full(shape, axis_values, x.dtype)
    else:
        out = (100 * rng.standard_normal(shape)).astype(x.dtype)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


@pytest.mark.parametrize("static", [dict(causal=True), dict(sliding_window=(4, 2), logits_soft_cap=3.0)],
                         ids=["causal", "window_cap"])
def test_padded_valid_lengths_match_unpadded(rng, static):
    b, s, t, S, T, hq, hk = 2, 21, 37, 32, 48, 4, 2
    q, k, v = qkv(rng, b, s, hq=hq, hk=hk, d=32, t=t)
    bias = (0.5 * rng.standard_normal((b, hq, s, t))).astype(np.float32)
    q_ids, kv_ids = _bottom_right_segments(rng, b, s, t)
    real = {"bias": bias, "q_segment_ids": q_ids, "kv_segment_ids": kv_ids}
    padded = {"bias": _pad_to(rng, bias, (b, hq, S, T)),
              # padding keeps the last rows' segment id: only kv_len may mask padded keys
              "q_segment_ids": _pad_to(rng, q_ids, (b, S), 1),
              "kv_segment_ids": _pad_to(rng, kv_ids, (b, T), 1)}
    got = _run(pallas_tpu.flash_attention_impl, _pad_to(rng, q, (b, S, hq, 32)),
               _pad_to(rng, k, (b, T, hk, 32)), _pad_to(rng, v, (b, T, hk, 32)), padded,
               lens=(s, t), **static)
    want = _reference(q, k, v, real, **static)
    np.testing.assert_allclose(np.asarray(got, np.float64)[:, :s], want, atol=2e-5, rtol=2e-5)


# --- backward ---------------------------------------------------------------------------

BWD_CASES = {
    "mha": dict(hq=4, hk=4),
    "gqa_causal_padded": dict(hq=8, hk=2, causal=True, lens=(27, 44), t=48),
    # window edges fall on tile edges (left 17 = a tile + 1, right 1)
    "window_cap": dict(s=48, t=48, sliding_window=(17, 1), logits_soft_cap=2.5, softmax_scale=0.3),
    "bias_causal_padded": dict(inputs=("bias",), causal=True, lens=(30, 25)),
    "segments_bias_kv_longer": dict(inputs=("bias", "segments"), causal=True, s=16, t=40),
    "uneven_tiles_block_b2": dict(s=24, t=40, causal=True, inputs=("bias",),
                                  config={**SMALL, "block_b": 2, "block_q_dkv": 16, "block_k_dq": 16}),
}


def _out_and_grads(fn, primals, cot):
    """One jitted forward + VJP (one compile is much cheaper than eager interpretation)."""
    def run(primals, cot):
        out, vjp = jax.vjp(fn, *primals)
        return out, vjp(cot)
    return jax.jit(run)(primals, cot)


@pytest.mark.parametrize("name", list(BWD_CASES))
def test_backward_matches_xla_autodiff(rng, name):
    case = BWD_CASES[name]
    q, k, v, extra, static = _case_inputs(rng, case, np.float32)
    lens, config = case.get("lens"), case.get("config", SMALL)
    diff = ["query", "key", "value"] + (["bias"] if "bias" in extra else [])
    fixed = {n: x for n, x in extra.items() if n not in diff}

    def fn(impl, cfg):
        def f(*arrays):
            named = dict(zip(diff, arrays))
            return _run(impl, named["query"], named["key"], named["value"],
                        {**fixed, **{n: x for n, x in named.items() if n == "bias"}},
                        lens=lens, config=cfg, **static)
        return f

    primals = [q, k, v] + ([extra["bias"]] if "bias" in extra else [])
    cot = rng.standard_normal(q.shape).astype(np.float32)
    out, grads = _out_and_grads(fn(pallas_tpu.flash_attention_impl, config), primals, cot)
    want_out, want_grads = _out_and_grads(fn(xla.flash_attention_impl, {}), primals, cot)
    np.testing.assert_allclose(out, want_out, atol=2e-5, rtol=2e-5)
    for name_, got, want in zip(diff, grads, want_grads):
        assert got.shape == want.shape and got.dtype == want.dtype, name_
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=5e-5 * scale, rtol=1e-4, err_msg=name_)
    if lens is not None:   # keys past kv_len get exactly no gradient
        dk, dv = np.asarray(grads[1]), np.asarray(grads[2])
        assert not dk[:, lens[1]:].any() and not dv[:, lens[1]:].any()


def test_grad_through_jit(rng):
    q, k, v = qkv(rng, 1, 32, hq=4, hk=2, d=32)

    def loss(impl, cfg):
        return lambda q, k, v: (_run(impl, q, k, v, config=cfg, causal=True) ** 2).sum()

    got = jax.jit(jax.grad(loss(pallas_tpu.flash_attention_impl, SMALL), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(xla.flash_attention_impl, {}), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


# --- block sizes and TPU lowering ---------------------------------------------------------

def test_block_sizes():
    d = BlockSizes.get_default(2, 8, 64, 512, 128)
    assert (d.block_q, d.block_k_major, d.block_k, d.block_b) == (64, 128, 128, 1)
    assert d.has_backward_blocks
    assert not BlockSizes(128, 128, 128, 1).has_backward_blocks
    c = BlockSizes.from_config({"block_q": 256, "block_k_major": 512, "block_k": 128, "block_b": 1,
                                "block_q_dq": 64, "interpret": True}, 1, 8, 1024, 1024, 128)
    assert (c.block_q_dq, c.block_k_major_dq, c.block_q_major_dkv, c.block_k_dkv) == (64, 512, 256, 128)
    with pytest.raises(ValueError):
        BlockSizes(0, 128, 128, 1)
    ids = SegmentIds(q=np.zeros((1, 4)), kv=np.ones((1, 4)))
    assert ids.kv.sum() == 4 and ids._fields == ("q", "kv")


def _tpu_export(fn, *avals):
    exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(*avals)
    return exported.mlir_module(), exported.mlir_module_serialized


def test_exports_for_tpu_with_mosaic():
    b, s, t, hq, hk, d = 1, 128, 256, 4, 2, 128
    bf16 = jnp.bfloat16
    avals = (jax.ShapeDtypeStruct((b, s, hq, d), bf16), jax.ShapeDtypeStruct((b, t, hk, d), bf16),
             jax.ShapeDtypeStruct((b, t, hk, d), bf16), jax.ShapeDtypeStruct((b, hq, s, t), bf16),
             jax.ShapeDtypeStruct((b, s), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.int32),
             jax.ShapeDtypeStruct((2,), jnp.int32))
    static = _static(causal=True, sliding_window=(64, 0), logits_soft_cap=30.0)
    config = {"block_q": 128, "block_k_major": 256, "block_k": 128, "block_b": 1}

    def forward(q, k, v, bias, q_ids, kv_ids, lens):
        inputs = {"query": q, "key": k, "value": v, "bias": bias,
                  "q_segment_ids": q_ids, "kv_segment_ids": kv_ids}
        return pallas_tpu.flash_attention_impl(inputs, lens, config=config, **static)[0]

    text, serialized = _tpu_export(forward, *avals)
    assert text.count("tpu_custom_call") == 1 and b"tpu_custom_call" in serialized

    def loss(*args):
        return forward(*args).astype(jnp.float32).sum()

    text, _ = _tpu_export(jax.grad(loss, argnums=(0, 1, 2, 3)), *avals)
    assert text.count("tpu_custom_call") == 3   # forward, dq (+dbias), dk/dv

"""The XLA `attention` kernel against the float64 reference, on fresh random inputs."""
import ml_dtypes
import numpy as np
import pytest

from conftest import qkv
from reference import attention_reference

import jax.numpy as jnp
from ejaot_kernels.attention import attention

TOL = {np.float32: 2e-5, ml_dtypes.bfloat16: 3e-2}

CASES = {
    "mha": dict(hq=4, hk=4),
    "gqa_causal": dict(hq=8, hk=2, causal=True),
    "mqa": dict(hq=4, hk=1),
    "window_int": dict(causal=False, sliding_window=3),
    "window_left_right": dict(causal=True, sliding_window=(5, 0)),
    "soft_cap": dict(logits_soft_cap=2.0, softmax_scale=0.7),
    "bias": dict(inputs=("bias",)),
    "mask": dict(inputs=("attention_mask",)),
    "bias_beats_mask": dict(inputs=("bias", "attention_mask")),
    "sinks": dict(inputs=("softmax_aux",), causal=True),
    "kv_longer_causal": dict(t=24, causal=True),      # bottom-right alignment
    "q_longer_window": dict(s=20, t=12, sliding_window=(2, 2)),
    "weights": dict(return_weights=True, causal=True),
}


def _inputs(rng, case, dtype):
    s, t = case.get("s", 16), case.get("t", None)
    hq, hk = case.get("hq", 4), case.get("hk", 2)
    q, k, v = qkv(rng, 2, s, hq=hq, hk=hk, d=16, t=t, dtype=dtype)
    t = k.shape[1]
    extra = {}
    if "bias" in case.get("inputs", ()):
        extra["bias"] = (0.5 * rng.standard_normal((2, hq, s, t))).astype(dtype)
    if "attention_mask" in case.get("inputs", ()):
        extra["attention_mask"] = rng.random((2, 1, s, t)) < 0.6
    if "softmax_aux" in case.get("inputs", ()):
        extra["softmax_aux"] = rng.standard_normal((hq, 2)).astype(dtype)
    static = {k: v for k, v in case.items() if k not in ("hq", "hk", "s", "t", "inputs")}
    return q, k, v, extra, static


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_attention_matches_reference(rng, name, dtype):
    q, k, v, extra, static = _inputs(rng, CASES[name], dtype)
    got = attention(q, k, v, **extra, **static)
    want = attention_reference(q, k, v, **extra, **static)
    if static.get("return_weights"):
        np.testing.assert_allclose(np.asarray(got[1], np.float64), want[1], atol=TOL[dtype], rtol=TOL[dtype])
        got, want = got[0], want[0]
    assert got.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=TOL[dtype], rtol=TOL[dtype])


def test_fully_masked_rows_are_zero_not_nan(rng):
    q, k, v = qkv(rng, 1, 8)
    mask = np.zeros((1, 1, 8, 8), bool)
    mask[..., :4, :] = True
    out = np.asarray(attention(q, k, v, attention_mask=mask))
    assert np.isfinite(out).all()
    assert np.abs(out[:, 4:]).max() == 0
    assert np.abs(out[:, :4]).max() > 0


def test_one_dimensional_sinks_and_lazy_bias(rng):
    q, k, v = qkv(rng, 1, 8)
    sinks = rng.standard_normal(3).astype(np.float32)
    got = attention(q, k, v, softmax_aux=sinks)
    want = attention_reference(q, k, v, softmax_aux=np.broadcast_to(sinks, (4, 3)))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)
    bias = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    got = attention(q, k, v, init_bias=lambda: bias)
    np.testing.assert_allclose(np.asarray(got), attention_reference(q, k, v, bias=bias), atol=2e-5, rtol=2e-5)


def test_padding_with_valid_lengths_is_exact(rng):
    """The property padded dispatch relies on: padded keys and queries change nothing."""
    from ejaot.spec.registry import get_kernel
    from ejaot.artifact.function import kernel_function
    spec = get_kernel("attention")
    static = spec.canonical_static({"causal": True, "sliding_window": (6, 0)})
    fn = kernel_function(spec, "xla", (), static, {})
    q, k, v = qkv(rng, 2, 11, t=13)
    pad = lambda x, n: np.pad(x, [(0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)])
    (out,) = fn(pad(q, 16), pad(k, 16), pad(v, 16), jnp.array([11, 13], jnp.int32))
    want = attention_reference(q, k, v, causal=True, sliding_window=(6, 0))
    np.testing.assert_allclose(np.asarray(out)[:, :11], want, atol=2e-5, rtol=2e-5)

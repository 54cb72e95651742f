"""`flash_mla_attention`'s kernel backends (flash attention run in the latent space): the
Pallas TPU one in interpret mode against the float64 reference (forward) and the XLA
backend's autodiff (gradients of every input), its TPU export holding no seq × seq array,
and the choice of backend by latent_dim and seq (the Triton one tiles up to 256). The Triton
backend's lowering is checked in test_flash_mla_triton_lowering.py."""
import re

import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from ejaot.artifact.function import fallback_backend
from ejaot.build.manifest import load_manifest
from ejaot.build.plan import plan
from ejaot.targets import get_target
from ejaot_kernels.flash_mla_attention import SPEC, pallas_tpu, xla
from ejaot_kernels.flash_mla_attention.configs import triton_heuristic, triton_latent_dim

from conftest import TINY_FLASH_MLA_TABLE, build_cpu_store
from reference import flash_mla_reference

BF16 = ml_dtypes.bfloat16
TOL = {np.float32: 2e-5, BF16: 3e-2}
FLASH_ORDER = ("query", "key", "value", "latent_key", "latent_value", "bias")


def flash_inputs(rng, *, b=2, h=3, s=10, d=16, lat=8, bias=False, dtype=np.float32):
    dims = dict(batch=b, heads=h, seq=s, head_dim=d, latent_dim=lat)
    return SPEC.make_inputs(dims, np.dtype(dtype), ("bias",) if bias else (), {}, rng)


def close(got, want, dtype):
    assert np.all(np.isfinite(np.asarray(got, np.float64)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=TOL[dtype], rtol=TOL[dtype])

# Small tiles so every case spans several query and key tiles.
SMALL = {"interpret": True, "block_q": 16, "block_k_major": 16, "block_k": 8, "block_b": 1,
         "block_q_major_dkv": 16, "block_k_major_dkv": 16, "block_k_dkv": 8, "block_q_dkv": 8,
         "block_k_major_dq": 16, "block_k_dq": 8, "block_q_dq": 16}


def _pallas(x, n=None, causal=False, softmax_scale=None):
    inputs = {k: jnp.asarray(v) for k, v in x.items()}
    n = x["query"].shape[2] if n is None else n
    return pallas_tpu.flash_mla_attention_impl(inputs, jnp.array([n], jnp.int32), config=SMALL,
                                               causal=causal, softmax_scale=softmax_scale)[0]


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_pallas_matches_reference(rng, causal, bias, dtype):
    # seq 40 spans three 16-row tiles, the last one partial; latent 24 is no power of two
    x = flash_inputs(rng, s=40, d=32, lat=24, bias=bias, dtype=dtype)
    got = _pallas(x, causal=causal)
    assert got.dtype == jnp.dtype(dtype) and got.shape == x["query"].shape
    close(got, flash_mla_reference(*[x.get(n) for n in FLASH_ORDER], causal=causal), dtype)


def test_pallas_padded_bucket_matches_unpadded(rng):
    """A call padded into a longer bucket: keys past the valid length are masked, whatever
    the padding holds, and the valid rows equal the unpadded answer."""
    x = flash_inputs(rng, s=29, d=16, lat=16, bias=True)
    want = flash_mla_reference(*[x.get(n) for n in FLASH_ORDER], causal=True, softmax_scale=0.4)
    padded = dict(x)
    for n in ("query", "key", "value"):
        padded[n] = np.pad(x[n], [(0, 0), (0, 0), (0, 11), (0, 0)], constant_values=7.0)
    padded["bias"] = np.pad(x["bias"], [(0, 0), (0, 0), (0, 11), (0, 11)], constant_values=7.0)
    got = _pallas(padded, n=29, causal=True, softmax_scale=0.4)
    close(got[:, :, :29], want, np.float32)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_pallas_gradients_match_xla_autodiff(rng, causal):
    x = flash_inputs(rng, s=32, d=16, lat=16, bias=True)
    names = list(FLASH_ORDER)
    args = [jnp.asarray(x[n]) for n in names]
    cot = jnp.asarray(rng.standard_normal(x["query"].shape), jnp.float32)
    n = jnp.array([32], jnp.int32)

    def loss(impl, config):
        def f(*a):
            out = impl(dict(zip(names, a)), n, config=config, causal=causal, softmax_scale=None)[0]
            return jnp.sum(out * cot)
        return jax.jit(jax.grad(f, argnums=tuple(range(len(names)))))

    got = loss(pallas_tpu.flash_mla_attention_impl, SMALL)(*args)
    want = loss(xla.flash_mla_attention_impl, {})(*args)
    for name, g, w in zip(names, got, want):
        assert np.all(np.isfinite(np.asarray(g))), name
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-4, err_msg=name)


def _largest_square(text: str, s: int) -> bool:
    """Whether any tensor type in the module ends in a seq × seq block."""
    return re.search(rf"tensor<(?:\d+x)*{s}x{s}x", text) is not None


def test_tpu_export_holds_no_score_matrix():
    """Exported for the TPU, the kernel backend's program has no seq × seq array (the
    scores live in VMEM tiles), where the XLA backend's has one: memory linear in seq."""
    b, h, s, d, lat = 1, 2, 1024, 128, 128
    bf = jnp.bfloat16
    qkv = jax.ShapeDtypeStruct((b, h, s, d), bf)
    proj = jax.ShapeDtypeStruct((d, lat), bf)
    n = jax.ShapeDtypeStruct((1,), jnp.int32)
    names = ("query", "key", "value", "latent_key", "latent_value")

    def export(impl, config):
        def fn(*a):
            *arrays, valid = a
            return impl(dict(zip(names, arrays)), valid, config=config, causal=True, softmax_scale=None)
        exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(qkv, qkv, qkv, proj, proj, n)
        return exported.mlir_module()

    dims = dict(batch=b, heads=h, seq=s, head_dim=d, latent_dim=lat)
    kernel = export(pallas_tpu.flash_mla_attention_impl, SPEC.backends["pallas_tpu"].config_for(
        dims, {"causal": True}, get_target("tpu-v5e")))
    assert "tpu_custom_call" in kernel
    assert not _largest_square(kernel, s)
    assert _largest_square(export(xla.flash_mla_attention_impl, {}), s)


MANIFEST = """
format = 1
[[kernel]]
name = "flash_mla_attention"
dtypes = ["bfloat16"]
[kernel.dims]
batch = 1
heads = 4
seq = [512, 2048]
head_dim = 128
latent_dim = [48, 256, 512]
"""


def test_backend_follows_latent_dim(tmp_path, monkeypatch):
    """gpu-sm90 builds latent dims up to 128 with the Triton backend (48 padded to 64) from
    1024 tokens, the rest with XLA; the TPU takes every one with Pallas. The JIT fallback
    chooses alike."""
    path = tmp_path / "m.toml"
    path.write_text(MANIFEST)
    manifest = load_manifest(path)
    chosen = lambda target: {(e.dims["seq"], e.dims["latent_dim"]): e.backend
                             for e in plan(manifest, get_target(target))[0]}
    assert chosen("gpu-sm90") == {(2048, 48): "triton", (2048, 256): "xla", (2048, 512): "xla",
                                  (512, 48): "xla", (512, 256): "xla", (512, 512): "xla"}
    assert set(chosen("tpu-v5e").values()) == {"pallas_tpu"} and len(chosen("tpu-v5e")) == 6
    assert [triton_latent_dim(n) for n in (8, 32, 48, 128, 129, 256)] == [32, 32, 64, 128, None, None]
    dims = dict(batch=1, heads=4, seq=2048, head_dim=128, latent_dim=48)
    assert triton_heuristic(dims, {"causal": True}, get_target("gpu-sm90"))["gluon"] is True
    # the JIT fallback on a GPU host (Triton usable there) takes the same turns
    import dataclasses
    from ejaot.backends import all_backends, get_backend
    monkeypatch.setitem(all_backends(), "triton", dataclasses.replace(get_backend("triton"),
                                                                       jit_usable=lambda: True))
    assert fallback_backend(SPEC, "cuda", dims, {}) == "triton"
    assert fallback_backend(SPEC, "cuda", {**dims, "latent_dim": 512}, {}) == "xla"
    assert fallback_backend(SPEC, "cuda", {**dims, "seq": 512}, {}) == "xla"
    assert fallback_backend(SPEC, "cpu", dims, {}) == "xla"
    assert SPEC.choose_backend(("triton", "xla")) == "triton"     # bucket-independent question


JIT_MANIFEST = "format = 1\n" + TINY_FLASH_MLA_TABLE


def test_served_under_jit_with_several_traces_and_functions(tmp_path, rng):
    """Calls inside two jitted functions, traced again for new shapes: an exact bucket, a
    padded one (seq 12 into 16) and the fallback (seq 24, no bucket; its backend chosen for
    the call's dims), keyword and closed-over arrays, then eager calls after the jitted
    ones; every result against the float64 reference."""
    _, bundle = build_cpu_store(tmp_path, JIT_MANIFEST, entries=1)
    weights = flash_inputs(rng, b=1, h=2, s=16, d=16, lat=8)
    lk, lv = jnp.asarray(weights["latent_key"]), jnp.asarray(weights["latent_value"])

    @jax.jit
    def keyword_call(q, k, v):
        return bundle.call("flash_mla_attention", query=q, key=k, value=v, latent_key=lk,
                           latent_value=lv, causal=True)

    @jax.jit
    def positional_twice(q, k, v):
        out = bundle.call("flash_mla_attention", q, k, v, lk, lv, causal=True)
        return out + bundle.call("flash_mla_attention", q, k, v, lk, lv, causal=True)

    def want(x):
        return flash_mla_reference(x["query"], x["key"], x["value"], weights["latent_key"],
                                   weights["latent_value"], causal=True)
    cases = [flash_inputs(rng, b=1, h=2, s=s, d=16, lat=8) for s in (16, 12, 24)]
    for x in cases:
        qkv = [jnp.asarray(x[n]) for n in ("query", "key", "value")]
        close(keyword_call(*qkv), want(x), np.float32)
        close(positional_twice(*qkv), 2 * want(x), np.float32)
    for x in cases:                                   # eager, after the jitted calls
        qkv = [jnp.asarray(x[n]) for n in ("query", "key", "value")]
        close(bundle.call("flash_mla_attention", *qkv, lk, lv, causal=True), want(x), np.float32)
    paths = bundle.stats()["calls"]
    assert paths.get("exact") and paths.get("padded") and paths.get("fallback"), paths
    assert bundle.stats()["fallback_backend"]["flash_mla_attention"] == ["xla"]

"""ejaot.ops: ejkernel's public functions under their own signatures, served from the store
chosen by ejaot.use / EJAOT_STORE, or compiled just in time without one."""
import inspect
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ejaot
from ejaot import ops
from ejaot.errors import CallError
from conftest import REPO, qkv
from reference import attention_reference

# (name, kind) of every parameter, in order, as ejkernel's public functions have them
EJKERNEL_SIGNATURES = {
    "attention": [  # ejkernel.attention
        "query", "key", "value", "attention_mask", "bias", "init_bias", "deterministic",
        "dropout_rng", "softmax_aux", "softmax_scale", "logits_soft_cap", "dtype",
        "softmax_dtype", "dropout_prob", "causal", "sliding_window"],
    "flash_mla_attention": [  # ejkernel.flash_mla_attention
        "query", "key", "value", "latent_key", "latent_value", "bias", "causal", "softmax_scale"],
    "mla_attention": [  # ejkernel.mla_attention: arrays positional-only, options keyword-only
        ("query", "POSITIONAL_ONLY"), ("key_value", "POSITIONAL_ONLY"), ("w_kc", "POSITIONAL_ONLY"),
        ("w_vc", "POSITIONAL_ONLY"), ("b_q", "POSITIONAL_ONLY"), ("b_k", "POSITIONAL_ONLY"),
        ("cu_seqlens", "POSITIONAL_ONLY"), ("softmax_scale", "KEYWORD_ONLY"),
        ("causal", "KEYWORD_ONLY"), ("platform", "KEYWORD_ONLY"), ("cfg", "KEYWORD_ONLY")],
    "page_attention": [  # ejkernel.page_attention
        "query", "key_cache", "value_cache", "context_lens", "block_tables", "attn_scale",
        "max_context_len", "num_splits", ("mask_value", "KEYWORD_ONLY"),
        ("attn_logits_soft_cap", "KEYWORD_ONLY"), ("pages_per_compute_block", "KEYWORD_ONLY"),
        ("megacore_mode", "KEYWORD_ONLY"), ("inline_seq_dim", "KEYWORD_ONLY"),
        ("sliding_window", "KEYWORD_ONLY")],
}
EJKERNEL_DEFAULTS = {
    "attention": dict(deterministic=True, dtype=jnp.bfloat16, dropout_prob=0.0, causal=False),
    "page_attention": dict(num_splits=0, mask_value=-2.381976426469702e38, inline_seq_dim=True),
    "flash_mla_attention": dict(causal=False, softmax_scale=None),
}


@pytest.mark.parametrize("name", sorted(EJKERNEL_SIGNATURES))
def test_signatures_follow_ejkernel(name):
    params = list(inspect.signature(getattr(ops, name)).parameters.values())
    want = [(p, "POSITIONAL_OR_KEYWORD") if isinstance(p, str) else p for p in EJKERNEL_SIGNATURES[name]]
    assert [(p.name, p.kind.name) for p in params] == want
    for arg, default in EJKERNEL_DEFAULTS.get(name, {}).items():
        assert inspect.signature(getattr(ops, name)).parameters[arg].default == default


def test_segment_ids_and_block_sizes_are_ejkernels():
    assert ops.SegmentIds._fields == ("q", "kv")
    import dataclasses
    fields = [f.name for f in dataclasses.fields(ops.BlockSizes)]
    assert fields[:4] == ["block_q", "block_k_major", "block_k", "block_b"] and "block_q_dq" in fields
    assert ops.BlockSizes.get_default(1, 8, 512, 512, 128).block_q == 128


@pytest.fixture
def no_store():
    ejaot.use(None)
    yield
    ejaot.use(None)


def test_without_a_store_ops_run_the_jit_path(no_store, rng):
    q, k, v = qkv(rng, 1, 16)
    out, weights = ops.attention(q, k, v, causal=True, dtype=jnp.float32)
    np.testing.assert_allclose(out, attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    assert weights.shape == (1, 4, 16, 16)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-5)


def test_use_serves_ops_from_the_store_under_jit(store_copy, rng, no_store):
    bundle = ejaot.use(store_copy)
    q, k, v = qkv(rng, 2, 20, d=32)
    step = jax.jit(lambda q, k, v: ops.flash_attention(q, k, v, causal=True))
    # flash_attention is not in this store: the JIT fallback, recorded as a miss
    np.testing.assert_allclose(step(q, k, v), attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    assert bundle.stats()["calls"]["fallback"] == 1
    assert ejaot.runtime.active.active() is bundle


def test_ops_attention_hits_the_stored_entries(tmp_path, rng, no_store):
    from conftest import build_cpu_store
    out_dir, _ = build_cpu_store(tmp_path, """
format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
[kernel.dims]
batch = 1
seq = 16
q_heads = 4
kv_heads = 2
head_dim = 32
[kernel.static]
causal = true
return_weights = true
[[kernel]]
name = "flash_attention"
dtypes = ["float32"]
[kernel.dims]
batch = 1
seq = 32
q_heads = 4
kv_heads = 2
head_dim = 32
[kernel.static]
causal = true
""", 2)
    bundle = ejaot.use(out_dir)
    q, k, v = qkv(rng, 1, 16, d=32)
    # dtype=float32 is the query's dtype, so the call shares the entry built without it
    out, w = jax.jit(lambda q, k, v: ops.attention(q, k, v, causal=True, dtype=jnp.float32))(q, k, v)
    np.testing.assert_allclose(out, attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    out = jax.jit(lambda q, k, v: ops.flash_attention(q, k, v, causal=True))(q, k, v)
    np.testing.assert_allclose(out, attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    seg = ops.SegmentIds(jnp.asarray(np.repeat([0, 1], 8)[None], jnp.int32),
                         jnp.asarray(np.repeat([0, 1], 8)[None], jnp.int32))
    packed = ops.flash_attention(q, k, v, causal=True, segment_ids=seg)
    # two packed sequences of 8: each half equals attention over that half alone
    for lo in (0, 8):
        part = attention_reference(q[:, lo:lo + 8], k[:, lo:lo + 8], v[:, lo:lo + 8], causal=True)
        np.testing.assert_allclose(packed[:, lo:lo + 8], part, atol=3e-5, rtol=3e-5)
    cu = jnp.asarray([0, 8, 16], jnp.int32)
    np.testing.assert_allclose(ops.flash_attention(q, k, v, causal=True, cum_seqlens_q=cu), packed,
                               atol=1e-6, rtol=1e-6)
    s = bundle.stats()
    # the segment-id calls have no entry in this store: the fallback serves them
    assert s["calls"] == {"exact": 1, "padded": 1, "fallback": 2}


def test_flash_attention_mask_and_sinks_are_served_not_dropped(no_store, rng):
    q, k, v = qkv(rng, 1, 16, d=32)
    mask = rng.random((1, 1, 16, 16)) > 0.3
    mask[..., 0] = True
    out = ops.flash_attention(q, k, v, attention_mask=jnp.asarray(mask))
    np.testing.assert_allclose(out, attention_reference(q, k, v, attention_mask=mask), atol=3e-5, rtol=3e-5)


def test_unsupported_arguments_are_refused_by_name(no_store, rng):
    q, k, v = qkv(rng, 1, 16)
    with pytest.raises(CallError, match="dropout"):
        ops.attention(q, k, v, deterministic=False, dropout_prob=0.1)
    with pytest.raises(CallError, match="dropout"):
        ops.flash_attention(q, k, v, dropout_prob=0.1)
    with pytest.raises(CallError, match="cfg"):
        ops.mla_attention(q, q[..., 0, :], q[0, :, :, :].transpose(2, 1, 0), q[0].transpose(2, 1, 0),
                          cfg=object())
    with pytest.raises(CallError, match="platform='cuda'"):
        ops.flash_attention(q, k, v, platform="cuda")
    with pytest.raises(CallError, match="precision"):
        ops.flash_attention(q, k, v, precision=jax.lax.Precision.HIGHEST)


def test_platform_xla_is_honoured_by_the_jit_path(store_copy, rng, no_store):
    bundle = ejaot.use(store_copy)
    q, k, v = qkv(rng, 1, 16)
    out, _ = ops.attention(q, k, v, causal=True, dtype=jnp.float32)
    q32, k32, v32 = qkv(rng, 1, 16, d=32)
    np.testing.assert_allclose(out, attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    out = ops.flash_attention(q32, k32, v32, causal=True, platform="xla")
    np.testing.assert_allclose(out, attention_reference(q32, k32, v32, causal=True), atol=3e-5, rtol=3e-5)
    assert sum(bundle.stats()["calls"].values()) == 1     # the platform call bypassed the store


def test_ejaot_store_environment_variable(built_store, tmp_path):
    code = ("import ejaot, numpy as np; from ejaot import ops; from ejaot.runtime.active import active;"
            "q = np.random.default_rng(0).standard_normal((1, 16, 4, 16)).astype('float32');"
            "k = q[:, :, :2]; ops.attention(q, k, k, causal=True, dtype='float32');"
            "print(active().root, active().stats()['calls'])")
    import os
    import shutil
    store = tmp_path / "s"
    shutil.copytree(built_store, store)
    env = {**os.environ, "EJAOT_STORE": str(store), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert str(store) in out.stdout

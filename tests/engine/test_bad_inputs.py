"""Inputs the kernels cannot take are refused with a CallError naming the argument, by
binding (ejaot/runtime/binding.py's bind, which checks every call): through bundle.call on
a small cpu store, through the public JIT functions (ejaot_kernels.<k>.<k>) and ejaot.ops,
eagerly and under jax.jit. Refused:
  * integer, boolean and complex arrays (and floating dtypes the kernel does not list, e.g.
    float64) where the kernel takes floating inputs (query, key, value, caches, ...);
  * floating inputs of different dtypes in one call (a bfloat16 query with a float32 key);
  * a dimension of size 0 (no heads, head_dim 0, an empty key sequence, no pages, ...),
    except batch / num_seqs, where a call returns an empty output of the right shape."""
from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import jax
from conftest import build_cpu_store
from ejaot import ops
from ejaot.errors import CallError
from ejaot.runtime.active import use

MANIFEST = """
format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
[kernel.dims]
batch = 2
seq = 8
q_heads = 4
kv_heads = 2
head_dim = 16

[[kernel]]
name = "flash_attention"
dtypes = ["float32"]
[kernel.dims]
batch = 2
seq = 16
q_heads = 4
kv_heads = 2
head_dim = 32

[[kernel]]
name = "page_attention"
dtypes = ["float32"]
[kernel.dims]
num_seqs = 4
max_blocks = 4
q_heads = 4
kv_heads = 2
head_dim = 16
page_size = 4
total_pages = 17

[[kernel]]
name = "mla_attention"
dtypes = ["float32"]
[kernel.dims]
batch = 2
seq = 8
q_heads = 4
kv_heads = 2
head_dim = 16
kv_lora_rank = 16
"""

KERNELS = ("attention", "flash_attention", "page_attention", "mla_attention")
# the floating inputs of each kernel, in order (what make_args returns first)
FLOATS = {"attention": ("query", "key", "value"), "flash_attention": ("query", "key", "value"),
          "page_attention": ("query", "key_cache", "value_cache"),
          "mla_attention": ("query", "key_value", "w_kc", "w_vc")}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    _, b = build_cpu_store(tmp_path_factory.mktemp("bad_inputs"), MANIFEST, entries=4)
    return b


def make_args(kernel, rng, *, batch=2, heads=4, kv_heads=2, head_dim=None, dtype=np.float32):
    """Fresh random arrays (never zeros) for one call, floating inputs first."""
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)
    if kernel == "attention":
        d = 16 if head_dim is None else head_dim
        return [f(batch, 8, heads, d), f(batch, 8, kv_heads, d), f(batch, 8, kv_heads, d)]
    if kernel == "flash_attention":
        d = 32 if head_dim is None else head_dim
        return [f(batch, 16, heads, d), f(batch, 16, kv_heads, d), f(batch, 16, kv_heads, d)]
    if kernel == "page_attention":
        d = 16 if head_dim is None else head_dim
        lens = rng.integers(1, 17, size=batch).astype(np.int32)
        tables = rng.permutation(17)[: batch * 4].reshape(batch, 4).astype(np.int32)
        return [f(batch, heads, d), f(kv_heads, 17, 4, d), f(kv_heads, 17, 4, d), lens, tables]
    if kernel == "mla_attention":
        d = 16 if head_dim is None else head_dim
        return [f(batch, 8, heads, d), f(batch, 8, 16), f(16, kv_heads, d) / 4, f(16, kv_heads, d) / 4]
    raise AssertionError(kernel)


def public(kernel):
    import importlib
    return getattr(importlib.import_module(f"ejaot_kernels.{kernel}"), kernel)


def ops_call(kernel, args):
    if kernel == "attention":      # (out, weights); dtype=None: the query's (ejkernel: bfloat16)
        return ops.attention(*args, dtype=None)[0]
    return getattr(ops, kernel)(*args)


def paths(bundle):
    """(name, fn(kernel, args)) of every way a call is made, eager and under jax.jit."""
    def jitted(fn):
        return lambda k, a: jax.jit(lambda *x: fn(k, list(x)))(*a)

    def ops_store(k, a):
        use(bundle)
        try:
            return ops_call(k, a)
        finally:
            use(None)
    eager = [("bundle", lambda k, a: bundle.call(k, *a)), ("public", lambda k, a: public(k)(*a)),
             ("ops-jit", lambda k, a: (use(None), ops_call(k, a))[1]), ("ops-store", ops_store)]
    return eager + [(n + "-traced", jitted(fn)) for n, fn in eager]


def refused(bundle, kernel, args, *patterns, traced=True):
    """Every path raises a CallError whose message matches all of `patterns`; the store
    counts no call and records no miss for them."""
    before = dict(bundle.stats()["calls"])
    for name, fn in paths(bundle):
        if not traced and name.endswith("-traced"):
            continue
        with pytest.raises(CallError) as info:
            fn(kernel, args)
        for p in patterns:
            assert p in str(info.value), f"{name}: {p!r} not in {str(info.value)!r}"
    assert bundle.stats()["calls"] == before
    log = Path(bundle.misses.path)
    assert not log.exists() or log.read_text() == ""


# -- non-floating inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad,kind", [(np.int32, "an integer array (int32)"), (np.int8, "an integer array (int8)"),
                                      (np.bool_, "a boolean array (bool)"), (np.complex64, "a complex array (complex64)"),
                                      (np.float64, "dtype float64")])
def test_non_floating_query_is_refused(bundle, kernel, bad, kind, rng):
    args = make_args(kernel, rng)
    n = len(FLOATS[kernel])
    args[:n] = [(a > 0) if bad is np.bool_ else a.astype(bad) for a in args[:n]]
    # jax.jit canonicalizes a NumPy float64 argument to float32 (x64 off): only eager
    # calls can pass float64
    refused(bundle, kernel, args, f"{kernel}: 'query' must be a floating-point array", kind,
            traced=bad is not np.float64)


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_floating_later_argument_is_refused(bundle, kernel, rng):
    """The argument named is the offending one, not the first."""
    args = make_args(kernel, rng)
    name = FLOATS[kernel][-1]
    args[len(FLOATS[kernel]) - 1] = args[len(FLOATS[kernel]) - 1].astype(np.int32)
    refused(bundle, kernel, args, f"{name!r} must be a floating-point array", "float32, bfloat16, float16"
            if kernel != "flash_attention" else "bfloat16, float16, float32")


# -- mixed dtypes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_floating_dtypes_are_refused(bundle, kernel, rng):
    """A bfloat16 query with float32 key/caches: today a store would fall back and log the
    query's dtype; bind names the argument instead."""
    args = make_args(kernel, rng)
    args[0] = args[0].astype(ml_dtypes.bfloat16)
    second = FLOATS[kernel][1]
    refused(bundle, kernel, args, f"{second!r} has dtype float32 but 'query' has bfloat16")


# -- zero-size dimensions ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_heads_are_refused(bundle, kernel, rng):
    args = make_args(kernel, rng, heads=0, kv_heads=0)
    refused(bundle, kernel, args, "'query' shape", "('q_heads') is 0", "needs at least one")


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_head_dim_is_refused(bundle, kernel, rng):
    args = make_args(kernel, rng, head_dim=0)
    refused(bundle, kernel, args, "'query' shape", "('head_dim') is 0")


@pytest.mark.parametrize("kernel,index,name,dim", [
    ("attention", 1, "key", "kv_seq"),
    ("page_attention", 1, "key_cache", "total_pages"),
    ("mla_attention", 1, "key_value", "kv_seq"),
])
def test_other_empty_dimensions_are_refused(bundle, kernel, index, name, dim, rng):
    args = make_args(kernel, rng)
    x = args[index]
    axis = 1
    args[index] = x[(slice(None),) * axis + (slice(0, 0),)]
    if kernel != "page_attention":       # the value / its twin shares the dimension
        if kernel == "attention":
            args[2] = args[2][:, :0]
    else:
        args[2] = args[2][:, :0]
    refused(bundle, kernel, args, f"{name!r} shape", f"({dim!r}) is 0")


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_batch_is_served(bundle, kernel, rng):
    """batch / num_seqs 0 is not refused: every path returns an empty output of the right
    shape and dtype."""
    args = make_args(kernel, rng, batch=0)
    for name, fn in paths(bundle):
        out = np.asarray(fn(kernel, args))
        assert out.shape[0] == 0 and out.shape[1:] == args[0].shape[1:], (name, out.shape)
        assert out.dtype == np.float32, name


def test_paged_mla_attention_refuses_too(rng):
    """paged_mla_attention (outside the store) through its public function: an integer
    latent cache, zero heads, and num_seqs 0 served."""
    from ejaot_kernels.paged_mla_attention import paged_mla_attention
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    lens, tables = np.array([3, 5], np.int32), np.array([[0, 1], [2, 3]], np.int32)
    args = [f(2, 4, 16), f(5, 4, 32), f(32, 2, 16), f(32, 2, 16), lens, tables]
    with pytest.raises(CallError, match="'latent_cache' must be a floating-point array"):
        paged_mla_attention(*args[:1], args[1].astype(np.int32), *args[2:])
    with pytest.raises(CallError, match=r"'query' shape \(2, 0, 16\): dimension 1 \('q_heads'\) is 0"):
        paged_mla_attention(f(2, 0, 16), args[1], f(32, 0, 16), f(32, 0, 16), lens, tables)
    out = paged_mla_attention(f(0, 4, 16), *args[1:4], lens[:0], tables[:0])
    assert out.shape == (0, 4, 16)

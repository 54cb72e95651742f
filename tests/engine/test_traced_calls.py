"""bundle.call under every JAX transformation a server uses: several jitted functions and
retraces, arrays by position, keyword or closure, eager calls mixed in, threads, grad,
vmap and eval_shape. Every result is checked against the float64 reference."""
import threading

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ejaot
from ejaot.runtime.traced import eager
from conftest import qkv
from reference import attention_reference

TOL = dict(atol=3e-5, rtol=3e-5)


def want(q, k, v):
    return attention_reference(q, k, v, causal=True)


def test_eager_detects_every_trace():
    seen = {}
    assert eager()
    jax.jit(lambda x: seen.setdefault("jit", eager()) or x)(1.0)
    jax.grad(lambda x: seen.setdefault("grad", eager()) or x)(1.0)
    jax.vmap(lambda x: seen.setdefault("vmap", eager()) or x)(jnp.ones(2))
    jax.eval_shape(lambda x: seen.setdefault("eval_shape", eager()) or x, 1.0)
    assert seen == {"jit": False, "grad": False, "vmap": False, "eval_shape": False}


def test_two_jitted_functions_and_retraces(store_copy, rng):
    bundle = ejaot.load(store_copy)
    f = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True))
    g = jax.jit(lambda q, k, v: 2.0 * bundle.call("attention", q, k, v, causal=True))
    for b, s in [(1, 16), (2, 20), (1, 16), (2, 32), (1, 9)]:   # retraces on each new shape
        q, k, v = qkv(rng, b, s)
        np.testing.assert_allclose(f(q, k, v), want(q, k, v), **TOL)
        np.testing.assert_allclose(g(q, k, v) / 2.0, want(q, k, v), **TOL)
    st = bundle.stats()
    assert st["calls"]["fallback"] == 0 and st["tiers"]["compiled"] == 0
    assert st["calls"]["exact"] >= 4 and st["calls"]["padded"] >= 2


def test_retrace_when_another_argument_changes_shape(store_copy, rng):
    bundle = ejaot.load(store_copy)

    @jax.jit
    def step(q, k, v, extra):
        return bundle.call("attention", q, k, v, causal=True) + extra.sum()

    q, k, v = qkv(rng, 2, 16)
    for n in (1, 2, 3):
        extra = rng.standard_normal(n).astype(np.float32)
        np.testing.assert_allclose(step(q, k, v, extra), want(q, k, v) + extra.sum(), **TOL)


def test_keyword_and_closed_over_arrays(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 16)
    by_kw = jax.jit(lambda q, k, v: bundle.call("attention", query=q, key=k, value=v, causal=True))
    np.testing.assert_allclose(by_kw(q, k, v), want(q, k, v), **TOL)
    # the first array is closed over (concrete), the others traced
    closed_q = jax.jit(lambda k, v: bundle.call("attention", jnp.asarray(q), k, v, causal=True))
    np.testing.assert_allclose(closed_q(k, v), want(q, k, v), **TOL)
    # every array closed over: still inside the trace, so the portable tier is inlined
    all_closed = jax.jit(lambda x: bundle.call("attention", q, k, v, causal=True) + x)
    np.testing.assert_allclose(all_closed(1.0), want(q, k, v) + 1.0, **TOL)
    assert bundle.stats()["tiers"]["compiled"] == 0
    # and the same shapes eagerly afterwards run the compiled tier, not a plan from a trace
    np.testing.assert_allclose(bundle.call("attention", q, k, value=v, causal=True), want(q, k, v), **TOL)
    assert bundle.stats()["tiers"]["compiled"] == 1


@pytest.mark.parametrize("order", ["eager_first", "jit_first"])
def test_eager_and_jit_mixed_in_any_order(store_copy, rng, order):
    bundle = ejaot.load(store_copy)
    f = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True))
    q, k, v = qkv(rng, 2, 21)
    calls = [lambda: bundle.call("attention", q, k, v, causal=True), lambda: f(q, k, v)]
    if order == "jit_first":
        calls.reverse()
    for _ in range(2):
        for c in calls:
            np.testing.assert_allclose(c(), want(q, k, v), **TOL)
    st = bundle.stats()["tiers"]
    assert st["compiled"] == 2 and st["portable"] >= 1


def test_threads_tracing_and_calling_eagerly(store_copy, rng):
    bundle = ejaot.load(store_copy)
    cases = [qkv(rng, b, s) for b, s in [(1, 16), (2, 32), (1, 12), (2, 30)]]
    errors = []

    def worker(i):
        try:
            q, k, v = cases[i % len(cases)]
            fn = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True) * 1.0)
            for j in range(3):
                out = fn(q, k, v) if (i + j) % 2 else bundle.call("attention", q, k, v, causal=True)
                np.testing.assert_allclose(out, want(q, k, v), **TOL)
        except Exception as e:      # reported below with the thread's index
            errors.append((i, repr(e)))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_grad_through_a_stored_entry_matches_the_reference_grad(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 13)                   # padded into seq=16
    w = rng.standard_normal((1, 13, 4, 16)).astype(np.float32)

    def loss_store(q, k, v):
        return jnp.sum(bundle.call("attention", q, k, v, causal=True) * w)

    def loss_plain(q, k, v):   # float64-free XLA reference of the same math
        from ejaot_kernels.attention import attention
        return jnp.sum(attention(q, k, v, causal=True) * w)

    got = jax.jit(jax.grad(loss_store, argnums=(0, 1, 2)))(q, k, v)
    ref = jax.grad(loss_plain, argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, ref):
        assert np.abs(np.asarray(r)).max() > 0
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)
    # eager grad (a JVP trace, no jit) too
    got_eager = jax.grad(loss_store)(q, k, v)
    np.testing.assert_allclose(got_eager, ref[0], atol=1e-4, rtol=1e-4)
    assert bundle.stats()["calls"]["fallback"] == 0


def test_vmap_maps_the_entry_over_the_mapped_axis(store_copy, rng):
    bundle = ejaot.load(store_copy)
    qs, ks, vs = zip(*[qkv(rng, 1, 16) for _ in range(3)])
    q, k, v = np.stack(qs), np.stack(ks), np.stack(vs)        # [3, 1, 16, heads, d]
    out = jax.vmap(lambda q, k, v: bundle.call("attention", q, k, v, causal=True))(q, k, v)
    for i in range(3):
        np.testing.assert_allclose(out[i], want(qs[i], ks[i], vs[i]), **TOL)
    # one operand unmapped, under jit
    out = jax.jit(jax.vmap(lambda q: bundle.call("attention", q, ks[0], vs[0], causal=True)))(q)
    for i in range(3):
        np.testing.assert_allclose(out[i], want(qs[i], ks[0], vs[0]), **TOL)
    assert bundle.stats()["calls"]["fallback"] == 0


def test_eval_shape(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q = jax.ShapeDtypeStruct((2, 20, 4, 16), jnp.float32)
    k = jax.ShapeDtypeStruct((2, 20, 2, 16), jnp.float32)
    out = jax.eval_shape(lambda q, k, v: bundle.call("attention", q, k, v, causal=True), q, k, k)
    assert out.shape == (2, 20, 4, 16) and out.dtype == jnp.float32


def test_fallback_inside_jit_and_grad(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 3, 40)                   # larger than every bucket
    f = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True))
    np.testing.assert_allclose(f(q, k, v), want(q, k, v), **TOL)
    np.testing.assert_allclose(f(q, k, v), want(q, k, v), **TOL)
    g = jax.grad(lambda q: bundle.call("attention", q, k, v, causal=True).sum())(q)
    assert g.shape == q.shape and np.isfinite(np.asarray(g)).all()
    assert bundle.stats()["calls"]["fallback"] >= 2


def test_fresh_init_bias_lambdas_share_one_plan(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 16)
    for _ in range(3):
        bundle.call("attention", q, k, v, causal=True, init_bias=lambda: jnp.zeros((1, 4, 16, 16)))
    assert len(bundle._plans) == 1

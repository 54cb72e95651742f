"""Stored VJPs (`vjp = true`): the entry's portable tier carries jax.export's serialized VJP,
grad through the store runs it (no JIT of the kernel's backward), under jax.jit with several
traces and functions; the gradients match the float32 reference; verify checks them and
detects a wrong backward; entries without it keep their keys."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ejaot
from ejaot.build.manifest import load_manifest
from ejaot.build.plan import plan
from ejaot.errors import ManifestError
from ejaot.targets import get_target
from ejaot.verify import check_stored_vjp, verify_store
from conftest import build_cpu_store, qkv

TABLE = """
[[kernel]]
name = "flash_attention"
dtypes = ["float32"]
{vjp}
[kernel.dims]
batch = 1
seq = [32, 64]
q_heads = 4
kv_heads = 2
head_dim = 32
[kernel.static]
causal = true
"""
WITH_VJP = "format = 1\n" + TABLE.format(vjp="vjp = true")
WITHOUT = "format = 1\n" + TABLE.format(vjp="")


@pytest.fixture(scope="module")
def vjp_store(tmp_path_factory):
    store, _ = build_cpu_store(tmp_path_factory.mktemp("vjp"), WITH_VJP, entries=2)
    return store


def _reference_grads(q, k, v, w, causal=True):
    from ejaot_kernels.flash_attention import flash_attention
    with jax.default_matmul_precision("highest"):
        return jax.grad(lambda q, k, v: jnp.sum(flash_attention(q, k, v, causal=causal) * w),
                        argnums=(0, 1, 2))(q, k, v)


def test_records_carry_the_vjp_and_other_keys_are_unchanged(tmp_path, vjp_store):
    bundle = ejaot.load(vjp_store)
    assert all(e.record["exported"]["vjp_order"] == 1 for e in bundle.entries.values())
    (tmp_path / "with.toml").write_text(WITH_VJP)
    (tmp_path / "without.toml").write_text(WITHOUT)
    target = get_target("cpu")
    with_vjp, _ = plan(load_manifest(tmp_path / "with.toml"), target)
    without, _ = plan(load_manifest(tmp_path / "without.toml"), target)
    assert {e.key for e in with_vjp} == set(bundle.entries)
    assert {e.key for e in with_vjp}.isdisjoint({e.key for e in without})
    assert all("vjp" not in e.identity() for e in without)     # keys as before the option existed


def test_grad_under_jit_runs_the_stored_backward(vjp_store, rng):
    bundle = ejaot.load(vjp_store)
    for s in (32, 50, 64):                      # exact, padded into 64, exact: three traces
        q, k, v = (jnp.asarray(x) for x in qkv(rng, 1, s, d=32))
        w = jnp.asarray(rng.standard_normal((1, s, 4, 32)).astype(np.float32))

        def loss(q, k, v):
            return jnp.sum(bundle.call("flash_attention", q, k, v, causal=True) * w)
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        program = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
        # the JIT function's backward would be XLA matmuls; the stored one is exported calls
        assert "dot_general" not in program and "call_exported" in program
        _, grads_q = jax.jit(jax.value_and_grad(loss))(q, k, v)    # a second function
        for got, want in zip(grad(q, k, v), _reference_grads(q, k, v, w)):
            assert float(jnp.max(jnp.abs(want))) > 0
            np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)
        np.testing.assert_allclose(grads_q, _reference_grads(q, k, v, w)[0], atol=2e-4, rtol=2e-4)
    assert bundle.stats()["calls"]["fallback"] == 0
    assert bundle.stats()["calls"]["padded"] > 0


def test_grad_and_vmap_compose_over_a_stored_vjp(vjp_store, rng):
    """grad of vmap and vmap of grad (microbatches, per-example gradients) through an entry
    with a stored VJP: the stored VJP has no batching rule, so the mapped backward runs the
    reference's VJP; the gradients match, exact and padded, under jit."""
    from ejaot_kernels.flash_attention import flash_attention
    bundle = ejaot.load(vjp_store, miss_log=False)
    for s in (32, 50):
        q, k, v = (jnp.asarray(np.stack([x, 0.5 * x])) for x in qkv(rng, 1, s, d=32))
        def stored(q, k, v):
            return bundle.call("flash_attention", q, k, v, causal=True)

        def ref(q, k, v):
            return flash_attention(q, k, v, causal=True)

        def grad_of_vmap(f):
            return jax.grad(lambda q: jnp.sum(jax.vmap(f)(q, k, v) ** 2))

        def vmap_of_grad(f):
            return jax.vmap(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2)))
        with jax.default_matmul_precision("highest"):
            want_gv, want_vg = grad_of_vmap(ref)(q), vmap_of_grad(ref)(q, k, v)
        got_gv, got_vg = jax.jit(grad_of_vmap(stored))(q), jax.jit(vmap_of_grad(stored))(q, k, v)
        np.testing.assert_allclose(got_gv, want_gv, atol=2e-4, rtol=2e-4)
        np.testing.assert_allclose(got_vg, want_vg, atol=2e-4, rtol=2e-4)
    assert bundle.stats()["calls"]["fallback"] == 0


def test_without_the_option_grad_differentiates_the_jit_function(tmp_path, rng):
    _, bundle = build_cpu_store(tmp_path, WITHOUT, entries=2)
    q, k, v = (jnp.asarray(x) for x in qkv(rng, 1, 32, d=32))
    program = str(jax.make_jaxpr(jax.grad(
        lambda q: jnp.sum(bundle.call("flash_attention", q, k, v, causal=True))))(q))
    assert "dot_general" in program


def test_verify_checks_the_stored_vjp(vjp_store):
    events = []
    assert verify_store(vjp_store, echo=None, on_event=events.append, seed=1)
    entries = [e for e in events if e["type"] == "entry"]
    assert len(entries) == 2 and all(e["tiers"]["backward"]["ok"] for e in entries)
    # a limit that admits the forward reference but not its backward: said, not checked
    events.clear()
    verify_store(vjp_store, echo=None, on_event=events.append, max_elements=1 * 4 * 64 * 64, seed=1)
    big = [e for e in events if e["type"] == "entry" and e["dims"]["seq"] == 64][0]
    assert "backward" not in big["tiers"] and "stored VJP not checked" in big["backward_detail"]
    assert big["numerics"] == "ok"


def test_the_check_detects_a_wrong_backward(vjp_store, rng):
    """check_stored_vjp against a stored function whose VJP is off by a factor of 2."""
    bundle = ejaot.load(vjp_store)
    entry = next(e for e in bundle.entries.values() if e.record["dims"]["seq"] == 32)
    spec, record = bundle.catalog.find("flash_attention"), entry.record
    from ejaot.verify import entry_arguments
    inputs, args = entry_arguments(spec, record, rng)
    right = entry.portable()
    assert check_stored_vjp(spec, record, right, inputs, args, rng)["ok"]

    @jax.custom_vjp
    def wrong(q, k, v, valid):
        return right(q, k, v, valid)

    def fwd(q, k, v, valid):
        return wrong(q, k, v, valid), (q, k, v, valid)

    def bwd(res, cts):
        _, pull = jax.vjp(lambda q, k, v: right(q, k, v, res[3]), *res[:3])
        return (*(2 * g for g in pull(cts)), None)
    wrong.defvjp(fwd, bwd)
    result = check_stored_vjp(spec, record, wrong, inputs, args, rng)
    assert not result["ok"] and result["err_over_tol"] > 1


def test_vjp_must_be_a_boolean(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(WITH_VJP.replace("vjp = true", 'vjp = "yes"'))
    with pytest.raises(ManifestError, match=r"m\.toml: kernel\[0\]\.vjp: expected true or false"):
        load_manifest(path)


def test_ls_shows_the_stored_vjp(vjp_store, tmp_path):
    import json
    from click.testing import CliRunner
    from ejaot.cli import main
    rows = [json.loads(x) for x in CliRunner().invoke(main, ["ls", str(vjp_store), "--json"]).output.splitlines()]
    assert len(rows) == 2 and all(r["vjp"] for r in rows)
    assert "portable+vjp" in CliRunner().invoke(main, ["ls", str(vjp_store)]).output
    _, _ = build_cpu_store(tmp_path, WITHOUT, entries=2)
    plain = CliRunner().invoke(main, ["ls", str(tmp_path / "store"), "--json"]).output.splitlines()
    assert not any(json.loads(x)["vjp"] for x in plain)


def test_keyword_closed_over_and_eager_calls_around_the_stored_backward(vjp_store, rng):
    bundle = ejaot.load(vjp_store)
    q, k, v = (jnp.asarray(x) for x in qkv(rng, 1, 40, d=32))       # padded into seq=64
    w = jnp.asarray(rng.standard_normal((1, 40, 4, 32)).astype(np.float32))
    want = _reference_grads(q, k, v, w)

    def by_keyword(q, k, v):
        return jnp.sum(bundle.call("flash_attention", query=q, key=k, value=v, causal=True) * w)

    def closed_over(q):                         # k and v are constants of the traced program
        return jnp.sum(bundle.call("flash_attention", q, k, v, causal=True) * w)
    for got, ref in zip(jax.jit(jax.grad(by_keyword, argnums=(0, 1, 2)))(q, k, v), want):
        np.testing.assert_allclose(got, ref, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(jax.jit(jax.grad(closed_over))(q), want[0], atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(jax.grad(closed_over)(q), want[0], atol=2e-4, rtol=2e-4)  # grad, no jit
    # an eager call after the jitted ones runs the compiled tier and gives the forward
    from ejaot_kernels.flash_attention import flash_attention
    with jax.default_matmul_precision("highest"):
        ref_out = flash_attention(q, k, v, causal=True)
    before = bundle.stats()["tiers"]["compiled"]
    np.testing.assert_allclose(bundle.call("flash_attention", q, k, v, causal=True), ref_out,
                               atol=2e-4, rtol=2e-4)
    assert bundle.stats()["tiers"]["compiled"] == before + 1
    assert bundle.stats()["calls"]["fallback"] == 0


def test_gradient_tolerance_is_relative_to_the_gradients_scale():
    """A weight's gradient sums a product per token: where it cancels to near zero it still
    carries the sum's rounding, so the backward check scales the absolute tolerance by the
    gradient's RMS (not per element); a real error still fails it."""
    from ejaot.verify import compare
    rng = np.random.default_rng(0)
    want = 7.0 * rng.standard_normal(4096)
    want[:16] = 1e-3                                            # cancelled elements
    rounding = want + 0.13 * rng.choice([-1.0, 1.0], 4096)      # under 2% of the RMS
    assert not compare(rounding, want, "bfloat16")[0]           # per element: the zeros fail
    assert compare(rounding, want, "bfloat16", scaled=True)[0]
    assert not compare(1.1 * want, want, "bfloat16", scaled=True)[0]     # 10% off
    assert not compare(want + 0.5 * rng.choice([-1.0, 1.0], 4096), want, "bfloat16", scaled=True)[0]
    small = rng.standard_normal(64) * 0.1                      # RMS under 1: the plain tolerance
    assert compare(small + 0.02, small, "bfloat16", scaled=True)[0]
    assert not compare(small + 0.05, small, "bfloat16", scaled=True)[0]

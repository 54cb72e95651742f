"""Kernels from outside the collection (a model's own steps): declared in the user's package,
named by a manifest's `module` key, with pytree arguments (parameters, a donated cache);
built, served from the compiled tier, made stale by an edit of the package, checked leaf by
leaf, and reported clearly when the package cannot be imported where the store is served."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ejaot
from ejaot.errors import CallError, ManifestError
from conftest import REPO

TOY_STEPS = '''
"""A toy model step: a two-layer MLP over tokens, then attention over a KV cache tree."""
import jax.numpy as jnp
from ejaot import ops
from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg, TreeArg

SCALE = 1.0


def param_avals(dims, static, dtype):
    import jax
    d, h = dims["hidden"], static["width"]
    return {"w1": jax.ShapeDtypeStruct((d, h), dtype), "w2": jax.ShapeDtypeStruct((h, d), dtype)}


def cache_avals(dims, static, dtype):
    import jax
    leaf = jax.ShapeDtypeStruct((1, dims["kv"], 2, dims["hidden"] // 2), dtype)
    return [leaf, leaf]


def step_impl(inputs, valid_lens, *, config, width):
    p, (k, v), x = inputs["params"], inputs["cache"], inputs["x"]
    h = jnp.tanh(x @ p["w1"]) @ p["w2"] * SCALE                       # [batch, seq, hidden]
    q = h.reshape(h.shape[0], h.shape[1], 2, -1)
    out = ops.flash_attention(q, jnp.broadcast_to(k, (q.shape[0],) + k.shape[1:]),
                              jnp.broadcast_to(v, (q.shape[0],) + v.shape[1:]))
    new_k = k + 1.0
    return out.reshape(h.shape).sum(axis=-1), [new_k, v]


STEP = KernelSpec(
    name="toy.step", package=__name__,
    dims=("batch", "seq", "hidden", "kv"),
    inputs=(TreeArg("params", f"{__name__}:param_avals", dims_from=(("hidden", "['w1']", 0),)),
            TreeArg("cache", f"{__name__}:cache_avals", donate=True, dims_from=(("kv", "[0]", 1),)),
            ArrayArg("x", ("batch", "seq", "hidden"))),
    outputs=(ArrayArg("y", ("batch", "seq")), TreeArg("cache", f"{__name__}:cache_avals")),
    statics=(StaticArg("width", 32),),
    paddable=frozenset({"batch"}),
    dtypes=("float32",),
    backends={"xla": Backend(f"{__name__}:step_impl")},
)
'''

MANIFEST = """
format = 1
[[kernel]]
name = "toy.step"
module = "{module}"
dtypes = ["float32"]
[kernel.dims]
batch = [2, 4]
seq = 8
hidden = 64
kv = 16
[kernel.static]
width = 32
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A fresh importable package (unique name: modules are cached per process)."""
    name = f"toypkg_{os.urandom(4).hex()}"
    pkg = tmp_path / "src" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "steps.py").write_text(TOY_STEPS)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    manifest = tmp_path / "toy.toml"
    manifest.write_text(MANIFEST.format(module=f"{name}.steps"))
    return name, pkg, manifest


def toy_inputs(rng, batch=2):
    params = {"w1": jnp.asarray(rng.standard_normal((64, 32)) * 0.2, jnp.float32),
              "w2": jnp.asarray(rng.standard_normal((32, 64)) * 0.2, jnp.float32)}
    cache = [jnp.asarray(rng.standard_normal((1, 16, 2, 32)), jnp.float32) for _ in range(2)]
    x = jnp.asarray(rng.standard_normal((batch, 8, 64)), jnp.float32)
    return params, cache, x


def toy_reference(params, cache, x, scale=1.0):
    h = np.tanh(np.asarray(x, np.float64) @ np.asarray(params["w1"], np.float64)) @ np.asarray(params["w2"], np.float64) * scale
    q = h.reshape(h.shape[0], h.shape[1], 2, -1)
    k, v = (np.asarray(c, np.float64)[0] for c in cache)
    s = np.einsum("bqhd,khd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,khd->bqhd", p, v).reshape(h.shape).sum(-1)


def build_toy(manifest, out):
    from ejaot.build.builder import build
    report = build(manifest, "cpu", out, jobs=1)
    assert report.ok and len(report.built) == 2, report.summary()


def test_outside_kernel_built_and_served_from_the_compiled_tier(toy, tmp_path, rng):
    name, pkg, manifest = toy
    build_toy(manifest, tmp_path / "store")
    bundle = ejaot.load(tmp_path / "store")
    params, cache, x = toy_inputs(rng, batch=3)          # padded into the batch=4 bucket
    want = toy_reference(params, cache, x)
    old_k = np.asarray(cache[0])
    y, new_cache = bundle.call("toy.step", params, cache, x)
    np.testing.assert_allclose(y, want, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(new_cache[0], old_k + 1.0, atol=1e-6)
    st = bundle.stats()
    assert st["tiers"]["compiled"] == 1 and st["calls"]["padded"] == 1 and st["rejected"] == []
    # the same under jit, twice (two traces)
    params, cache, x = toy_inputs(rng, batch=2)
    f = jax.jit(lambda p, c, x: bundle.call("toy.step", p, c, x)[0])
    np.testing.assert_allclose(f(params, cache, x), toy_reference(params, cache, x), atol=2e-4, rtol=2e-4)
    params, cache, x = toy_inputs(rng, batch=4)
    np.testing.assert_allclose(f(params, cache, x), toy_reference(params, cache, x), atol=2e-4, rtol=2e-4)
    assert bundle.stats()["calls"]["fallback"] == 0
    record = next(e.record for e in bundle.entries.values())
    assert record["module"] == f"{name}.steps"
    assert ["params['w1']", [64, 32], "float32"] in record["inputs"]
    assert record["donated"] == [2, 3]                     # the cache's leaves (after params)


def test_editing_the_package_makes_its_entries_stale(toy, tmp_path, rng):
    from ejaot.spec import sources
    name, pkg, manifest = toy
    build_toy(manifest, tmp_path / "store")
    (pkg / "helpers.py").write_text("# a new module of the package\n")
    sources._source_hashes.clear()                    # as a fresh process would
    try:
        bundle = ejaot.load(tmp_path / "store")
        params, cache, x = toy_inputs(rng)
        y, _ = bundle.call("toy.step", params, cache, x)
        np.testing.assert_allclose(y, toy_reference(params, cache, x), atol=2e-4, rtol=2e-4)
        st = bundle.stats()
        assert st["calls"]["fallback"] == 1
        assert any("stale" in r["reason"] for r in st["rejected"])
    finally:
        sources._source_hashes.clear()


def test_tree_arguments_are_checked_leaf_by_leaf(toy, tmp_path, rng):
    name, pkg, manifest = toy
    build_toy(manifest, tmp_path / "store")
    bundle = ejaot.load(tmp_path / "store")
    params, cache, x = toy_inputs(rng)
    bad = dict(params, w2=params["w2"][:16])
    with pytest.raises(CallError, match=r"params\['w2'\] must have shape \(32, 64\).*got \(16, 64\)"):
        bundle.call("toy.step", bad, cache, x)
    bad = dict(params, w2=params["w2"].astype(jnp.bfloat16))
    with pytest.raises(CallError, match=r"params\['w2'\] must have shape \(32, 64\) and dtype float32"):
        bundle.call("toy.step", bad, cache, x)
    with pytest.raises(CallError, match=r"params\['w2'\] is missing"):
        bundle.call("toy.step", {"w1": params["w1"]}, cache, x)
    with pytest.raises(CallError, match=r"params\['extra'\] is not part of the declared 'params'"):
        bundle.call("toy.step", dict(params, extra=params["w1"]), cache, x)
    with pytest.raises(CallError, match=r"cache\[1\] must be an array"):
        bundle.call("toy.step", params, [cache[0], "not an array"], x)


def test_manifest_errors_for_outside_modules(tmp_path):
    from ejaot.build.manifest import load_manifest
    m = tmp_path / "m.toml"
    m.write_text(MANIFEST.format(module="no_such_package_xyz.steps"))
    with pytest.raises(ManifestError, match=r"kernel\[0\]\.module: module 'no_such_package_xyz.steps' cannot be imported"):
        load_manifest(m)
    m.write_text(MANIFEST.format(module="not a module"))
    with pytest.raises(ManifestError, match=r"kernel\[0\]\.module: expected a dotted module name"):
        load_manifest(m)
    m.write_text(MANIFEST.format(module="ejaot.ops"))
    with pytest.raises(ManifestError, match=r"declares no KernelSpec"):
        load_manifest(m)


def test_store_whose_package_is_missing_reports_it_and_serves_the_rest(toy, tmp_path):
    name, pkg, manifest = toy
    # one store: the toy step and a built-in kernel
    manifest.write_text(manifest.read_text() + textwrap.dedent("""
        [[kernel]]
        name = "attention"
        dtypes = ["float32"]
        [kernel.dims]
        batch = 1
        seq = 16
        q_heads = 2
        head_dim = 16
        """))
    from ejaot.build.builder import build
    report = build(manifest, "cpu", tmp_path / "store", jobs=1)
    assert report.ok and len(report.built) == 3, report.summary()
    code = textwrap.dedent(f"""
        import json, numpy as np, ejaot
        from ejaot.errors import CallError
        b = ejaot.load({str(tmp_path / 'store')!r})
        q = np.random.default_rng(0).standard_normal((1, 16, 2, 16)).astype("float32")
        b.call("attention", q, q, q)
        try:
            b.call("toy.step", {{}}, [], q)
            err = None
        except CallError as e:
            err = str(e)
        st = b.stats()
        print(json.dumps({{"calls": st["calls"], "reasons": [r["reason"] for r in st["rejected"]], "err": err}}))
        """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["calls"]["exact"] == 1                          # the built-in kernel still serves
    assert len(got["reasons"]) == 2
    assert all(f"module '{name}.steps', which cannot be imported here" in r for r in got["reasons"])
    assert "cannot be imported here" in got["err"] and "toy.step" in got["err"]


def test_a_store_never_makes_the_server_import_a_module(toy, tmp_path):
    """A record naming an importable module the server has not imported is refused (a
    tampered store must not be able to run any installed module's import-time code); with
    kernel_modules the server opts in."""
    name, pkg, manifest = toy
    (pkg / "steps.py").write_text(TOY_STEPS + "\nimport pathlib\npathlib.Path(__file__).with_name('IMPORTED').touch()\n")
    build_toy(manifest, tmp_path / "store")
    (pkg / "IMPORTED").unlink()                      # the build imported it; the server has not
    code = textwrap.dedent(f"""
        import json, sys, ejaot
        sys.path.insert(0, {str(pkg.parent)!r})
        b = ejaot.load({str(tmp_path / 'store')!r})
        reasons = [r["reason"] for r in b.stats()["rejected"]]
        imported_before = "{name}.steps" in sys.modules
        b2 = ejaot.load({str(tmp_path / 'store')!r}, kernel_modules=["{name}.steps"])
        b2.stats()
        print(json.dumps({{"reasons": reasons, "imported_before": imported_before,
                          "imported_after_opt_in": "{name}.steps" in sys.modules,
                          "rejected_after": len(b2.stats()["rejected"])}}))
        """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["reasons"] and all("has not imported" in r for r in got["reasons"])
    assert got["imported_before"] is False                  # refusing it imported nothing
    assert (pkg / "IMPORTED").exists()                       # ...until the server opted in
    assert got["imported_after_opt_in"] is True and got["rejected_after"] == 0


def test_misses_toml_of_an_outside_kernel_builds_and_covers_the_miss(toy, tmp_path, rng):
    """The miss log keeps an outside kernel's module: `ejaot misses --toml` names it and
    rounds the missed shape like a built-in kernel's (batch 6 past the stored 2 and 4: 8),
    and the table it prints builds the entry that then serves the call."""
    from click.testing import CliRunner
    from ejaot.cli import main
    name, pkg, manifest = toy
    store = tmp_path / "store"
    build_toy(manifest, store)
    bundle = ejaot.load(store)
    params, cache, x = toy_inputs(rng, batch=6)
    bundle.call("toy.step", params, cache, x)
    bundle.misses.flush()
    result = CliRunner().invoke(main, ["misses", str(store), "--toml"])
    assert result.exit_code == 0, result.output
    assert f'module = "{name}.steps"' in result.output and "batch = 8," in result.output, result.output
    (tmp_path / "more.toml").write_text("format = 1\n" + result.output)
    from ejaot.build.builder import build
    assert build(tmp_path / "more.toml", "cpu", store, jobs=1).ok
    again = ejaot.load(store, miss_log=False)
    params, cache, x = toy_inputs(rng, batch=6)
    want = toy_reference(params, cache, x)            # before the call: it donates the cache
    np.testing.assert_allclose(again.call("toy.step", params, cache, x)[0], want, atol=2e-4, rtol=2e-4)
    assert again.stats()["calls"]["padded"] == 1

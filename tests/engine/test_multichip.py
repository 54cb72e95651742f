"""Multi-chip entries on the CPU with 8 host devices: the cpu target builds mesh entries
(both tiers), and calls with sharded arrays are served by them, exact and padded, eagerly
and under jax.jit over several traces, matching the single-device result and a float64
reference; a sharding no entry matches runs the fallback with its reason in the miss log.

XLA fixes the number of host devices when it starts, so these run in one child process
started with --xla_force_host_platform_device_count=8 (the rest of the suite keeps one
device); the parent process also builds a mesh manifest for gpu-sm90 (portable tier)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO

CHILD = os.environ.get("EJAOT_MULTICHIP_CHILD") == "1"
DEVICES = 8

MANIFEST = """
format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
mesh = { tp = [2, 4] }
shard = { heads = "tp" }
[kernel.dims]
batch = [1, 2]
seq = [8, 16]
q_heads = 8
kv_heads = 4
head_dim = 16
[kernel.static]
causal = true

[[kernel]]
name = "attention"
dtypes = ["float32"]
[kernel.dims]
batch = 2
seq = 16
q_heads = 8
kv_heads = 4
head_dim = 16
[kernel.static]
causal = true

[[kernel]]
name = "attention"
dtypes = ["float32"]
mesh = { dp = 2, tp = 2 }
shard = { batch = "dp", heads = "tp" }
[kernel.dims]
batch = 2
seq = 16
q_heads = 8
kv_heads = 4
head_dim = 16
[kernel.static]
causal = true

[[kernel]]
name = "flash_attention"
dtypes = ["float32"]
mesh = { tp = 4 }
shard = { heads = "tp" }
[kernel.dims]
batch = 1
seq = 32
q_heads = 8
kv_heads = 4
head_dim = 32
[kernel.static]
causal = true

[[kernel]]
name = "page_attention"
dtypes = ["float32"]
mesh = { tp = 4 }
shard = { heads = "tp" }
[kernel.dims]
num_seqs = 4
q_heads = 8
kv_heads = 4
head_dim = 16
page_size = 4
total_pages = 32
max_blocks = 4

[[kernel]]
name = "paged_mla_attention"
dtypes = ["float32"]
inputs = ["b_q", "rope_cache"]
mesh = { tp = 4 }
shard = { heads = "tp" }
[kernel.dims]
num_seqs = 4
q_heads = 8
head_dim = 16
kv_lora_rank = 32
rope_dim = 8
page_size = 4
total_pages = 32
max_blocks = 4

[[kernel]]
name = "mla_attention"
dtypes = ["float32"]
inputs = ["b_q", "b_k"]
mesh = { tp = 2 }
shard = { heads = "tp" }
[kernel.dims]
batch = 1
seq = 8
q_heads = 4
head_dim = 16
kv_lora_rank = 32
rope_dim = 8
[kernel.static]
causal = true
"""
ENTRIES = 8 + 1 + 1 + 1 + 1 + 1 + 1


if not CHILD:
    def test_multichip_on_8_host_devices():
        """Runs this file's multi-device tests in a child process with 8 host devices."""
        env = dict(os.environ, EJAOT_MULTICHIP_CHILD="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                              + f" --xla_force_host_platform_device_count={DEVICES}").strip())
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                               __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]

    def test_gpu_sm90_builds_mesh_entries_portable_tier(tmp_path):
        """On this CPU host: gpu-sm90 mesh entries lower (Triton kernels inside shard_map) to
        a portable tier exported over the abstract mesh, with their PTX beside it."""
        from ejaot.toolchain import extras_dir
        if not extras_dir("cuda").is_dir():
            pytest.skip("CUDA extras for lowering Triton on a CPU host are not installed")
        (tmp_path / "m.toml").write_text(textwrap.dedent("""
            format = 1
            [[kernel]]
            name = "page_attention"
            dtypes = ["bfloat16"]
            mesh = { tp = 4 }
            shard = { heads = "tp" }
            [kernel.dims]
            num_seqs = 8
            q_heads = 32
            kv_heads = 8
            head_dim = 128
            page_size = 16
            total_pages = 64
            max_blocks = 8
        """))
        code = textwrap.dedent(f"""
            import json
            from ejaot.build.builder import build
            from ejaot.store.filestore import FileStore
            report = build({str(tmp_path / 'm.toml')!r}, "gpu-sm90", {str(tmp_path / 's')!r}, jobs=1)
            assert report.ok, report.summary()
            print("ROWS " + json.dumps(list(FileStore({str(tmp_path / 's')!r}).read_index()["entries"].values()),
                                       default=str))
        """)
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        [line] = [x for x in proc.stdout.splitlines() if x.startswith("ROWS ")]
        [row] = json.loads(line[5:])
        assert row["backend"] == "triton" and row["mesh"] == [["tp", 4]] and row["split"]["q_heads"] == "tp"
        assert {"exported", "ptx"} <= set(row["payloads"]) and "executable" not in row["payloads"]
        assert any("no compiled tier" in n for n in row["notes"])


if CHILD:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import ejaot
    from ejaot.errors import BucketMissError
    from ejaot.spec.mesh import make_layout
    from ejaot.spec.registry import get_kernel
    from reference import attention_reference

    def mesh_of(**axes):
        n = int(np.prod(list(axes.values())))
        return Mesh(np.array(jax.devices()[:n]).reshape(list(axes.values())), tuple(axes))

    def shard(spec, inputs, mesh, shard_map):
        """Each input split as the layout `shard_map` ({group: axis}) splits it."""
        layout = make_layout(tuple((a, n) for a, n in mesh.shape.items()), tuple(sorted(shard_map.items())), spec)
        return {a.name: jax.device_put(inputs[a.name], NamedSharding(mesh, P(*layout.spec_of(a))))
                for a in spec.inputs if a.name in inputs}

    @pytest.fixture(scope="module")
    def store(tmp_path_factory):
        from ejaot.build.builder import build
        assert len(jax.devices()) == DEVICES
        root = tmp_path_factory.mktemp("mc")
        (root / "m.toml").write_text(MANIFEST)
        report = build(root / "m.toml", "cpu", root / "store", jobs=1)
        assert report.ok and len(report.built) == ENTRIES, report.summary()
        return root / "store"

    def fresh(store, **kw):
        (store / "misses.jsonl").unlink(missing_ok=True)
        return ejaot.load(store, **kw)

    def qkv(rng, b, s):
        return (rng.standard_normal((b, s, 8, 16)).astype(np.float32),
                rng.standard_normal((b, s, 4, 16)).astype(np.float32),
                rng.standard_normal((b, s, 4, 16)).astype(np.float32))

    def test_store_records_meshes(store):
        from ejaot.store.filestore import FileStore
        rows = list(FileStore(store).read_index()["entries"].values())
        meshed = [r for r in rows if "mesh" in r]
        assert len(meshed) == ENTRIES - 1
        for r in meshed:
            assert {"exported", "executable"} <= set(r["payloads"]), r["notes"]
            assert r["executable"]["mesh"] == r["mesh"]

    @pytest.mark.parametrize("tp", [2, 4])
    def test_eager_sharded_calls_exact_and_padded(store, rng, tp):
        bundle = fresh(store)
        mesh = mesh_of(tp=tp)
        heads = NamedSharding(mesh, P(None, None, "tp", None))
        for b, s, path in ((2, 16, "exact"), (1, 8, "exact"), (2, 11, "padded")):
            q, k, v = qkv(rng, b, s)
            before = bundle.stats()["calls"][path]
            out = bundle.call("attention", *(jax.device_put(x, heads) for x in (q, k, v)), causal=True)
            assert bundle.stats()["calls"][path] == before + 1
            assert out.sharding.is_equivalent_to(heads, 4)
            np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True),
                                       atol=2e-5, rtol=2e-5)
            single = ejaot.load(store, miss_log=False).call("attention", q, k, v, causal=True)
            np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-6, rtol=1e-6)
        st = bundle.stats()
        assert st["calls"]["fallback"] == 0 and st["tiers"]["compiled"] == 3 and st["rejected"] == []

    def test_eager_arrays_on_another_device_run_there(store, rng):
        """Arrays committed to a device other than the bundle's: the entry's portable tier
        runs where they are (the compiled tier is loaded for the bundle's device), exact
        and padded, with the right answer."""
        bundle = fresh(store, miss_log=False)
        other = jax.devices()[3]
        q, k, v = qkv(rng, 2, 16)
        with jax.default_device(other):     # uncommitted arrays there first: the compiled tier takes them
            out = bundle.call("attention", *(jnp.asarray(x) for x in (q, k, v)), causal=True)
        np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)
        for b, s, path in ((2, 16, "exact"), (2, 11, "padded")):
            q, k, v = qkv(rng, b, s)
            out = bundle.call("attention", *(jax.device_put(x, other) for x in (q, k, v)), causal=True)
            assert out.devices() == {other}
            np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True),
                                       atol=2e-5, rtol=2e-5)
        st = bundle.stats()
        assert st["calls"]["exact"] == 2 and st["calls"]["padded"] == 1 and st["tiers"]["portable"] == 2

    def test_batch_and_heads_over_a_2d_mesh(store, rng):
        bundle = fresh(store)
        mesh = mesh_of(dp=2, tp=2)
        sh = NamedSharding(mesh, P("dp", None, "tp", None))
        q, k, v = qkv(rng, 2, 16)
        out = bundle.call("attention", *(jax.device_put(x, sh) for x in (q, k, v)), causal=True)
        np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5)
        assert bundle.stats()["calls"] == {"exact": 1, "padded": 0, "fallback": 0}

    def test_replicated_arrays_are_split_to_match(store, rng):
        bundle = fresh(store)
        mesh = mesh_of(tp=4)
        q, k, v = qkv(rng, 2, 16)
        out = bundle.call("attention", jax.device_put(q, NamedSharding(mesh, P(None, None, "tp"))), k,
                          jax.device_put(v, NamedSharding(mesh, P())), causal=True)
        np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5)
        assert bundle.stats()["calls"]["exact"] == 1

    def test_under_jit_several_traces(store, rng):
        bundle = fresh(store)
        step = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True) * 2.0)
        for tp, b, s in ((4, 2, 16), (4, 1, 8), (2, 2, 16), (4, 2, 13), (4, 2, 16)):
            sh = NamedSharding(mesh_of(tp=tp), P(None, None, "tp", None))
            q, k, v = qkv(rng, b, s)
            out = step(*(jax.device_put(x, sh) for x in (q, k, v)))
            np.testing.assert_allclose(np.asarray(out), 2 * attention_reference(q, k, v, causal=True),
                                       atol=5e-5, rtol=5e-5)
        st = bundle.stats()
        # one plan per trace: 4 distinct traces (the last call reuses the first's program)
        assert st["tiers"]["portable"] == 4 and st["calls"]["fallback"] == 0, st
        assert st["calls"]["padded"] == 1

    def test_grad_through_a_mesh_entry_runs_its_stored_vjp(tmp_path, rng):
        from ejaot.build.builder import build
        manifest = MANIFEST[MANIFEST.index('[[kernel]]\nname = "flash_attention"'):].split("\n\n")[0]
        (tmp_path / "v.toml").write_text("format = 1\n" + manifest.replace("[kernel.dims]", "vjp = true\n[kernel.dims]"))
        report = build(tmp_path / "v.toml", "cpu", tmp_path / "store", jobs=1)
        assert report.ok and len(report.built) == 1, report.summary()
        bundle = ejaot.load(tmp_path / "store", miss_log=False)
        sh = NamedSharding(mesh_of(tp=4), P(None, None, "tp", None))
        q = rng.standard_normal((1, 32, 8, 32)).astype(np.float32)
        k, v = (rng.standard_normal((1, 32, 4, 32)).astype(np.float32) for _ in range(2))
        w = rng.standard_normal((1, 32, 8, 32)).astype(np.float32)

        def loss(q, k, v):
            return jnp.sum(bundle.call("flash_attention", q, k, v, causal=True) * w)
        args = [jax.device_put(x, sh) for x in (q, k, v)]
        got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
        assert "dot_general" not in str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(*args))
        from ejaot_kernels.flash_attention import flash_attention
        with jax.default_matmul_precision("highest"):
            want = jax.grad(lambda q, k, v: jnp.sum(flash_attention(q, k, v, causal=True) * w),
                            argnums=(0, 1, 2))(q, k, v)
        for g, r in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-4, rtol=2e-4)
        assert bundle.stats()["calls"] == {"exact": 2, "padded": 0, "fallback": 0}    # two traces

    def test_mesh_given_to_load_warms_compiled_tiers(store):
        bundle = ejaot.load(store, mesh=mesh_of(tp=4), miss_log=False)
        tiers = bundle.warmup()
        # tp=4 entries deserialize onto the mesh; the others (other meshes, one device) too,
        # as portable or single-device compiled tiers
        assert tiers.get("compiled", 0) >= 4 and "unusable" not in tiers, tiers
        assert bundle.stats()["rejected"] == []

    def test_unmatched_sharding_falls_back_with_its_reason(store, rng):
        bundle = fresh(store)
        q, k, v = qkv(rng, 2, 16)
        mesh8 = mesh_of(tp=8)
        out = bundle.call("attention", jax.device_put(q, NamedSharding(mesh8, P(None, None, "tp"))), k, v,
                          causal=True)
        np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5)
        # a dimension no group holds (the sequence)
        mesh4 = mesh_of(tp=4)
        out = bundle.call("attention", jax.device_put(q, NamedSharding(mesh4, P(None, "tp"))), k, v, causal=True)
        np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5)
        assert bundle.stats()["calls"]["fallback"] == 2
        bundle.misses.flush()
        reasons = [json.loads(x)["reason"] for x in (store / "misses.jsonl").read_text().splitlines()]
        assert any("no multi-chip entry for mesh tp=8 (heads over tp)" in r and "stored: mesh" in r
                   for r in reasons), reasons
        assert any("splits dimension seq over 'tp'" in r for r in reasons), reasons
        with pytest.raises(BucketMissError, match="mesh tp=8"):
            ejaot.load(store, strict=True, miss_log=False).call(
                "attention", jax.device_put(q, NamedSharding(mesh8, P(None, None, "tp"))), k, v, causal=True)

    def test_verify_runs_mesh_entries_on_this_hosts_devices(store):
        from ejaot.verify import verify_store
        events = []
        assert verify_store(store, echo=None, on_event=events.append)
        entries = [e for e in events if e["type"] == "entry"]
        assert len(entries) == ENTRIES and all(e["numerics"] == "ok" for e in entries), entries
        assert all(set(e["tiers"]) == {"compiled", "portable"} for e in entries)

    @pytest.mark.parametrize("kernel, tp, dims, present, static", [
        ("flash_attention", 4, dict(batch=1, seq=32, kv_seq=32, q_heads=8, kv_heads=4, head_dim=32), (),
         {"causal": True}),
        ("page_attention", 4, dict(num_seqs=4, q_heads=8, kv_heads=4, head_dim=16, page_size=4, total_pages=32,
                                   max_blocks=4), (), {}),
        ("paged_mla_attention", 4, dict(num_seqs=4, q_heads=8, kv_heads=8, head_dim=16, kv_lora_rank=32,
                                        rope_dim=8, page_size=4, total_pages=32, max_blocks=4),
         ("b_q", "rope_cache"), {}),
        ("mla_attention", 2, dict(batch=1, seq=8, kv_seq=8, q_heads=4, kv_heads=4, head_dim=16, kv_lora_rank=32,
                                  rope_dim=8, num_seqs_plus_one=2), ("b_q", "b_k"), {"causal": True}),
    ])
    def test_each_kernel_sharded_matches_one_device(store, rng, kernel, tp, dims, present, static):
        spec = get_kernel(kernel)
        inputs = spec.make_inputs(dims, "float32", present, spec.canonical_static(static), rng)
        inputs = {k: v for k, v in inputs.items() if v is not None}
        single = _one_device(spec, inputs, static)
        bundle = fresh(store)
        sharded = shard(spec, inputs, mesh_of(tp=tp), {"heads": "tp"})
        out = bundle.call(kernel, **sharded, **static)
        assert bundle.stats()["calls"]["exact"] == 1 and bundle.stats()["tiers"]["compiled"] == 1
        np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=2e-5, rtol=2e-5)
        traced = jax.jit(lambda kw: bundle.call(kernel, **kw, **static))(sharded)
        np.testing.assert_allclose(np.asarray(traced), np.asarray(single), atol=2e-5, rtol=2e-5)
        assert bundle.stats()["tiers"]["portable"] == 1 and bundle.stats()["calls"]["fallback"] == 0

    def _one_device(spec, inputs, static):
        from ejaot.artifact.function import call_jit
        args = [inputs.get(a.name) for a in spec.inputs]
        return call_jit(spec, tuple(args), static)

"""The collection's shared modules (kernels/_shared/, imported as ejaot_kernels._shared) and
the source hash: a backend's hash covers each shared module it imports, and no other, so
editing one makes exactly the entries that run it stale."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ejaot.spec import sources
from ejaot.spec.registry import all_kernels, get_kernel
from triton_lowering import PRELUDE, REPO, requires_cuda_extras

SHARED = os.path.join(os.path.dirname(sources.__file__), os.pardir, os.pardir, "kernels", "_shared")


@pytest.fixture
def hashes_with(monkeypatch):
    """{(kernel, backend): source hash} of every backend, with the file whose path ends in
    `edited` read with one byte appended."""
    real_read = sources._read

    def run(edited):
        monkeypatch.setattr(sources, "_source_hashes", {})
        monkeypatch.setattr(sources, "_read",
                            lambda p: real_read(p) + (b"#" if p.replace(os.sep, "/").endswith(edited) else b""))
        return {(k, b): spec.source_hash(b) for k, spec in all_kernels().items() for b in spec.backends}
    return run


def changed(hashes_with, edited) -> set[tuple[str, str]]:
    plain, edit = hashes_with("no-such-file.py"), hashes_with(edited)
    return {key for key in plain if plain[key] != edit[key]}


@pytest.mark.parametrize("edited", ["_shared/gluon_pipeline.py", "_shared/gluon_support.py",
                                    "flash_attention/gluon_sm90.py"])
def test_hopper_gluon_code_leaves_flash_cpu_and_tpu_entries_fresh(hashes_with, edited):
    """The Gluon pipeline hook and the Hopper flash forward are the Triton backends' alone:
    flash_attention's XLA (cpu) and Pallas TPU entries keep their hash."""
    stale = changed(hashes_with, edited)
    assert ("flash_attention", "triton") in stale
    assert ("flash_attention", "xla") not in stale and ("flash_attention", "pallas_tpu") not in stale
    # flash_mla_attention's Triton backend runs flash's kernels; its others do not
    assert ("flash_mla_attention", "triton") in stale
    assert not {("flash_mla_attention", "xla"), ("flash_mla_attention", "pallas_tpu")} & stale
    assert all(backend == "triton" for _, backend in stale), stale


def test_shared_modules_change_exactly_their_importers(hashes_with):
    every = set(hashes_with("no-such-file.py"))
    gpu_mla = {("mla_attention", "triton"), ("paged_mla_attention", "triton")}
    # the spec normalizers: every kernel's __init__ imports them, so every backend
    assert changed(hashes_with, "_shared/statics.py") == every
    assert changed(hashes_with, "_shared/__init__.py") == every
    # the Triton MLA library: the two MLA Triton backends, nothing else
    assert changed(hashes_with, "_shared/mla_triton.py") == gpu_mla
    # the absorbed form's projections: those two and paged MLA's XLA and Pallas TPU backends
    assert changed(hashes_with, "_shared/mla_projections.py") == gpu_mla | {
        ("paged_mla_attention", "xla"), ("paged_mla_attention", "pallas_tpu")}
    # Gluon code: the Hopper Triton backends (flash, flash MLA through it, MLA, paged MLA)
    gluon = gpu_mla | {("flash_attention", "triton"), ("flash_mla_attention", "triton")}
    assert changed(hashes_with, "_shared/gluon_pipeline.py") == gluon
    assert changed(hashes_with, "_shared/gluon_support.py") == gluon
    # the Triton helpers (LOG2E, tanh, config resolution): every Triton backend
    assert changed(hashes_with, "kernels/triton_support.py") == {k for k in every if k[1] == "triton"}


def test_every_shared_module_is_hashed_by_a_backend_that_imports_it():
    """No module in _shared/ that no backend reaches (dead, or imported in a way the hash
    does not follow)."""
    reached = set()
    collection = os.path.dirname(os.path.realpath(SHARED))
    for spec in all_kernels().values():
        own = spec.package.split(".")[-1]
        for backend in spec.backends.values():
            module = backend.impl.partition(":")[0]
            start = [f"{own}/__init__.py", f"{own}/{module[len(spec.package) + 1:].replace('.', '/')}.py"]
            reached |= {rel for rel, _ in sources._reached_modules(collection, start)}
    shared = {f"_shared/{f}" for f in os.listdir(SHARED) if f.endswith(".py")}
    assert shared - reached == set()


@requires_cuda_extras
def test_importing_the_backends_patches_nothing():
    """The Gluon pipeline is registered by the backends when they lower a Gluon kernel,
    not by importing them: jax-triton's compile stays jax-triton's until then."""
    code = PRELUDE.split("import atexit")[0] + (
        "import jax_triton.triton_lib as lib\n"
        "import ejaot_kernels._shared.gluon_pipeline as gp\n"
        "import ejaot_kernels.flash_attention.triton_gpu, ejaot_kernels.mla_attention.triton_gpu\n"
        "import ejaot_kernels.paged_mla_attention.triton_gpu\n"
        "assert not getattr(lib.compile_ttir_to_ptx_inplace, 'ejaot_gluon_pipeline', False)\n"
        "assert not gp._ROUTED\n"
        "gp.route_through_gluon_pipeline('_some_kernel')\n"
        "assert getattr(lib.compile_ttir_to_ptx_inplace, 'ejaot_gluon_pipeline', False)\n"
        "assert gp._ROUTED == {'_some_kernel'}\n"
        "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]


def test_flash_gluon_head_dims_have_one_definition():
    """The heuristic and the Triton backend's static choice agree on the head dims the
    Gluon forward tiles (configs.gluon_head_dim_ok)."""
    from ejaot_kernels.flash_attention import configs

    class Hopper:
        facts = {"compute_capability": 90}
    static = {"causal": True, "sliding_window": None, "logits_soft_cap": None, "softmax_scale": None}
    for d in (32, 64, 128, 256):
        dims = dict(batch=1, seq=1024, kv_seq=1024, q_heads=8, kv_heads=8, head_dim=d)
        assert bool(configs.triton_heuristic(dims, static, Hopper()).get("gluon")) == configs.gluon_head_dim_ok(d)
    assert get_kernel("flash_attention").backends["triton"].heuristic_config is configs.triton_heuristic

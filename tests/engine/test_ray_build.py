"""Ray as the build executor, for real: a local Ray instance (2 CPUs) and a `ray start
--head` cluster on loopback each build a small manifest whose store has exactly the keys
and payload bytes of a local build; a worker killed mid-build is retried by Ray."""
import os
import shutil
import socket
import subprocess
import sys

import pytest

from ejaot.build.builder import build
from ejaot.store.filestore import FileStore
from conftest import SMALL_MANIFEST

ray = pytest.importorskip("ray", reason="Ray is installed by `make test` (requirements/ray.txt)")


def payloads(root):
    """Payload bytes per entry; a compiled executable only as present (XLA:CPU does not
    serialize it byte-reproducibly across processes, see ejaot/build/merge.py)."""
    index = FileStore(root).read_index()["entries"]
    return {k: {kind: ref["sha256"] if kind != "executable" else "present" for kind, ref in r["payloads"].items()}
            for k, r in index.items()}


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("raybuild")
    (root / "m.toml").write_text(SMALL_MANIFEST)
    r = build(root / "m.toml", "cpu", root / "local", jobs=1)
    assert r.ok and len(r.built) == 8
    return root


def test_local_ray_instance_builds_what_a_local_build_does(local_build, monkeypatch, tmp_path):
    marker = tmp_path / "crashed-once"
    monkeypatch.setenv("EJAOT_RAY_CRASH_ONCE", str(marker))     # one worker dies mid-build
    r = build(local_build / "m.toml", "cpu", tmp_path / "ray", jobs=2, executor="ray")
    assert r.ok, r.summary()
    assert marker.exists()                                       # the crash happened, Ray retried
    assert payloads(tmp_path / "ray") == payloads(local_build / "local")
    assert not list((tmp_path / "ray" / "tmp").glob("*"))        # nothing half-written


def test_ray_cluster_on_loopback(local_build, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    start = subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        out = subprocess.run([sys.executable, "-m", "ejaot.cli", "build", "--manifest", str(local_build / "m.toml"),
                              "--target", "cpu", "--out", str(tmp_path / "cluster"), "--executor", "ray",
                              "--ray-address", f"127.0.0.1:{port}", "--quiet"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        assert payloads(tmp_path / "cluster") == payloads(local_build / "local")
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_an_unreachable_cluster_is_a_clear_error_and_no_store(local_build, tmp_path):
    """ray.init retries an address nobody answers at for minutes; the build says so at once."""
    with socket.socket() as s:          # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "ejaot.cli", "build", "--manifest", str(local_build / "m.toml"),
                          "--target", "cpu", "--out", str(tmp_path / "cluster"), "--executor", "ray",
                          "--ray-address", f"127.0.0.1:{port}", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert f"--ray-address '127.0.0.1:{port}': no Ray cluster answers" in out.stderr
    assert not (tmp_path / "cluster").exists()


def test_ray_address_forms():
    from ejaot.build.executors.ray_executor import check_reachable
    from ejaot.errors import EjaotError
    check_reachable("auto")             # Ray's own discovery: left to Ray
    with pytest.raises(EjaotError, match="the port 'x1' is not a number"):
        check_reachable("ray://head:x1")
    with socket.socket() as listener:   # a listening socket answers, in either address form
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")


FAILING = """
import jax.numpy as jnp
from ejaot.spec import ArrayArg, Backend, KernelSpec


def impl(inputs, valid_lens, *, config):
    x = inputs["x"]
    if x.shape[0] == 3:
        raise ValueError("this kernel cannot take n=3")
    return (x * 2.0,)


SPEC = KernelSpec(name="failing.double", package=__name__, dims=("n",),
                  inputs=(ArrayArg("x", ("n",)),), outputs=(ArrayArg("y", ("n",)),), statics=(),
                  dtypes=("float32",), backends={"xla": Backend(f"{__name__}:impl")})
"""


def test_a_kernel_error_is_reported_per_entry(tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "failingpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "k.py").write_text(FAILING)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    m = tmp_path / "m.toml"
    m.write_text('format = 1\n[[kernel]]\nname = "failing.double"\nmodule = "failingpkg.k"\n'
                 'dtypes = ["float32"]\n[kernel.dims]\nn = [2, 3]\n')
    r = build(m, "cpu", tmp_path / "s", jobs=2, executor="ray")
    assert len(r.built) == 1 and len(r.failed) == 1
    assert "n=3" in r.failed[0][0] and "cannot take n=3" in r.failed[0][1]

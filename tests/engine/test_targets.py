"""Cross-target builds on this CPU-only host: a small GPU manifest (Triton PTX + cubin,
no compiled tier until `finalize`) and a small TPU manifest (both tiers + Mosaic)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ejaot.build.builder import build
from ejaot.store.filestore import FileStore
from ejaot.toolchain import extras_dir

EJAOT = str(Path(sys.executable).parent / "ejaot")

FLASH = """
format = 1
[[kernel]]
name = "flash_attention"
dtypes = ["bfloat16"]
[kernel.dims]
batch = 1
seq = [128, 256]
q_heads = 4
kv_heads = 2
head_dim = 128
[kernel.static]
causal = true

[[kernel]]
name = "attention"
dtypes = ["bfloat16"]
[kernel.dims]
batch = 1
seq = 128
q_heads = 4
kv_heads = 2
head_dim = 128
[kernel.static]
causal = true
"""


def _ls(store):
    out = subprocess.run([EJAOT, "ls", str(store), "--json"], capture_output=True, text=True, check=True).stdout
    return [json.loads(x) for x in out.splitlines()]


@pytest.mark.skipif(not (extras_dir("cuda") / "jax_plugins").is_dir(), reason="CUDA extras not installed")
def test_gpu_sm90_build_on_a_cpu_host(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_DISABLE_LINE_INFO", raising=False)    # the build's default, not a shell's
    m = tmp_path / "m.toml"
    m.write_text(FLASH)
    report = build(m, "gpu-h100", tmp_path / "gpu", jobs=1)
    assert report.ok, report.summary()
    rows = _ls(tmp_path / "gpu")
    flash = [r for r in rows if r["kernel"] == "flash_attention"]
    assert len(flash) == 2 and all(r["backend"] == "triton" and r["target"] == "gpu-sm90" for r in flash)
    for r in flash:
        assert {"exported", "ptx", "cubin"} <= set(r["payloads"]) and "executable" not in r["payloads"]
        assert r["toolchain"]["triton"] == "3.7.1" and r["config"]["compute_capability"] == 90
    [plain] = [r for r in rows if r["kernel"] == "attention"]
    assert plain["backend"] == "xla" and set(plain["payloads"]) == {"exported"}
    text = subprocess.run([EJAOT, "inspect", str(tmp_path / "gpu"), flash[0]["key"]], capture_output=True,
                          text=True, check=True).stdout
    assert "registers" in text and "spill_store_bytes" in text and "sm_90a" in text
    # the stored PTX is the one inside the portable module
    store = FileStore(tmp_path / "gpu")
    rec = store.read_index()["entries"][flash[0]["key"]]
    ptx = store.read_blob(rec["payloads"]["ptx"]["sha256"])
    assert b".target sm_90a" in ptx and b".entry" in ptx
    # compiled without line info: no blob names the checkout (a store's bytes do not depend
    # on where it was built)
    assert b".file" not in ptx and b".loc" not in ptx
    checkout = str(Path(__file__).resolve().parents[2]).encode()
    for blob in (tmp_path / "gpu" / "blobs").rglob("*"):
        assert not blob.is_file() or checkout not in blob.read_bytes(), blob


@pytest.mark.skipif(not (extras_dir("tpu") / "libtpu").is_dir(), reason="libtpu extras not installed")
def test_tpu_v5e_build_on_a_cpu_host(tmp_path):
    m = tmp_path / "m.toml"
    m.write_text(FLASH)
    report = build(m, "tpu-v5e", tmp_path / "tpu", jobs=1)
    assert report.ok, report.summary()
    rows = _ls(tmp_path / "tpu")
    flash = [r for r in rows if r["kernel"] == "flash_attention"]
    assert all(r["backend"] == "pallas_tpu" for r in flash)
    for r in flash:
        assert {"exported", "executable", "mosaic"} <= set(r["payloads"])
    [plain] = [r for r in rows if r["kernel"] == "attention"]
    assert {"exported", "executable"} == set(plain["payloads"])
    text = subprocess.run([EJAOT, "inspect", str(tmp_path / "tpu"), flash[0]["key"]], capture_output=True,
                          text=True, check=True).stdout
    assert "TPU v5 lite" in text and "not yet checked on hardware" in text
    assert "roofline" in text and "flops" in text
    # on this CPU host the TPU store loads, rejects everything with a reason, and serves via fallback
    import numpy as np
    import ejaot
    bundle = ejaot.load(tmp_path / "tpu", miss_log=False)
    assert len(bundle.entries) == 0
    [problem] = bundle.stats()["rejected"]        # one store-wide reason, not one per entry
    assert "built for target 'tpu-v5e' (platform tpu); this host runs cpu" in problem["reason"]


def test_importing_ejaot_says_nothing_about_tpus():
    r = subprocess.run([sys.executable, "-c", "import ejaot, jax; from ejaot.runtime import bundle; "
                        "import jax.numpy as jnp; jnp.ones(3).block_until_ready()"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "tpu" not in (r.stdout + r.stderr).lower()

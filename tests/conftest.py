import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))
REPO = Path(__file__).resolve().parent.parent

SMALL_MANIFEST = """
format = 1
[[kernel]]
name = "attention"
dtypes = ["float32", "bfloat16"]
[kernel.dims]
batch = [1, 2]
seq = [16, 32]
q_heads = 4
kv_heads = 2
head_dim = 16
[kernel.static]
causal = true
"""


@pytest.fixture
def rng():
    # Fresh inputs each run; the seed is printed on failure by pytest's -ra summary via the id.
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def small_manifest(tmp_path_factory):
    path = tmp_path_factory.mktemp("manifests") / "small.toml"
    path.write_text(SMALL_MANIFEST)
    return path


@pytest.fixture(scope="session")
def built_store(tmp_path_factory, small_manifest):
    """A small cpu store, built once per session. Tests that damage a store copy it."""
    from ejaot.build.builder import build
    out = tmp_path_factory.mktemp("store") / "cpu"
    report = build(small_manifest, "cpu", out, jobs=1)
    assert report.ok and len(report.built) == 8, report.summary()
    return out


# A one-bucket flash_mla_attention manifest table (float32, seq 16), which the MLA store
# tests and the flash_mla jit test build
TINY_FLASH_MLA_TABLE = """
[[kernel]]
name = "flash_mla_attention"
dtypes = ["float32"]
[kernel.dims]
batch = 1
heads = 2
seq = 16
head_dim = 16
latent_dim = 8
[kernel.static]
causal = true
"""


def build_cpu_store(tmp_path, manifest_text: str, entries: int):
    """Builds `manifest_text` for the cpu target into tmp_path/"store" and loads it; every
    one of `entries` entries must build and be accepted. Returns (store dir, bundle)."""
    import ejaot
    from ejaot.build.builder import build
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(manifest_text)
    out = tmp_path / "store"
    report = build(manifest, "cpu", out, jobs=1)
    assert report.ok and len(report.built) == entries, report.summary()
    bundle = ejaot.load(out)
    assert bundle.stats()["rejected"] == []
    return out, bundle


@pytest.fixture
def store_copy(built_store, tmp_path):
    import shutil
    dest = tmp_path / "store"
    shutil.copytree(built_store, dest)
    (dest / "misses.jsonl").unlink(missing_ok=True)
    return dest


def qkv(rng, b, s, hq=4, hk=2, d=16, t=None, dtype=np.float32):
    t = s if t is None else t
    return (rng.standard_normal((b, s, hq, d)).astype(dtype),
            rng.standard_normal((b, t, hk, d)).astype(dtype),
            rng.standard_normal((b, t, hk, d)).astype(dtype))

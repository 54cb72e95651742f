"""What a server is told: warnings on the "ejaot" logger when a store cannot serve, when an
entry is rejected and the first time a call signature falls back; require=True raises;
strict-mode messages give the true reason; misses record each input's dtype."""
import json
import logging

import numpy as np
import pytest

import ejaot
from ejaot.errors import BucketMissError, StoreError
from ejaot.store.filestore import FileStore
from ejaot.store.format import encode_index
from conftest import qkv


@pytest.mark.parametrize("case", ["missing", "file", "empty", "other_target", "garbage"])
def test_a_store_that_cannot_serve_is_said_once_and_require_raises(tmp_path, store_copy, caplog, rng, case):
    path = {"missing": tmp_path / "nope", "file": tmp_path / "afile", "empty": tmp_path / "empty",
            "other_target": store_copy, "garbage": store_copy}[case]
    want = {"missing": "does not exist", "file": "is not a directory", "empty": "has no entries",
            "other_target": "built for target 'gpu-sm90' (platform cuda); this host runs cpu",
            "garbage": "bad magic"}[case]
    if case == "file":
        path.write_text("x")
    if case == "empty":
        FileStore(path).commit("cpu", {})
    if case == "other_target":
        store = FileStore(path)
        index = store.read_index()
        store.index_path.write_bytes(encode_index("gpu-sm90", index["entries"]))
    if case == "garbage":
        (path / "index.msgpack").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="ejaot"):
        bundle = ejaot.load(path)
        for _ in range(2):
            bundle.call("attention", *qkv(rng, 1, 16), causal=True)
    said = [r.getMessage() for r in caplog.records if r.name == "ejaot"]
    assert len(said) == 1 and want in said[0], said
    with pytest.raises(StoreError, match=want.split(" (")[0].split("'")[0]):
        ejaot.load(path, require=True)
    strict = ejaot.load(path, strict=True)
    with pytest.raises(BucketMissError, match="the store cannot serve here") as e:
        strict.call("attention", *qkv(rng, 1, 16), causal=True)
    assert "has no entries for it" not in str(e.value) or case == "empty"


def test_a_good_store_loads_quietly_and_require_passes(store_copy, caplog, rng):
    with caplog.at_level(logging.WARNING, logger="ejaot"):
        bundle = ejaot.load(store_copy, require=True)
        bundle.call("attention", *qkv(rng, 1, 16), causal=True)
    assert [r for r in caplog.records if r.name == "ejaot"] == []


def test_first_fallback_of_each_signature_is_warned_once(store_copy, caplog, rng):
    bundle = ejaot.load(store_copy)
    with caplog.at_level(logging.WARNING, logger="ejaot"):
        for _ in range(3):
            bundle.call("attention", *qkv(rng, 1, 40), causal=True)
        bundle.call("attention", *qkv(rng, 1, 50), causal=True)
    said = [r.getMessage() for r in caplog.records if r.name == "ejaot"]
    assert len(said) == 2 and all("JIT fallback" in m and "no bucket covers" in m for m in said)


def test_rejected_entries_are_warned(store_copy, caplog, rng):
    store = FileStore(store_copy)
    index = store.read_index()
    key = sorted(index["entries"])[0]
    index["entries"][key]["dims"]["batch"] = "x"
    store.index_path.write_bytes(encode_index(index["target"], index["entries"]))
    with caplog.at_level(logging.WARNING, logger="ejaot"):
        ejaot.load(store_copy).stats()
    said = [r.getMessage() for r in caplog.records if r.name == "ejaot"]
    assert any(key[:12] in m and "dims.batch" in m for m in said)


def test_misses_record_each_inputs_dtype(store_copy, rng):
    bundle = ejaot.load(store_copy)
    bundle.call("attention", *qkv(rng, 1, 40), causal=True)
    line = json.loads((store_copy / "misses.jsonl").read_text().splitlines()[0])
    assert line["dtypes"] == {"query": "float32", "key": "float32", "value": "float32"}


class _Gpu:
    """What the catalog reads of a jax GPU device."""
    platform = "gpu"
    device_kind = "a GPU"

    def __init__(self, compute_capability):
        self.compute_capability = compute_capability


@pytest.mark.parametrize("target, cc, serves", [
    ("gpu-sm90", "9.0", True), ("gpu-sm90", "10.0", False), ("gpu-sm90", "12.0", False),
    ("gpu-sm90", "8.0", False), ("gpu-sm80", "8.0", True), ("gpu-sm80", "9.0", True),
    ("gpu-sm80", "8.7", True), ("gpu-sm80", "10.0", True), ("gpu-sm80", "7.5", False),
    ("gpu-sm80", "8.6", False), ("gpu-sm80", "8.9", False), ("gpu-sm80", "12.0", False)])
def test_a_gpu_store_for_another_generation_cannot_serve(store_copy, target, cc, serves):
    """Hopper's PTX (sm_90a) runs on Hopper only, Ampere's on later GPUs with an A100's
    shared memory (not the 99 KB ones): a store for another GPU is refused at load, naming
    both, so every call goes to the JIT fallback instead of failing on the device;
    require=True raises."""
    from ejaot.runtime.catalog import Catalog
    from ejaot.runtime.meshed import MeshRouter
    store = FileStore(store_copy)
    store.index_path.write_bytes(encode_index(target, store.read_index()["entries"]))

    def catalog(require=False):
        return Catalog(str(store_copy), FileStore(store_copy), _Gpu(cc), "cuda", None, MeshRouter(None), require)
    if serves:
        opened = catalog(require=True)
        assert opened.store_problem is None and "attention" in opened.stored_kernels()
        return
    problem = catalog().store_problem
    assert f"built for target '{target}'" in problem and f"compute capability {cc}" in problem, problem
    if target == "gpu-sm80" and cc in ("8.6", "8.9", "12.0"):
        assert "163 KB of shared memory per block" in problem and "99 KB" in problem, problem
    with pytest.raises(StoreError, match="compute capability"):
        catalog(require=True)


def test_finalize_refuses_a_gpu_it_would_compile_useless_executables_for(store_copy, monkeypatch):
    """`ejaot finalize` on a GPU the store's target does not run on: one clear error before
    any entry is compiled, the store untouched."""
    import jax
    from click.testing import CliRunner
    from ejaot.cli import main
    store = FileStore(store_copy)
    store.index_path.write_bytes(encode_index("gpu-sm90", store.read_index()["entries"]))
    before = store.index_path.read_bytes()
    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [_Gpu("10.0")])
    result = CliRunner().invoke(main, ["finalize", str(store_copy)])
    assert result.exit_code == 1, result.output
    assert "compute capability 9.0 only" in result.output and "finalize it on a GPU it runs on" in result.output
    assert store.index_path.read_bytes() == before

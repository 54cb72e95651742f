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
    """What the catalog and finalize read of a jax GPU device."""
    platform = "gpu"
    device_kind = "a GPU"

    def __init__(self, compute_capability):
        self.compute_capability = compute_capability


@pytest.mark.parametrize("target, cc, runs", [
    ("gpu-sm90", "9.0", True), ("gpu-sm90", "10.0", False), ("gpu-sm90", "12.0", False),
    ("gpu-sm90", "8.0", False), ("gpu-sm80", "8.0", True), ("gpu-sm80", "9.0", True),
    ("gpu-sm80", "8.7", True), ("gpu-sm80", "10.0", True), ("gpu-sm80", "7.5", False),
    ("gpu-sm80", "8.6", False), ("gpu-sm80", "8.9", False), ("gpu-sm80", "12.0", False),
    ("gpu-sm90", None, True), ("gpu-sm90", "gfx90a", True)])
def test_which_gpus_run_a_gpu_targets_kernels(target, cc, runs):
    """Hopper's PTX (sm_90a) runs on Hopper only; Ampere's on later GPUs with an A100's
    shared memory (not the 99 KB ones). A device that does not say is not refused."""
    from ejaot.targets import device_problem, get_target
    problem = device_problem(get_target(target), _Gpu(cc))
    if runs:
        assert problem is None, problem
        return
    assert f"built for target '{target}'" in problem and f"compute capability {cc}" in problem, problem
    if target == "gpu-sm80" and cc in ("8.6", "8.9", "12.0"):
        assert "163 KB of shared memory per block" in problem and "99 KB" in problem, problem


# flash_attention lowers to Triton on gpu-sm90, attention to XLA alone: one bucket each
_GPU_MANIFEST = "format = 1\n" + "".join(
    f'[[kernel]]\nname = "{kernel}"\ndtypes = ["bfloat16"]\n'
    "[kernel.dims]\nbatch = 1\nseq = 128\nq_heads = 2\nkv_heads = 1\nhead_dim = 64\n"
    for kernel in ("flash_attention", "attention"))


@pytest.fixture(scope="module")
def gpu_store(tmp_path_factory):
    from ejaot.build.builder import build
    from ejaot.toolchain import extras_dir
    if not (extras_dir("cuda") / "jax_plugins").is_dir():
        pytest.skip("CUDA extras not installed")
    root = tmp_path_factory.mktemp("gpu")
    (root / "m.toml").write_text(_GPU_MANIFEST)
    report = build(root / "m.toml", "gpu-sm90", root / "store", jobs=1)
    assert report.ok, report.summary()
    return root / "store"


@pytest.mark.parametrize("cc", ["9.0", "10.0"])
def test_gpu_kernels_built_for_another_generation_are_refused_per_entry(gpu_store, cc):
    """On a GPU the target does not run on, each entry that launches Triton kernels (PTX
    for sm_90a) is refused, naming the target and the GPU, so its calls go to the JIT
    fallback; an entry that is XLA alone still serves, and so does the store."""
    from ejaot.runtime.catalog import Catalog
    from ejaot.runtime.meshed import MeshRouter
    catalog = Catalog(str(gpu_store), FileStore(gpu_store), _Gpu(cc), "cuda", None, MeshRouter(None), True)
    accepted = {e.kernel for e in catalog.all_entries().values()}
    assert catalog.store_problem is None
    if cc == "9.0":
        assert accepted == {"flash_attention", "attention"} and catalog.rejections() == []
        return
    assert accepted == {"attention"}
    [rejected] = catalog.rejections()
    assert rejected["kernel"] == "flash_attention", rejected
    assert "compute capability 9.0 only" in rejected["reason"] and "compute capability 10.0" in rejected["reason"]


def test_finalize_skips_gpu_kernels_it_would_compile_for_the_wrong_gpu(gpu_store, tmp_path, monkeypatch):
    """`ejaot finalize` on a GPU the target does not run on: each entry with Triton kernels
    is skipped with the reason, nothing is compiled, the store is left as it was."""
    import shutil
    import jax
    from click.testing import CliRunner
    from ejaot.cli import main
    store = tmp_path / "store"
    shutil.copytree(gpu_store, store)
    before = (store / "index.msgpack").read_bytes()
    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [_Gpu("10.0")])
    result = CliRunner().invoke(main, ["finalize", str(store), "--kernel", "flash_attention"])
    assert result.exit_code == 0, result.output
    assert "skip " in result.output and "compute capability 9.0 only" in result.output, result.output
    assert "finalize it on a GPU it runs on" in result.output
    assert "finalized: 0 compiled, 1 skipped, 0 failed" in result.output, result.output
    assert (store / "index.msgpack").read_bytes() == before

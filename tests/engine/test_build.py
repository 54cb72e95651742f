"""Builds: incremental reuse, failures isolated, parallel workers, superseded entries."""
import numpy as np
import pytest

from ejaot.build.builder import build
from ejaot.store.filestore import FileStore
from conftest import SMALL_MANIFEST


def test_noop_rebuild_reuses_everything(built_store, small_manifest):
    before = FileStore(built_store).index_path.read_bytes()
    report = build(small_manifest, "cpu", built_store, jobs=1)
    assert report.ok and not report.built and len(report.reused) == 8
    assert FileStore(built_store).index_path.read_bytes() == before


def test_incremental_builds_only_new_entries(store_copy, tmp_path):
    m = tmp_path / "more.toml"
    m.write_text(SMALL_MANIFEST.replace("seq = [16, 32]", "seq = [16, 32, 48]"))
    report = build(m, "cpu", store_copy, jobs=1)
    assert report.ok and len(report.built) == 4 and len(report.reused) == 8
    assert len(FileStore(store_copy).read_index()["entries"]) == 12


def test_missing_blob_is_rebuilt(store_copy, small_manifest):
    store = FileStore(store_copy)
    r = next(iter(store.read_index()["entries"].values()))
    store.blob_path(r["payloads"]["exported"]["sha256"]).unlink()
    report = build(small_manifest, "cpu", store_copy, jobs=1)
    assert len(report.built) == 1 and len(report.reused) == 7


def test_one_failing_entry_does_not_lose_the_others(tmp_path, monkeypatch):
    import ejaot.build.lower as lower
    real = lower.lower_entry

    def flaky(entry):
        if entry.dims["seq"] == 32 and entry.dtype == "bfloat16":
            raise RuntimeError("boom in lowering")
        return real(entry)
    monkeypatch.setattr(lower, "lower_entry", flaky)
    m = tmp_path / "m.toml"
    m.write_text(SMALL_MANIFEST)
    report = build(m, "cpu", tmp_path / "store", jobs=1)
    assert not report.ok and len(report.failed) == 2 and len(report.built) == 6
    assert all("boom in lowering" in err and "seq=32" in d for d, err in report.failed)
    assert "FAILED" in report.summary()
    assert len(FileStore(tmp_path / "store").read_index()["entries"]) == 6


def test_parallel_build_matches_serial(tmp_path, built_store):
    m = tmp_path / "m.toml"
    m.write_text(SMALL_MANIFEST)
    report = build(m, "cpu", tmp_path / "par", jobs=2)
    assert report.ok and len(report.built) == 8
    par = FileStore(tmp_path / "par").read_index()["entries"]
    ser = FileStore(built_store).read_index()["entries"]
    assert set(par) == set(ser)
    for k in par:   # lowering is deterministic: same portable bytes from either path
        assert par[k]["payloads"]["exported"]["sha256"] == ser[k]["payloads"]["exported"]["sha256"]


def test_kernel_source_change_supersedes_old_entries(store_copy, small_manifest, monkeypatch):
    from ejaot.spec import sources
    real = sources.backend_source_hash
    monkeypatch.setattr(sources, "backend_source_hash",
                        lambda package, module: "0" * 64 if package.endswith(".attention")
                        else real(package, module))
    report = build(small_manifest, "cpu", store_copy, jobs=1)
    assert len(report.built) == 8
    entries = FileStore(store_copy).read_index()["entries"]
    assert len(entries) == 8 and all(r["source_hash"] == "0" * 64 for r in entries.values())


def test_source_hash_covers_imported_modules(tmp_path):
    """A kernel built on other code goes stale when that code changes: the hash follows
    imports by absolute name, `from ejaot_kernels.pkg import module`, `from .module import`
    and `from . import module` (transitively, into other packages and into the package's
    own excluded backend modules), but not implementations named for lazy import
    ("pkg.module:fn") or modules nothing imports."""
    from ejaot.spec.sources import _reached_modules
    for pkg, files in {
        "base": {"__init__.py": 'B = Backend("ejaot_kernels.base.tpu:impl")\n',
                 "gpu.py": "from .helpers import step\nfrom . import consts\n",
                 "helpers.py": "def step(): pass\n", "consts.py": "C = 1\n", "tpu.py": "x = 1\n",
                 "extra.py": "y = 2\n"},
        "user": {"__init__.py": "", "gpu.py": "from .xla import ref\nfrom ejaot_kernels.shared import y\n",
                 "xla.py": "from ejaot_kernels.base import (gpu,\n    extra as e)\n", "tpu.py": "z = 3\n"},
        "lazy": {"__init__.py": "from ejaot_kernels.base import B\n"},
    }.items():
        (tmp_path / pkg).mkdir()
        for name, text in files.items():
            (tmp_path / pkg / name).write_text(text)
    (tmp_path / "shared.py").write_text("")
    # the user's gpu backend: its own files less the other backends' (xla.py is pulled
    # back in because gpu.py imports it), and what they import
    found = dict(_reached_modules(str(tmp_path), ["user/__init__.py", "user/gpu.py"]))
    assert sorted(found) == ["base/__init__.py", "base/consts.py", "base/extra.py", "base/gpu.py",
                             "base/helpers.py", "shared.py", "user/__init__.py", "user/gpu.py", "user/xla.py"]
    assert found["base/helpers.py"] == b"def step(): pass\n"
    # only the lazily named implementation: the package's __init__ alone, no backend module
    assert sorted(dict(_reached_modules(str(tmp_path), ["lazy/__init__.py"]))) == ["base/__init__.py",
                                                                                  "lazy/__init__.py"]


def test_editing_the_hopper_flash_kernel_leaves_cpu_and_tpu_entries_fresh(monkeypatch):
    """A backend's hash covers what it imports, not its folder: gluon_sm90.py (imported by
    the Triton backend only) and triton_support.py change flash_attention's Triton hash and
    neither its XLA nor its Pallas TPU hash."""
    from ejaot.spec import sources
    from ejaot.spec.registry import get_kernel
    spec = get_kernel("flash_attention")
    real_read = sources._read

    def hashes_with(edited):
        monkeypatch.setattr(sources, "_source_hashes", {})
        monkeypatch.setattr(sources, "_read", lambda p: real_read(p) + (b"#" if p.endswith(edited) else b""))
        return {b: spec.source_hash(b) for b in ("xla", "pallas_tpu", "triton")}
    plain = hashes_with("no-such-file.py")
    for edited in ("flash_attention/gluon_sm90.py", "kernels/triton_support.py", "_shared/gluon_pipeline.py",
                   "_shared/gluon_support.py"):
        h = hashes_with(edited)
        assert h["xla"] == plain["xla"] and h["pallas_tpu"] == plain["pallas_tpu"], edited
        assert h["triton"] != plain["triton"], edited
    h = hashes_with("flash_attention/pallas_tpu.py")
    assert h["pallas_tpu"] != plain["pallas_tpu"] and h["xla"] == plain["xla"] and h["triton"] == plain["triton"]
    h = hashes_with("flash_attention/__init__.py")          # the spec counts for every backend
    assert all(h[b] != plain[b] for b in plain)


def test_source_hash_changes_with_an_imported_module(monkeypatch):
    """flash_mla_attention's XLA backend uses mla_attention's; editing that module (and not
    an unrelated one) changes flash_mla_attention's hash. Likewise within one package."""
    from ejaot.spec import sources
    from ejaot.spec.registry import get_kernel
    spec = get_kernel("flash_mla_attention")
    real_read = sources._read

    def hash_with(edited, backend="xla"):
        monkeypatch.setattr(sources, "_source_hashes", {})
        monkeypatch.setattr(sources, "_read", lambda p: real_read(p) + (b"#" if p.endswith(edited) else b""))
        return spec.source_hash(backend)
    plain = hash_with("no-such-file.py")
    assert hash_with("mla_attention/xla.py") != plain
    assert hash_with("mla_attention/pallas_tpu.py") == plain
    # mla_attention's Triton backend delegates prefill to its XLA backend: that module counts
    spec = get_kernel("mla_attention")
    plain = hash_with("no-such-file.py", "triton")
    assert hash_with("mla_attention/xla.py", "triton") != plain
    assert hash_with("mla_attention/pallas_tpu.py", "triton") == plain


@pytest.mark.parametrize("target,needs", [("tpu-v5e", "needs libtpu"), ("gpu-sm90", "needs jax-cuda13-plugin")])
def test_parallel_build_without_the_toolchain_says_what_to_install(tmp_path, small_manifest, monkeypatch,
                                                                   target, needs):
    """The parallel build checks the target's toolchain before it starts workers: the
    error names what to install (not a broken process pool), and no entry is written."""
    from ejaot import toolchain
    from ejaot.errors import TargetUnavailableError
    monkeypatch.setattr(toolchain, "extras_dir", lambda kind: tmp_path / "no-extras" / kind)
    with pytest.raises(TargetUnavailableError, match=needs):
        build(small_manifest, target, tmp_path / "out", jobs=2)
    assert not (tmp_path / "out" / "index.msgpack").exists()


def test_prune_keeps_only_what_the_manifest_plans(store_copy, tmp_path):
    import ejaot
    from ejaot.errors import StoreError
    smaller = tmp_path / "smaller.toml"
    smaller.write_text(SMALL_MANIFEST.replace("seq = [16, 32]", "seq = [16]"))   # 4 of the 8 entries
    kept = build(smaller, "cpu", store_copy, jobs=1)               # without --prune: all stay
    assert kept.ok and len(kept.reused) == 4 and kept.pruned == 0
    assert len(FileStore(store_copy).read_index()["entries"]) == 8
    pruned = build(smaller, "cpu", store_copy, jobs=1, prune=True)  # nothing to build, 4 removed
    assert pruned.ok and not pruned.built and pruned.pruned == 4 and "pruned 4 entries" in pruned.summary()
    entries = FileStore(store_copy).read_index()["entries"]
    assert len(entries) == 4 and all(r["dims"]["seq"] == 16 for r in entries.values())
    assert FileStore(store_copy).collect_garbage(grace_seconds=0)["removed"] > 0
    bundle = ejaot.load(store_copy)                                # the pruned store still serves
    assert bundle.stats()["rejected"] == [] and len(bundle.entries) == 4
    with pytest.raises(StoreError, match="--prune with --shard"):
        build(smaller, "cpu", store_copy, jobs=1, prune=True, shard=(1, 2))


def test_artifact_bytes_name_no_install_path(built_store):
    """No blob carries the directory the kernels were installed in (MLIR locations keep
    file names only), so shards built in different checkouts merge: same key, same bytes."""
    from pathlib import Path
    import ejaot
    import ejaot_kernels
    roots = {str(Path(ejaot.__file__).resolve().parents[1]), str(Path(ejaot_kernels.__path__[0]).resolve().parent)}
    blobs = [p for p in (built_store / "blobs").rglob("*") if p.is_file()]
    assert blobs
    for p in blobs:
        data = p.read_bytes()
        assert not any(r.encode() in data for r in roots), (p.name, roots)

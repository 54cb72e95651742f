"""Files that are not files, oversized files, the miss log's writes, gc racing a build, and
signatures through `ejaot finalize`: none may block, exhaust memory, write outside the
store, lose an entry, or leave an entry unusable while reporting success."""
import os
import shutil
import socket
import stat
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

import ejaot
from ejaot.errors import StoreError
from ejaot.store.filestore import FileStore
from conftest import qkv
from reference import attention_reference


def _served(bundle, rng):
    """A call through the bundle, checked; must not block (a thread with a deadline)."""
    q, k, v = qkv(rng, 1, 16)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("out", bundle.call("attention", q, k, v, causal=True)),
                         daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the call blocked"
    np.testing.assert_allclose(result["out"], attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)


def _refused(reason) -> bool:
    return bool(reason) and any(w in reason for w in ("not a regular file", "symlink", "outside the store"))


def _load(path, **kw):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("b", ejaot.load(path, **kw)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "ejaot.load blocked"
    return result["b"]


def _a_blob(store_copy, kind="executable"):
    store = FileStore(store_copy)
    index = store.read_index()
    key, rec = next((k, r) for k, r in index["entries"].items()
                    if r["dtype"] == "float32" and r["dims"]["batch"] == 1 and r["dims"]["seq"] == 16)
    return key, store.blob_path(rec["payloads"][kind]["sha256"])


def _make_special(path, kind):
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(path.parent)            # AF_UNIX paths are limited to ~100 bytes
        try:
            s.bind(path.name)
        finally:
            os.chdir(cwd)
        return s
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))     # /dev/zero
        except PermissionError:
            pytest.skip("creating a device node needs root")
    elif kind == "symlink_to_device":
        os.symlink("/dev/zero", path)
    return None


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "symlink_to_device"])
def test_index_that_is_not_a_file(store_copy, rng, kind):
    keep = _make_special(store_copy / "index.msgpack", kind)
    bundle = _load(store_copy)
    assert _refused(bundle.store_problem)
    _served(bundle, rng)
    assert bundle.stats()["calls"]["fallback"] == 1
    del keep


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "symlink_to_device"])
def test_blob_that_is_not_a_file(store_copy, rng, kind):
    key, blob = _a_blob(store_copy)
    keep = _make_special(blob, kind)
    bundle = _load(store_copy)
    _served(bundle, rng)
    reasons = [r["reason"] for r in bundle.stats()["rejected"] if r["entry"] == key]
    assert reasons and _refused(reasons[0])
    del keep


def _swap_payloads(store_dir, into, source, kinds=("exported",)):
    """Points entry `into`'s payloads of `kinds` at entry `source`'s (valid blobs of another
    bucket), the index checksum kept valid: a record that misstates its bytes, and one its
    signature no longer covers."""
    from ejaot.store.format import encode_index
    index = FileStore(store_dir).read_index()
    for kind in kinds:
        index["entries"][into]["payloads"][kind] = dict(index["entries"][source]["payloads"][kind])
    (store_dir / "index.msgpack").write_bytes(encode_index(index["target"], index["entries"]))


def test_an_executable_the_runtime_refuses_is_served_by_the_fallback(store_copy, rng):
    """A record whose payloads are another bucket's (valid, hash-matching) blobs: its
    compiled tier's checks are against the record itself, so only running it tells. The
    refused executable blocks the tier, is reported, and the call returns the right answer."""
    index = FileStore(store_copy).read_index()
    by = {(r["dtype"], r["dims"]["batch"], r["dims"]["seq"]): k for k, r in index["entries"].items()}
    small, big = by[("float32", 1, 16)], by[("float32", 1, 32)]
    _swap_payloads(store_copy, small, big, kinds=("exported", "executable"))
    bundle = _load(store_copy, miss_log=False)
    for _ in range(3):
        _served(bundle, rng)
    reasons = [r["reason"] for r in bundle.stats()["rejected"] if r["entry"] == small]
    assert reasons and "failed to run" in reasons[0], bundle.stats()["rejected"]
    # the refused call was counted where it was tried; the two after it as the fallback's
    st = bundle.stats()
    assert st["calls"] == {"exact": 1, "padded": 0, "fallback": 2}, st["calls"]
    assert st["tiers"]["compiled"] == 1 and st["tiers"]["jit"] == 2, st["tiers"]
    # another shape padded into the same entry: the refused executable is not run again
    q, k, v = qkv(rng, 1, 12)
    out = bundle.call("attention", q, k, v, causal=True)
    np.testing.assert_allclose(out, attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    assert len([r for r in bundle.stats()["rejected"] if r["entry"] == small and r["tier"] == "compiled"]) == 1
    last = list(bundle._plans.values())[-1]
    assert not (last.entry is not None and last.entry.key == small and last.tier == "compiled"), last.path


def test_oversized_index_and_blob_are_refused_before_reading(store_copy, rng, monkeypatch):
    from ejaot.store import filestore
    key, blob = _a_blob(store_copy)
    with open(blob, "r+b") as f:          # sparse: 4 GiB + 1 on disk costs nothing
        f.truncate(filestore.MAX_BLOB_BYTES + 1)
    reads = []
    real_read = filestore.os.fdopen

    def spy(fd, *a, **k):
        f = real_read(fd, *a, **k)
        reads.append(os.fstat(fd).st_size)
        return f
    monkeypatch.setattr(filestore.os, "fdopen", spy)
    bundle = _load(store_copy)
    _served(bundle, rng)
    reasons = [r["reason"] for r in bundle.stats()["rejected"] if r["entry"] == key]
    assert reasons and "more than" in reasons[0]
    with open(store_copy / "index.msgpack", "r+b") as f:
        f.truncate(filestore.MAX_INDEX_BYTES + 1)
    bundle = _load(store_copy)
    assert "more than" in bundle.store_problem
    _served(bundle, rng)


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_miss_log_that_is_not_a_file_never_blocks(store_copy, rng, kind):
    keep = _make_special(store_copy / "misses.jsonl", kind)
    bundle = _load(store_copy)
    q, k, v = qkv(rng, 1, 40)                     # a miss: the log is written
    done = threading.Event()
    threading.Thread(target=lambda: (bundle.call("attention", q, k, v, causal=True), done.set()), daemon=True).start()
    assert done.wait(60), "the miss log blocked the call"
    assert "miss log" in bundle.stats()["miss_log_error"]
    del keep


def test_miss_log_symlink_is_not_followed(store_copy, tmp_path, rng):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (store_copy / "misses.jsonl").unlink(missing_ok=True)
    os.symlink(outside, store_copy / "misses.jsonl")
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 40)
    bundle.call("attention", q, k, v, causal=True)
    assert outside.read_text() == "precious\n"
    assert bundle.stats()["miss_log_error"]


def test_miss_log_short_write_leaves_whole_lines(store_copy, rng, monkeypatch):
    from ejaot.runtime import misslog
    bundle = ejaot.load(store_copy)
    bundle.call("attention", *qkv(rng, 1, 40), causal=True)           # one whole line
    real_write = os.write

    def short(fd, data):                 # the disk fills in the middle of the next line
        return real_write(fd, data[: len(data) // 2])
    monkeypatch.setattr(misslog.os, "write", short)
    bundle.call("attention", *qkv(rng, 1, 44), causal=True)
    monkeypatch.setattr(misslog.os, "write", real_write)
    bundle.call("attention", *qkv(rng, 1, 48), causal=True)           # the log has stopped
    text = (store_copy / "misses.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 1
    records, bad = misslog.read_misses(store_copy / "misses.jsonl")
    assert bad == 0 and len(records) == 1
    assert "short write" in bundle.stats()["miss_log_error"]


def test_a_reused_blob_is_refreshed_so_gc_spares_it(tmp_path):
    store = FileStore(tmp_path / "s")
    ref = store.put_blob(b"payload")
    path = store.blob_path(ref["sha256"])
    old = time.time() - 7200
    os.utime(path, (old, old))
    store.commit("cpu", {})                                        # an index with no entry
    assert store.put_blob(b"payload") == ref                        # reused by a build...
    assert os.lstat(path).st_mtime > old + 3600                     # ...and fresh again
    assert store.collect_garbage(grace_seconds=3600)["removed"] == 0
    assert path.exists()


def test_commit_refuses_a_record_whose_blob_is_gone(tmp_path):
    store = FileStore(tmp_path / "s")
    ref = store.put_blob(b"payload")
    store.blob_path(ref["sha256"]).unlink()                         # gc deleted it meanwhile
    with pytest.raises(StoreError, match="blob is gone"):
        store.commit("cpu", {"k" * 64: {"kernel": "attention", "payloads": {"exported": ref}}})


def _old_file(path, text="precious"):
    path.write_text(text)
    old = time.time() - 7200
    os.utime(path, (old, old))
    return path


def test_gc_deletes_nothing_through_symlinks(store_copy, tmp_path):
    """tmp/ or a blobs/ab/ directory replaced by a symlink to a folder outside the store:
    gc neither follows it nor deletes what it points to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = _old_file(outside / "important.txt")
    blob_like = _old_file(outside / ("ab" + "c" * 62))
    shutil.rmtree(store_copy / "tmp", ignore_errors=True)
    (store_copy / "tmp").symlink_to(outside)
    (store_copy / "blobs" / "ab").symlink_to(outside)
    r = FileStore(store_copy).collect_garbage(grace_seconds=0)
    assert r["removed"] == 0 and victim.exists() and blob_like.exists()


def test_writes_refuse_a_store_directory_or_lock_that_is_a_link(store_copy, tmp_path):
    """A build's temp files and blobs never land outside the store through a tmp/ or
    blobs/ab/ symlink, and a .lock symlink is not followed (nor its target created)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FileStore(store_copy)
    shutil.rmtree(store_copy / "tmp", ignore_errors=True)
    (store_copy / "tmp").symlink_to(outside)
    with pytest.raises(StoreError, match="symlink"):
        store.put_blob(b"fresh payload")
    (store_copy / "tmp").unlink()
    sha = __import__("hashlib").sha256(b"fresh payload").hexdigest()
    shutil.rmtree(store_copy / "blobs" / sha[:2], ignore_errors=True)
    (store_copy / "blobs" / sha[:2]).symlink_to(outside)
    with pytest.raises(StoreError, match="symlink"):
        store.put_blob(b"fresh payload")
    assert list(outside.iterdir()) == []
    (store_copy / ".lock").unlink(missing_ok=True)
    (store_copy / ".lock").symlink_to(outside / "lock")
    with pytest.raises(StoreError, match="lock file"):
        store.commit("cpu", {})
    assert not (outside / "lock").exists()


def test_gc_refuses_while_a_record_cannot_name_its_blobs(store_copy):
    """A record whose payloads are not blob references: gc cannot tell which blobs are live,
    so it deletes nothing and says which entry (no traceback)."""
    from ejaot.cli import main
    from ejaot.store.format import decode_index, encode_index
    index = decode_index((store_copy / "index.msgpack").read_bytes())
    key = next(iter(index["entries"]))
    index["entries"][key]["payloads"] = "not a table"
    (store_copy / "index.msgpack").write_bytes(encode_index(index["target"], index["entries"]))
    before = sorted(p.name for p in (store_copy / "blobs").rglob("*"))
    result = CliRunner().invoke(main, ["gc", str(store_copy), "--grace", "0"])
    assert result.exit_code != 0 and "malformed record" in result.output and key[:12] in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (store_copy / "blobs").rglob("*")) == before


def test_a_store_of_one_target_refuses_another(store_copy, small_manifest):
    """Building or committing another target into a store is refused with a clear error;
    its entries stay (they were dropped)."""
    from ejaot.cli import main
    before = FileStore(store_copy).read_index()["entries"]
    with pytest.raises(StoreError, match="holds entries for target 'cpu', not 'tpu-v5e'"):
        FileStore(store_copy).commit("tpu-v5e", {})
    result = CliRunner().invoke(main, ["build", "--manifest", str(small_manifest), "--target", "tpu-v5e",
                                       "--out", str(store_copy), "--quiet"])
    assert result.exit_code == 2 and "a store holds one target" in result.output, result.output
    assert "Traceback" not in result.output
    index = FileStore(store_copy).read_index()
    assert index["target"] == "cpu" and index["entries"] == before


def test_a_damaged_kernel_section_costs_only_itself_on_commit(store_copy):
    """One kernel's section that does not decode is dropped when the index is written
    again; every other kernel's records are kept."""
    import hashlib
    import msgpack
    from ejaot.store import format as fmt
    store = FileStore(store_copy)
    index = store.read_index()
    sections = store.read_index_sections()["sections"]
    # the same index with one more, damaged, section
    body = msgpack.packb({"target": "cpu", "sections": {**sections, "page_attention": b"\xc1"}}, use_bin_type=True)
    header = {"format": fmt.FORMAT_VERSION, "body_sha256": hashlib.sha256(body).digest(), "body": body}
    (store_copy / "index.msgpack").write_bytes(fmt.MAGIC + msgpack.packb(header, use_bin_type=True))
    kept, note = store.kept_entries("cpu")
    assert kept == index["entries"] and "page_attention" in note
    store.commit("cpu", {})
    assert store.read_index()["entries"] == index["entries"]


def test_gc_on_a_read_only_store_says_so(store_copy, monkeypatch):
    from ejaot.cli import main
    from ejaot.store import filestore

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self.root / ".lock"))
    monkeypatch.setattr(filestore.FileStore, "locked", denied)
    result = CliRunner().invoke(main, ["gc", str(store_copy)])
    assert result.exit_code != 0
    assert "read-only" in result.output and "Traceback" not in result.output


def test_finalize_keeps_a_signed_store_usable(tmp_path, small_manifest, rng):
    from ejaot.build.builder import build
    from ejaot.cli import main
    from ejaot.artifact.signing import Signer, generate_keypair
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    store = tmp_path / "signed"
    assert build(small_manifest, "cpu", store, jobs=1, signer=Signer.from_file(tmp_path / "k.pem")).ok
    before = (store / "index.msgpack").read_bytes()
    # without --sign: refused, nothing changed, non-zero exit
    result = CliRunner().invoke(main, ["finalize", str(store), "--force"])
    assert result.exit_code == 1 and "REFUSED" in result.output and "--sign" in result.output
    assert (store / "index.msgpack").read_bytes() == before
    # with --sign: every finalized record signed again, all accepted under trusted_keys
    result = CliRunner().invoke(main, ["finalize", str(store), "--force", "--sign", str(tmp_path / "k.pem")])
    assert result.exit_code == 0, result.output
    bundle = ejaot.load(store, trusted_keys=str(tmp_path / "k.pub"))     # a single path
    assert bundle.stats()["rejected"] == [] and bundle.stats()["entries"] == 8
    q, k, v = qkv(rng, 1, 16)
    np.testing.assert_allclose(bundle.call("attention", q, k, v, causal=True),
                               attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    assert bundle.stats()["tiers"]["compiled"] == 1




def test_signing_never_launders_or_skips_a_record(tmp_path, small_manifest):
    """finalize --sign re-signs only records its key signed as they are (a tampered one is
    refused, and stays rejected under trusted_keys); build --sign over an unsigned store
    builds and signs every entry again instead of reusing unsigned records."""
    from ejaot.build.builder import build
    from ejaot.cli import main
    from ejaot.artifact.signing import Signer, generate_keypair
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    signer = Signer.from_file(tmp_path / "k.pem")
    store = tmp_path / "signed"
    assert build(small_manifest, "cpu", store, jobs=1, signer=signer).ok
    keys = sorted(FileStore(store).read_index()["entries"])
    _swap_payloads(store, keys[0], keys[1])
    result = CliRunner().invoke(main, ["finalize", str(store), "--force", "--sign", str(tmp_path / "k.pem")])
    assert result.exit_code == 1 and f"REFUSED {keys[0][:12]}" in result.output and "tampered" in result.output
    rejected = ejaot.load(store, trusted_keys=str(tmp_path / "k.pub")).stats()["rejected"]
    assert [r["entry"] for r in rejected] == [keys[0]]

    plain = tmp_path / "plain"
    assert build(small_manifest, "cpu", plain, jobs=1).ok
    report = build(small_manifest, "cpu", plain, jobs=1, signer=signer)
    assert report.ok and len(report.built) == 8 and not report.reused
    bundle = ejaot.load(plain, trusted_keys=str(tmp_path / "k.pub"))
    assert bundle.stats()["rejected"] == [] and bundle.stats()["entries"] == 8


def test_verify_fails_a_tier_the_runtime_rejects(store_copy):
    """A record whose portable payload is another bucket's valid blob: sha256 passes, the
    runtime rejects the tier at load; verify says so and fails the entry."""
    from ejaot.cli import main
    keys = sorted(FileStore(store_copy).read_index()["entries"])
    _swap_payloads(store_copy, keys[0], keys[1])
    for extra in ([], ["--no-numerics"]):
        result = CliRunner().invoke(main, ["verify", str(store_copy), *extra])
        assert result.exit_code == 1, (extra, result.output)
        line = next(x for x in result.output.splitlines() if keys[0][:12] in x)
        assert line.startswith("FAIL") and "rejected" in line, (extra, line)


def test_a_rebuild_repairs_a_damaged_blob(store_copy, small_manifest):
    """A blob damaged in place (same size): a build after the index is gone writes it
    anew instead of trusting the file that has its name."""
    from ejaot.build.builder import build
    from ejaot.cli import main
    store = FileStore(store_copy)
    rec = next(iter(store.read_index()["entries"].values()))
    blob = store.blob_path(rec["payloads"]["exported"]["sha256"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    (store_copy / "index.msgpack").unlink()
    assert build(small_manifest, "cpu", store_copy, jobs=1).ok
    result = CliRunner().invoke(main, ["verify", str(store_copy)])
    assert result.exit_code == 0, result.output


def test_a_lock_file_the_user_may_not_open_says_read_only(store_copy, monkeypatch):
    """EACCES/EROFS on the lock file is a permission problem (gc says run it as the
    store's owner), not a lock file of the wrong kind."""
    from ejaot.cli import main
    from ejaot.store import filestore
    real_open = os.open

    def denied(path, *a, **kw):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)
    monkeypatch.setattr(filestore.os, "open", denied)
    result = CliRunner().invoke(main, ["gc", str(store_copy)])
    assert result.exit_code == 2 and "read-only" in result.output and "Traceback" not in result.output


def test_misses_clear_with_a_dangling_tmp_link(store_copy, tmp_path):
    from ejaot.cli import main
    (store_copy / "misses.jsonl").write_text('{"kernel": "attention", "dims": {}, "count": 1}\n')
    shutil.rmtree(store_copy / "tmp", ignore_errors=True)
    (store_copy / "tmp").symlink_to(tmp_path / "nowhere")
    result = CliRunner().invoke(main, ["misses", str(store_copy), "--clear"])
    assert result.exit_code == 1 and "not the store's own directory" in result.output, result.output
    assert (store_copy / "misses.jsonl").exists() and not (tmp_path / "nowhere").exists()


def test_trusted_keys_errors_are_clear(store_copy, tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        ejaot.load(store_copy, trusted_keys=str(tmp_path / "missing.pub"))
    with pytest.raises(ValueError, match="empty"):
        ejaot.load(store_copy, trusted_keys=[])
    with pytest.raises(ValueError, match="a key or a list of keys"):
        ejaot.load(store_copy, trusted_keys=42)

"""A damaged store is detected, reported with its cause, and still serves right answers."""
import msgpack
import numpy as np
import pytest

import ejaot
from ejaot.store.filestore import FileStore
from ejaot.store.format import MAGIC, decode_index, encode_index
from ejaot.errors import BucketMissError, StoreError
from conftest import qkv
from reference import attention_reference


def _entry(store, seq=32, batch=2, dtype="float32"):
    index = FileStore(store).read_index()
    for key, r in index["entries"].items():
        if r["dims"]["seq"] == seq and r["dims"]["batch"] == batch and r["dtype"] == dtype:
            return key, r
    raise LookupError


def _call_and_check(bundle, rng, b=2, s=32):
    q, k, v = qkv(rng, b, s)
    out = bundle.call("attention", q, k, v, causal=True)
    np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)


def test_flipped_byte_in_executable_falls_back_to_portable(store_copy, rng):
    key, r = _entry(store_copy)
    path = FileStore(store_copy).blob_path(r["payloads"]["executable"]["sha256"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)
    s = bundle.stats()
    assert s["tiers"] == {"compiled": 0, "portable": 1, "jit": 0}
    [rej] = s["rejected"]
    assert rej["entry"] == key and rej["tier"] == "compiled" and "sha256" in rej["reason"]


def test_both_tiers_corrupt_uses_a_larger_bucket_or_fallback(store_copy, rng):
    key, r = _entry(store_copy, seq=32, batch=2)
    store = FileStore(store_copy)
    for kind in ("executable", "exported"):
        store.blob_path(r["payloads"][kind]["sha256"]).write_bytes(b"garbage")
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)
    s = bundle.stats()
    assert s["calls"]["fallback"] == 1      # batch=2 seq=32 is the largest bucket
    assert {x["tier"] for x in s["rejected"]} == {"compiled", "portable"}


def test_missing_blob(store_copy, rng):
    key, r = _entry(store_copy, seq=16, batch=1)
    FileStore(store_copy).blob_path(r["payloads"]["executable"]["sha256"]).unlink()
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng, b=1, s=16)
    assert "missing" in bundle.stats()["rejected"][0]["reason"]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "wrong_format", "garbage", "missing"])
def test_bad_index_is_reported_and_everything_falls_back(store_copy, rng, damage):
    path = FileStore(store_copy).index_path
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        b = bytearray(data)
        b[-100] ^= 1
        path.write_bytes(bytes(b))
    elif damage == "wrong_format":
        header = msgpack.unpackb(data[len(MAGIC):])
        header["format"] = 99
        path.write_bytes(MAGIC + msgpack.packb(header))
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        path.unlink()
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)
    s = bundle.stats()
    assert s["calls"]["fallback"] == 1 and s["entries"] == 0
    expected = {"truncated": "checksum|msgpack", "flipped": "checksum|msgpack", "wrong_format": "format version 99",
                "garbage": "bad magic", "missing": "no store index"}[damage]
    import re
    assert re.search(expected, s["store_problem"]), s["store_problem"]
    strict = ejaot.load(store_copy, strict=True)
    with pytest.raises(BucketMissError, match="the store cannot serve here"):
        strict.call("attention", *qkv(rng, 2, 32), causal=True)


def test_index_record_pointing_outside_the_store_is_refused(store_copy, rng):
    store = FileStore(store_copy)
    index = store.read_index()
    key, _ = _entry(store_copy)
    index["entries"][key]["payloads"]["executable"]["sha256"] = "../../../../etc/passwd"
    store.index_path.write_bytes(encode_index(index["target"], index["entries"]))
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)
    assert any("payloads.executable.sha256' is not a sha256" in x["reason"] for x in bundle.stats()["rejected"])


def test_symlinked_blob_is_refused(store_copy, rng, tmp_path):
    key, r = _entry(store_copy)
    path = FileStore(store_copy).blob_path(r["payloads"]["executable"]["sha256"])
    outside = tmp_path / "outside"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)
    [rej] = bundle.stats()["rejected"]
    assert "outside the store" in rej["reason"] or "symlink" in rej["reason"]


def test_decode_index_rejects_tampered_body():
    data = bytearray(encode_index("cpu", {"k": {"a": 1}}))
    assert decode_index(bytes(data))["entries"] == {"k": {"a": 1}}
    data[-2] ^= 0xFF
    with pytest.raises(StoreError):
        decode_index(bytes(data))


def _write_sections(store: FileStore, target: str, sections: dict) -> None:
    """An index with a valid checksum over arbitrary per-kernel sections."""
    import hashlib
    from ejaot.store.format import FORMAT_VERSION
    body = msgpack.packb({"target": target, "sections": sections}, use_bin_type=True)
    header = {"format": FORMAT_VERSION, "body_sha256": hashlib.sha256(body).digest(), "body": body}
    store.index_path.write_bytes(MAGIC + msgpack.packb(header, use_bin_type=True))


def test_a_kernel_section_is_decoded_on_that_kernels_first_call(store_copy, rng):
    """A bad section costs only its own kernel: attention serves from the compiled tier
    while the broken page_attention section stays undecoded until the report asks."""
    store = FileStore(store_copy)
    index = store.read_index()
    good = msgpack.packb(index["entries"], use_bin_type=True)
    _write_sections(store, index["target"], {"attention": good, "page_attention": b"\xc1 not msgpack"})
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)
    assert "page_attention" in bundle.catalog.pending          # never decoded: nobody called it
    s = bundle.stats()
    assert s["tiers"]["compiled"] == 1
    [rej] = s["rejected"]
    assert rej["tier"] == "store" and rej["kernel"] == "page_attention" and "msgpack" in rej["reason"]


def test_a_record_filed_under_another_kernel_is_rejected(store_copy, rng):
    store = FileStore(store_copy)
    index = store.read_index()
    key, record = _entry(store_copy)
    rest = {k: r for k, r in index["entries"].items() if k != key}
    _write_sections(store, index["target"], {"attention": msgpack.packb(rest, use_bin_type=True),
                                             "page_attention": msgpack.packb({key: record}, use_bin_type=True)})
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)           # its bucket (batch 2, seq 32) is gone: fallback
    s = bundle.stats()
    assert s["calls"]["fallback"] == 1
    assert any(r["entry"] == key and "filed under 'page_attention'" in r["reason"] for r in s["rejected"])


def test_a_previous_format_index_is_reported_not_read(store_copy, rng):
    import hashlib
    store = FileStore(store_copy)
    index = store.read_index()
    body = msgpack.packb({"target": index["target"], "entries": index["entries"]}, use_bin_type=True)
    header = {"format": 1, "body_sha256": hashlib.sha256(body).digest(), "body": body}
    store.index_path.write_bytes(MAGIC + msgpack.packb(header, use_bin_type=True))
    bundle = ejaot.load(store_copy)
    _call_and_check(bundle, rng)
    assert "format version 1" in bundle.stats()["store_problem"] and "rebuild" in bundle.stats()["store_problem"]

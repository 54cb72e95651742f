"""The on-disk index format, versioned and self-checking.

    index.msgpack = MAGIC + msgpack({"format": N, "body_sha256": bytes[32], "body": bytes})
    body          = msgpack({"target": str, "sections": {kernel: bytes}})
    section       = msgpack({key: record})          one per kernel

The header is decoded with tight limits before anything else; the body only after its
sha256 matches. Records sit in one section per kernel so that a server decodes only the
sections of the kernels it calls (decoding every record of a large store costs
milliseconds at start-up). msgpack decodes data, never code: nothing here can run Python.
"""
from __future__ import annotations

import hashlib

import msgpack

from ..errors import StoreError

MAGIC = b"EJAOT-STORE\n"
FORMAT_VERSION = 2       # the index layout (2: per-kernel sections)
_MAX_INDEX_BYTES = 256 << 20


def _unpack(data: bytes, what: str):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=_MAX_INDEX_BYTES, max_str_len=1 << 20)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise StoreError(f"{what} is not valid msgpack ({type(e).__name__}: {e})") from None


def encode_index(target: str, entries: dict) -> bytes:
    grouped: dict[str, dict] = {}
    for key, record in entries.items():
        grouped.setdefault(str(record.get("kernel")), {})[key] = record
    sections = {k: msgpack.packb(v, use_bin_type=True) for k, v in grouped.items()}
    body = msgpack.packb({"target": target, "sections": sections}, use_bin_type=True)
    header = {"format": FORMAT_VERSION, "body_sha256": hashlib.sha256(body).digest(), "body": body}
    return MAGIC + msgpack.packb(header, use_bin_type=True)


def decode_index_sections(data: bytes, where: str = "index") -> dict:
    """Returns {"target", "sections": {kernel: bytes}} once the checksum holds; raises
    StoreError naming what is wrong. Decode a section with decode_section()."""
    if not data.startswith(MAGIC):
        raise StoreError(f"{where}: not an ejaot store index (bad magic)")
    header = _unpack(data[len(MAGIC):], f"{where} header")
    if not isinstance(header, dict) or not {"format", "body_sha256", "body"} <= set(header):
        raise StoreError(f"{where}: header is missing fields")
    if header["format"] != FORMAT_VERSION:
        raise StoreError(f"{where}: store format version {header['format']!r}; "
                         f"this ejaot reads version {FORMAT_VERSION} (rebuild the store)")
    body = header["body"]
    if not isinstance(body, bytes) or hashlib.sha256(body).digest() != header["body_sha256"]:
        raise StoreError(f"{where}: checksum mismatch (the index is corrupted or truncated)")
    index = _unpack(body, f"{where} body")
    sections = index.get("sections") if isinstance(index, dict) else None
    if not isinstance(sections, dict) or not all(isinstance(v, bytes) for v in sections.values()):
        raise StoreError(f"{where}: body has no sections table")
    return index


class Undecodable:
    """A record whose bytes are not msgpack data a record can hold (a map keyed by an array,
    say): it stands in the section so that the record is rejected alone."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self):
        return f"<undecodable record: {self.reason}>"


def decode_section(raw: bytes, kernel: str, where: str = "index") -> dict:
    """{key: record} of one kernel's section; StoreError if it is not a table. Each record
    is decoded on its own, so a record that cannot be decoded (or a key that is not a
    string) costs only itself: it is returned as an Undecodable (or under a non-string
    key) for the record checks to reject."""
    what = f"{where} section {kernel!r}"
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True,
                                max_bin_len=_MAX_INDEX_BYTES, max_str_len=1 << 20)
    unpacker.feed(raw)
    records: dict = {}
    try:
        count = unpacker.read_map_header()
        for i in range(count):
            key = unpacker.unpack()
            start = unpacker.tell()
            unpacker.skip()
            value = raw[start:unpacker.tell()]
            try:
                records[key if isinstance(key, str) else ("not a string", i, repr(key)[:40])] = _unpack_record(value)
            except TypeError:                              # an unhashable key
                records[("not a string", i, repr(key)[:40])] = _unpack_record(value)
    except msgpack.OutOfData:
        raise StoreError(f"{what} is truncated") from None
    except Exception as e:  # not a map, or malformed framing: msgpack raises several types
        raise StoreError(f"{what} is not a table ({type(e).__name__}: {e})") from None
    return records


def _unpack_record(data: bytes):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True,
                               max_bin_len=_MAX_INDEX_BYTES, max_str_len=1 << 20)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        return Undecodable(f"{type(e).__name__}: {e}")


def decode_index(data: bytes, where: str = "index") -> dict:
    """Returns {"target", "entries"} with every section decoded (tools and writers)."""
    index = decode_index_sections(data, where)
    entries: dict = {}
    for kernel, raw in index["sections"].items():
        entries.update(decode_section(raw, kernel, where))
    return {"target": index.get("target"), "entries": entries}

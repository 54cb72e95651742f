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
RECORD_FORMAT = 1        # the record schema, stored in every record
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


def decode_section(raw: bytes, kernel: str, where: str = "index") -> dict:
    """{key: record} of one kernel's section; StoreError if it is not a table."""
    records = _unpack(raw, f"{where} section {kernel!r}")
    if not isinstance(records, dict):
        raise StoreError(f"{where}: section {kernel!r} is not a table")
    return records


def decode_index(data: bytes, where: str = "index") -> dict:
    """Returns {"target", "entries"} with every section decoded (tools and writers)."""
    index = decode_index_sections(data, where)
    entries: dict = {}
    for kernel, raw in index["sections"].items():
        entries.update(decode_section(raw, kernel, where))
    return {"target": index.get("target"), "entries": entries}

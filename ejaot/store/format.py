"""The on-disk index format, versioned and self-checking.

    index.msgpack = MAGIC + msgpack({"format": N, "body_sha256": bytes[32], "body": bytes})
    body          = msgpack({"target": str, "entries": {key: record}})

The header is decoded with tight limits before anything else; the body only after its
sha256 matches. msgpack decodes data, never code: nothing here can run Python.
"""
from __future__ import annotations

import hashlib

import msgpack

from ..errors import StoreError

MAGIC = b"EJAOT-STORE\n"
FORMAT_VERSION = 1
_MAX_INDEX_BYTES = 256 << 20


def _unpack(data: bytes, what: str):
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=_MAX_INDEX_BYTES, max_str_len=1 << 20)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise StoreError(f"{what} is not valid msgpack ({type(e).__name__}: {e})") from None


def encode_index(target: str, entries: dict) -> bytes:
    body = msgpack.packb({"target": target, "entries": entries}, use_bin_type=True)
    header = {"format": FORMAT_VERSION, "body_sha256": hashlib.sha256(body).digest(), "body": body}
    return MAGIC + msgpack.packb(header, use_bin_type=True)


def decode_index(data: bytes, where: str = "index") -> dict:
    """Returns {"target", "entries"}; raises StoreError naming what is wrong."""
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
    if not isinstance(index, dict) or not isinstance(index.get("entries"), dict):
        raise StoreError(f"{where}: body has no entries table")
    return index

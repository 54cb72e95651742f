"""The one byte encoding of a record or an entry's identity: an entry's key is the sha256
of its identity in this form, and a signature covers a record in this form."""
from __future__ import annotations

from typing import Any

import msgpack


def canonical_bytes(obj: Any) -> bytes:
    """Deterministic msgpack: maps sorted by key, tuples as lists."""
    def norm(o):
        if isinstance(o, dict):
            return {str(k): norm(o[k]) for k in sorted(o)}
        if isinstance(o, (list, tuple)):
            return [norm(x) for x in o]
        return o
    return msgpack.packb(norm(obj), use_bin_type=True)

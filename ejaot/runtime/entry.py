"""One stored entry at serving time: its record, and its two tiers materialized on first
use (or at load, with eager=True). Each tier's bytes are verified against the index
before anything is deserialized; a tier that fails is rejected once, with its reason."""
from __future__ import annotations

import threading

from ..errors import StoreError
from ..store.filestore import FileStore
from ..artifact import codec, compat

_UNSET = object()


class StoredEntry:
    def __init__(self, key: str, record: dict, store: FileStore, device, reject):
        self.key, self.record, self.store, self.device = key, record, store, device
        self._reject = reject                   # reject(entry, tier, reason)
        self._lock = threading.Lock()
        self._compiled = _UNSET
        self._portable = _UNSET
        self.compiled_block = None              # reason the compiled tier is not used
        self.portable_block = None

    @property
    def kernel(self) -> str:
        return self.record["kernel"]

    def describe(self) -> str:
        dims = " ".join(f"{k}={v}" for k, v in self.record["dims"].items())
        return f"{self.kernel} {self.record['dtype']} {dims} [{self.key[:12]}]"

    def compiled(self):
        """The deserialized executable, or None (also once the runtime has refused it)."""
        if self._compiled is _UNSET:
            with self._lock:
                if self._compiled is _UNSET:
                    self._compiled = self._load_compiled()
        return None if self.compiled_block else self._compiled

    def portable(self):
        """jax.jit(exported.call), or None. Compiles on first call; also works under tracing."""
        if self._portable is _UNSET:
            with self._lock:
                if self._portable is _UNSET:
                    self._portable = self._load_portable()
        return self._portable

    def _payload(self, kind: str) -> bytes:
        ref = self.record["payloads"][kind]
        if not isinstance(ref, dict):
            raise StoreError(f"payload {kind!r} reference is malformed")
        return self.store.read_blob(ref.get("sha256"), ref.get("size"))

    def _load_compiled(self):
        if self.compiled_block:
            return None
        return self._decode_compiled(self.device)

    def _decode_compiled(self, placement):
        """The compiled tier on `placement` (a device, or a mesh for a mesh entry), or None
        with the reason reported."""
        try:
            raw = self._payload("executable")          # sha256-checked before anything reads it
            exe = codec.decode(raw, self.record["executable"], placement)
        except (StoreError, codec.Unsupported) as e:
            self._fail("compiled", str(e))
            return None
        except Exception as e:  # the runtime rejected the bytes: report, never crash
            self._fail("compiled", f"deserialization failed: {type(e).__name__}: {e}")
            return None
        expected = [[list(s), d] for _, s, d in self.record["inputs"]]
        if self.record["executable"].get("in_avals", [])[:len(expected)] != expected:
            self._fail("compiled", "executable signature does not match the record")
            return None
        return exe

    def _load_portable(self):
        if self.portable_block:
            return None
        import jax
        try:
            raw = self._payload("exported")
            exported = jax.export.deserialize(bytearray(raw))
        except StoreError as e:
            self._fail("portable", str(e))
            return None
        except Exception as e:
            self._fail("portable", f"deserialization failed: {type(e).__name__}: {e}")
            return None
        got = [[list(a.shape), str(a.dtype)] for a in exported.in_avals]
        expected = [[list(s), d] for _, s, d in self.record["inputs"]]
        if got[:len(expected)] != expected:
            self._fail("portable", f"exported signature {got} does not match the record")
            return None
        if compat.local_platform(self.device) not in exported.platforms:
            self._fail("portable", f"exported for {exported.platforms}")
            return None
        return jax.jit(exported.call)

    def _fail(self, tier: str, reason: str):
        if tier == "compiled":
            self.compiled_block = reason
        else:
            self.portable_block = reason
        self._reject(self, tier, reason)

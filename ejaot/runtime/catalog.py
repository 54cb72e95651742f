"""The store as this host accepts it: each kernel's records checked on the kernel's first
use, the accepted entries filed in bucket groups (entries that differ only in their paddable
dimensions), and every rejection kept once, with its reason.

A store that cannot serve here at all (missing, not a store, of another format, empty, or
built for another platform) is said once, at load: `store_problem` holds the reason. On a
GPU the store's target does not run on, each entry whose program launches GPU kernels has
its portable tier refused, with the reason.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field

from ..artifact import compat
from ..artifact.binding import freeze
from ..errors import StoreError
from ..spec import KernelSpec
from ..spec.registry import find_kernel
from ..store.filestore import FileStore
from ..store.format import decode_section
from .entry import StoredEntry

log = logging.getLogger("ejaot")


def bucket_key(spec: KernelSpec, dtype: str, present: tuple, static: dict, dims: dict):
    """(group key, paddable dims) of a stored record or a call: one function for both,
    so that a call finds exactly the records built for it. Entries in one group differ
    only in their paddable dimensions."""
    fixed = tuple((d, dims.get(d)) for d in spec.dims if d not in spec.paddable)
    paddable = tuple(int(dims.get(d, 0)) for d in spec.dims if d in spec.paddable)
    statics = tuple(freeze(static[n]) for n in spec.static_names)
    return (spec.name, dtype, present, statics, fixed), paddable


@dataclass
class Group:
    """Entries that differ only in their paddable dimensions, smallest first."""
    paddable: tuple[str, ...]
    members: list[tuple[tuple[int, ...], StoredEntry]] = field(default_factory=list)


class Catalog:
    def __init__(self, root: str, store: FileStore, device, platform: str, verifier, meshes,
                 require: bool):
        self.root, self.store, self.device, self.platform = root, store, device, platform
        self._verifier = verifier
        self._meshes = meshes                       # files mesh entries under their layout
        self._require = require
        self.groups: dict[tuple, Group] = {}
        self.accepted: dict[str, StoredEntry] = {}  # key -> entry, for the kernels opened so far
        self.pending: dict[str, bytes] = {}         # kernel -> its index section, not yet decoded
        self.opened: set[str] = set()               # kernels whose records are all accepted
        self.open_lock = threading.RLock()
        self._lock = threading.Lock()
        self._rejected: list[dict] = []
        self._rejected_seen: set = set()
        self.store_problem: str | None = None
        self.device_unfit: str | None = None        # why this GPU cannot run the target's kernels
        self.target = None
        self._open()

    # -- opening ------------------------------------------------------------------------
    def _open(self):
        if not os.path.isdir(self.root):
            what = "is not a directory" if os.path.exists(self.root) else "does not exist"
            self._store_unusable(f"no store at {self.root}: the path {what}")
            return
        try:
            index = self.store.read_index_sections()
        except FileNotFoundError:
            self._store_unusable(f"no store index at {self.store.index_path}")
            return
        except StoreError as e:
            self._store_unusable(str(e))
            return
        self.target = index.get("target")
        if not index["sections"]:
            self._store_unusable(f"the store at {self.root} has no entries")
            return
        platform = _target_platform(self.target)
        if platform != self.platform:
            self._store_unusable(f"the store was built for target {self.target!r} (platform {platform}); "
                                 f"this host runs {self.platform}")
            return
        self.device_unfit = _device_problem(self.target, self.device)
        # A kernel's section is decoded and its records checked on the kernel's first call
        # (or when all entries are asked for): start-up pays only for the kernels a server
        # actually uses.
        self.pending.update(index["sections"])

    def stored_kernels(self) -> set[str]:
        with self.open_lock:
            return set(self.pending) | self.opened

    def all_entries(self) -> dict[str, StoredEntry]:
        """Every accepted entry (checking all kernels' records now if not yet done)."""
        with self.open_lock:          # also waits for a kernel another thread is accepting
            for kernel in list(self.pending):
                self.ensure_kernel(kernel)
        return self.accepted

    def ensure_kernel(self, kernel: str) -> None:
        """Returns once `kernel`'s records are all accepted (by this thread or another)."""
        if kernel in self.opened:
            return
        with self.open_lock:
            raw = self.pending.pop(kernel, None)
            if raw is not None:
                try:
                    records = decode_section(raw, kernel, str(self.store.index_path))
                except StoreError as e:
                    self.note_rejection(None, kernel, "store", str(e))
                else:
                    self.accept(kernel, records)
            self.opened.add(kernel)

    def find(self, kernel) -> KernelSpec | None:
        """The kernel's spec; an outside kernel's once its records (which name its module)
        are accepted."""
        spec = find_kernel(kernel) if isinstance(kernel, str) else None
        if spec is None and isinstance(kernel, str) and (kernel in self.pending or kernel in self.opened):
            self.ensure_kernel(kernel)
            spec = find_kernel(kernel)
        return spec

    def accept(self, kernel: str, records: dict) -> None:
        touched = set()
        for key, record in records.items():
            try:
                gkey = self._accept_one(kernel, key, record)
            except Exception as e:  # a record the checks missed: reject it alone, keep the others
                self._reject_record(key, record, "entry", f"record could not be accepted ({type(e).__name__}: {e})")
                continue
            if gkey is not None:
                touched.add(gkey)
        for gkey in touched:
            self.groups[gkey].members.sort(key=lambda m: (math.prod(m[0]), m[0]))

    def _accept_one(self, kernel: str, key, record):
        """Checks one record and files its entry under its bucket group; returns the group
        key, or None when the record is rejected (with its reason)."""
        problem = compat.record_problem(key, record)
        if not isinstance(key, str):
            self.note_rejection(repr(key)[:80], kernel, "entry", problem)
            return None
        if problem is None and record["kernel"] != kernel:
            problem = f"record of kernel {record['kernel']!r} filed under {kernel!r}"
        if problem is None and self._verifier is not None:
            problem = self._verifier.problem(record)
        if problem is None:
            problem = compat.entry_problem(record, self.platform)
        if problem is not None:
            self._reject_record(key, record, "entry", problem)
            return None
        entry = self._meshes.entry(key, record, self.store, self.device, self._on_tier_rejected)
        entry.portable_block = compat.portable_problem(record)
        if entry.portable_block is None and self.device_unfit and compat.holds_gpu_kernels(record):
            entry.portable_block = self.device_unfit
        entry.compiled_block = compat.compiled_problem(record, self.device)
        if entry.portable_block and entry.compiled_block:
            self._reject_record(key, record, "entry", f"{entry.compiled_block}; {entry.portable_block}")
            return None
        spec = find_kernel(record["kernel"], record.get("module"))
        gkey, pdims = bucket_key(spec, record["dtype"], tuple(record["present"]),
                                 spec.canonical_static(record["static"]), record["dims"])
        gkey = self._meshes.group_key(gkey, record)      # unchanged for a single-device entry
        for tier, why in (("compiled", entry.compiled_block), ("portable", entry.portable_block)):
            if why and not why.startswith("no "):
                self.note_rejection(key, record.get("kernel"), tier, why)
        self.accepted[key] = entry
        group = self.groups.get(gkey)
        if group is None:
            group = self.groups[gkey] = Group(tuple(d for d in spec.dims if d in spec.paddable))
        group.members.append((pdims, entry))
        return gkey

    # -- rejection bookkeeping --------------------------------------------------------------
    def rejections(self) -> list[dict]:
        with self._lock:
            return list(self._rejected)

    def rejections_of(self, kernel: str) -> list[dict]:
        with self._lock:
            return [r for r in self._rejected if r["kernel"] == kernel]

    def note_rejection(self, key, kernel, tier, reason):
        with self._lock:
            if (key, tier) in self._rejected_seen:
                return
            self._rejected_seen.add((key, tier))
            self._rejected.append({"entry": key, "kernel": kernel, "tier": tier, "reason": reason})
        if tier != "store":
            log.warning("ejaot store %s: %s %s of %s rejected: %s", self.root, tier,
                        str(key)[:12], kernel, reason)

    def _store_unusable(self, reason: str) -> None:
        """The whole store cannot serve here: said once, at load (or raised with require)."""
        self.store_problem = reason
        self.note_rejection(None, None, "store", reason)
        if self._require:
            raise StoreError(f"ejaot.load(require=True): {reason}")
        log.warning("ejaot store %s: %s; every call will run the JIT fallback", self.root, reason)

    def _reject_record(self, key, record, tier, reason):
        kernel = record.get("kernel") if isinstance(record, dict) else None
        self.note_rejection(key, kernel, tier, reason)

    def _on_tier_rejected(self, entry: StoredEntry, tier: str, reason: str):
        self.note_rejection(entry.key, entry.kernel, tier, reason)

    # -- coverage (what `ejaot misses` asks) ---------------------------------------------------
    def covers(self, kernel: str, dims: dict, dtype: str, present=(), static: dict | None = None,
               dtypes: dict | None = None) -> bool:
        """Whether a call of `kernel` with these dims, dtype, optional inputs present and
        static arguments (as a miss log line records them) would be served by a stored
        entry accepted here, exact or padded, rather than by the JIT fallback. The same
        bucket-group search as a call's; nothing is deserialized."""
        found = self._group_of(kernel, dims, dtype, present, static)
        if found is None:
            return False
        spec, group, want = found
        for a in spec.inputs:      # fixed-dtype inputs (int32 tables) must match, as for a call
            given = (dtypes or {}).get(a.name)
            if given is not None and not a.is_tree and given != spec.dtype_of(a, dtype):
                return False
        return any(all(w <= p for w, p in zip(want, pdims)) for pdims, _ in group.members)

    def bucket_grid(self, kernel: str, dims: dict, dtype: str, present=(),
                    static: dict | None = None) -> dict[str, list[int]]:
        """The stored values of each paddable dim among the entries that could serve such a
        call (its bucket group: same kernel, dtype, optional inputs, statics and fixed
        dims), ascending; {} when there are none."""
        found = self._group_of(kernel, dims, dtype, present, static)
        if found is None:
            return {}
        _, group, _ = found
        return {d: sorted({p[i] for p, _ in group.members}) for i, d in enumerate(group.paddable)}

    def _group_of(self, kernel, dims, dtype, present, static):
        """(spec, bucket group, the call's paddable dims) for a described call, or None."""
        spec = self.find(kernel)
        if spec is None:
            return None
        try:
            given = set(present)
            present = tuple(a.name for a in spec.inputs if a.optional and a.name in given)
            dims = spec.resolve_dims({k: int(v) for k, v in dims.items()})
            gkey, want = bucket_key(spec, dtype, present, spec.canonical_static(static or {}), dims)
            self.ensure_kernel(spec.name)
            group = self.groups.get(gkey)
        except (TypeError, ValueError, KeyError):     # a malformed description covers nothing
            return None
        return None if group is None else (spec, group, want)


def _device_problem(target, device) -> str | None:
    from ..targets import device_problem, get_target
    try:
        t = get_target(target)
    except (KeyError, TypeError):      # an unknown target: the platform check said so
        return None
    return device_problem(t, device)


def _target_platform(target) -> str | None:
    from ..targets import get_target
    try:
        return get_target(target).platform
    except (KeyError, TypeError):
        return None

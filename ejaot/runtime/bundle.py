"""ejaot.load(): the serving runtime.

    bundle = ejaot.load("artifacts/cpu")
    out = bundle.call("attention", q, k, v, causal=True)

Dispatch, per call: the exact bucket; else the cheapest stored bucket that covers the
call along the kernel's paddable dimensions (pad, run, slice: the kernel masks the
padding, so the result equals the unpadded one); else the JIT fallback, which still
computes the right answer and records the miss. With strict=True a miss raises instead.

The hot path is a dict lookup keyed by the call's shapes, dtypes and static arguments;
everything else (binding, bucket search, verification, deserialization) happens once per
distinct call signature.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import BucketMissError, CallError, StoreError
from ..spec import KernelSpec
from ..spec.registry import all_kernels, find_kernel
from ..store.filestore import FileStore
from ..store.format import decode_section
from ..artifact import compat
from ..artifact.binding import bind, freeze, split_args
from .entry import StoredEntry
from ..artifact.function import fallback_backend, jitted
from . import meshed
from .meshed import MeshRouter
from .misslog import MissLog
from .traced import eager, transformable
from .warmup import CallsFirst, WarmUp

log = logging.getLogger("ejaot")


def load(root: str | os.PathLike, strict: bool = False, device: Any = None, eager: bool | str = False,
         trusted_keys: Any = None, miss_log: bool = True, require: bool = False,
         kernel_modules: Iterable[str] | None = None, mesh: Any = None) -> "Bundle":
    """Opens a store for serving. Never raises for a bad store: problems are reported by
    stats()["rejected"] and the affected calls are served by another tier or the JIT
    fallback (or raise BucketMissError in strict mode).

    eager=False: each entry is verified and deserialized on its first call. eager=True:
    every entry is, before load returns (on several threads). eager="background": the same
    on worker threads while load returns at once; a call that needs an entry still loading
    waits for that entry only, and workers start no new entry while a call resolves its plan.
    bundle.wait_warm() joins them; the process's exit waits for them too.

    require=True: raise StoreError when the store cannot serve at all here (missing, not a
    store, of another format, empty, or built for another platform) instead of serving
    every call through the fallback. Problems go to the "ejaot" logger as warnings.

    kernel_modules: outside modules (a model's steps) this process may import when the
    store's records name them; without it, only modules already imported are used: a
    store never makes the server import a module by itself.

    mesh: a jax.sharding.Mesh for multi-chip entries (ejaot/runtime/meshed.py): calls traced
    without sharded arrays use its entries, and warm-up deserializes them onto it. Eager
    calls whose arrays are sharded find their mesh entries from the arrays alone."""
    from ..spec.registry import trust_modules
    trust_modules(kernel_modules)
    return Bundle(root, strict=strict, device=device, eager=eager, trusted_keys=trusted_keys,
                  miss_log=miss_log, require=require, mesh=mesh)


def _bucket_key(spec: KernelSpec, dtype: str, present: tuple, static: dict, dims: dict):
    """(group key, paddable dims) of a stored record or a call: one function for both,
    so that a call finds exactly the records built for it. Entries in one group differ
    only in their paddable dimensions."""
    fixed = tuple((d, dims.get(d)) for d in spec.dims if d not in spec.paddable)
    paddable = tuple(int(dims.get(d, 0)) for d in spec.dims if d in spec.paddable)
    statics = tuple(freeze(static[n]) for n in spec.static_names)
    return (spec.name, dtype, present, statics, fixed), paddable


@dataclass
class Group:
    """Entries that differ only in their paddable dimensions."""
    paddable: tuple[str, ...]
    members: list[tuple[tuple[int, ...], StoredEntry]] = field(default_factory=list)


class Plan:
    """How one call signature is served. Built once, then called on the hot path."""
    __slots__ = ("path", "tier", "tier_key", "run", "entry")

    def __init__(self, path: str, tier: str, run: Callable, entry: StoredEntry | None = None):
        self.path, self.tier, self.run, self.entry = path, tier, run, entry
        self.tier_key = "tier:" + tier          # the stats counter, built once


class Bundle:
    def __init__(self, root, strict=False, device=None, eager=False, trusted_keys=None, miss_log=True,
                 require=False, mesh=None):
        import jax
        self.root = str(root)
        self.strict = strict
        self.require = require
        self.device = device or jax.local_devices()[0]
        self.platform = compat.local_platform(self.device)
        self.store = FileStore(root)
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._rejected: list[dict] = []
        self._rejected_seen: set = set()
        self._plans: dict[tuple, Plan] = {}
        self._groups: dict[tuple, Group] = {}
        self._fallback_backends: dict[str, str] = {}
        self._entries: dict[str, StoredEntry] = {}
        self._pending: dict[str, bytes] = {}       # kernel -> its index section, not yet decoded
        self._opened: set[str] = set()             # kernels whose records are all accepted
        self._open_lock = threading.RLock()
        self._warm: WarmUp | None = None            # the eager="background" run
        self._warm_runs: list[WarmUp] = []          # every warm-up run, for stats()
        self._calls_first = CallsFirst()
        self._meshes = MeshRouter(mesh)
        self.store_problem: str | None = None
        self.misses = MissLog(self.store.misses_path if miss_log else None)
        self._verifier = None
        if trusted_keys is not None:
            from ..artifact.signing import Verifier
            self._verifier = Verifier(trusted_keys)
        if isinstance(eager, str) and eager != "background":
            raise ValueError(f"eager must be False, True or 'background', not {eager!r}")
        self._open()
        if eager == "background":
            self._warm = self._start_warmup(None, None)
        elif eager:
            self.warmup()

    # -- opening ------------------------------------------------------------------------
    def _open(self):
        self.target = None
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
        # A kernel's section is decoded and its records checked on the kernel's first call
        # (or when all entries are asked for): start-up pays only for the kernels a server
        # actually uses.
        self._pending.update(index["sections"])

    @property
    def entries(self) -> dict[str, StoredEntry]:
        """Every accepted entry (checking all kernels' records now if not yet done)."""
        with self._open_lock:          # also waits for a kernel another thread is accepting
            for kernel in list(self._pending):
                self._ensure_kernel(kernel)
        return self._entries

    def _ensure_kernel(self, kernel: str) -> None:
        """Returns once `kernel`'s records are all accepted (by this thread or another)."""
        if kernel in self._opened:
            return
        with self._open_lock:
            raw = self._pending.pop(kernel, None)
            if raw is not None:
                try:
                    records = decode_section(raw, kernel, str(self.store.index_path))
                except StoreError as e:
                    self._note_rejection(None, kernel, "store", str(e))
                else:
                    self._accept(kernel, records)
            self._opened.add(kernel)

    def _accept(self, kernel: str, records: dict) -> None:
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
            self._groups[gkey].members.sort(key=lambda m: (math.prod(m[0]), m[0]))

    def _accept_one(self, kernel: str, key, record):
        """Checks one record and files its entry under its bucket group; returns the group
        key, or None when the record is rejected (with its reason)."""
        problem = compat.record_problem(key, record)
        if not isinstance(key, str):
            self._note_rejection(repr(key)[:80], kernel, "entry", problem)
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
        entry.compiled_block = compat.compiled_problem(record, self.device)
        if entry.portable_block and entry.compiled_block:
            self._reject_record(key, record, "entry", f"{entry.compiled_block}; {entry.portable_block}")
            return None
        spec = find_kernel(record["kernel"], record.get("module"))
        gkey, pdims = _bucket_key(spec, record["dtype"], tuple(record["present"]),
                                  spec.canonical_static(record["static"]), record["dims"])
        gkey = self._meshes.group_key(gkey, record)      # unchanged for a single-device entry
        for tier, why in (("compiled", entry.compiled_block), ("portable", entry.portable_block)):
            if why and not why.startswith("no "):
                self._note_rejection(key, record.get("kernel"), tier, why)
        self._entries[key] = entry
        group = self._groups.get(gkey)
        if group is None:
            group = self._groups[gkey] = Group(tuple(d for d in spec.dims if d in spec.paddable))
        group.members.append((pdims, entry))
        return gkey

    # -- rejection bookkeeping --------------------------------------------------------------
    def rejections_of(self, kernel: str) -> list[dict]:
        with self._lock:
            return [r for r in self._rejected if r["kernel"] == kernel]

    def _note_rejection(self, key, kernel, tier, reason):
        with self._lock:
            if (key, tier) in self._rejected_seen:
                return
            self._rejected_seen.add((key, tier))
            self._rejected.append({"entry": key, "kernel": kernel, "tier": tier, "reason": reason})
        if tier != "store":
            log.warning("ejaot store %s: %s %s of %s rejected: %s", self.root, tier,
                        str(key)[:12], kernel, reason)

    def _reject_store(self, reason):
        self._note_rejection(None, None, "store", reason)

    def _store_unusable(self, reason: str) -> None:
        """The whole store cannot serve here: said once, at load (or raised with require)."""
        self.store_problem = reason
        self._reject_store(reason)
        if self.require:
            raise StoreError(f"ejaot.load(require=True): {reason}")
        log.warning("ejaot store %s: %s; every call will run the JIT fallback", self.root, reason)

    def _reject_record(self, key, record, tier, reason):
        kernel = record.get("kernel") if isinstance(record, dict) else None
        self._note_rejection(key, kernel, tier, reason)

    def _on_tier_rejected(self, entry: StoredEntry, tier: str, reason: str):
        self._note_rejection(entry.key, entry.kernel, tier, reason)

    # -- serving --------------------------------------------------------------------------
    def call(self, kernel: str, *args: Any, **kwargs: Any) -> Any:
        """Runs `kernel` on the arrays, returning what the kernel's public function returns.
        Eager calls run the compiled tier; under any JAX trace (jit, grad, vmap,
        eval_shape) the portable tier is inlined into the traced program."""
        tracing = not eager()
        try:
            sig = (kernel, tracing and self._meshes.trace_key((*args, *kwargs.values())),
                   tuple(_sig_part(a) for a in args),
                   tuple((k, _sig_part(v)) for k, v in kwargs.items()))
            plan = self._plans.get(sig)
        except TypeError:        # an unhashable static argument: resolve without caching
            sig, plan = None, None
        if plan is None:
            # a call's first resolution (records, deserialization) goes before warm-up work
            with self._calls_first.loading():
                plan = self._resolve(kernel, tracing, args, kwargs, sig)
        with self._lock:
            self._counts[plan.path] += 1
            self._counts[plan.tier_key] += 1
        return plan.run(args, kwargs)

    def _resolve(self, kernel: str, tracing: bool, args, kwargs, sig) -> Plan:
        spec = find_kernel(kernel)
        if spec is None and isinstance(kernel, str) and (kernel in self._pending or kernel in self._opened):
            # an outside kernel: its records name its module, imported when they are accepted
            self._ensure_kernel(kernel)
            spec = find_kernel(kernel)
        if spec is None:
            why = [r["reason"] for r in self.rejections_of(kernel)]
            raise CallError(f"unknown kernel {kernel!r}; installed kernels: {', '.join(all_kernels())}"
                            + (f"; the store's entries for it: {why[0]}" if why else ""))
        call = bind(spec, args, kwargs)          # raises CallError on bad arguments
        with self._lock:
            plan = self._plans.get(sig) if sig is not None else None
        if plan is not None:
            return plan
        self._ensure_kernel(spec.name)
        plan = self._plan_for(spec, call, tracing, sig)
        if sig is not None:
            with self._lock:
                self._plans[sig] = plan
        return plan

    def _plan_for(self, spec: KernelSpec, call, tracing: bool, sig) -> Plan:
        gkey, want = _bucket_key(spec, call.dtype, call.present, call.static, call.dims)
        # arrays split over a mesh: that mesh's entries (ejaot/runtime/meshed.py)
        gkey, placement, mesh_miss = self._meshes.route(spec, call, tracing, gkey, self._groups)
        group = self._groups.get(gkey)
        dtypes_ok = all(str(call.inputs[n].dtype) == d for n, _, d in _artifact_inputs(spec, call)
                        if d is not None)       # a tree's leaves were checked by bind
        if group is not None and dtypes_ok:
            for pdims, entry in group.members:
                if not all(w <= p for w, p in zip(want, pdims)):
                    continue
                runner, tier = self._runner(entry, tracing, placement)
                if runner is None:
                    continue
                path = "exact" if pdims == want else "padded"
                return Plan(path, tier, self._make_run(spec, call, entry, runner, path, tracing, placement),
                            entry)
        reason = mesh_miss or ("no bucket covers this shape" if group is not None
                               else "no stored entry for this kernel, dtype, inputs and static arguments")
        if self.strict:
            raise BucketMissError(self._miss_message(spec, call, group, reason))
        dtypes = {a.name: str(call.inputs[a.name].dtype) for a in spec.inputs
                  if not a.is_tree and call.inputs[a.name] is not None}
        hit = self.misses.record(sig or repr((spec.name, call.dims, call.dtype, call.static)), spec.name,
                                 call.dims, call.dtype, call.present, call.static, reason, dtypes)
        if self.store_problem is None:   # a store-wide problem was said once at load
            log.warning("%s: %s (%s); served by the JIT fallback, recorded in the miss log",
                        spec.name, reason, ", ".join(f"{k}={v}" for k, v in call.dims.items()))
        run = self._make_fallback(spec, call)
        if hit is not None:              # the miss log counts this signature's calls in memory
            fallback = run

            def run(args, kwargs):
                hit()
                return fallback(args, kwargs)
        return Plan("fallback", "jit", run)

    def _runner(self, entry: StoredEntry, tracing: bool, placement=None):
        if not tracing:
            exe = entry.compiled() if placement is None else entry.compiled_on(placement.mesh)
            if exe is not None:
                return exe, "compiled"
        fn = entry.portable()
        return (fn, "portable") if fn is not None else (None, None)

    def _make_run(self, spec: KernelSpec, call, entry: StoredEntry, runner, path: str, tracing: bool,
                  placement=None):
        import jax
        import jax.numpy as jnp
        names = [n for n, _, _ in _artifact_inputs(spec, call)]
        static = call.static
        valid = np.array([call.dims[d] for d in spec.valid_length_dims], np.int32)
        if placement is not None:         # an eager call on a mesh: arrays onto the entry's shardings
            runner = meshed.place(runner, entry, spec, call, placement, valid)
        bucket = {**call.dims, **entry.record["dims"]}
        pads = []                         # per artifact input leaf: None or (widths, value)
        for a in spec.inputs:
            if a.name not in names:
                continue
            if a.is_tree:
                pads += [None] * len(jax.tree_util.tree_leaves(call.inputs[a.name]))
                continue
            real, padded = spec.shape_of(a, call.dims), spec.shape_of(a, bucket)
            pads.append(None if real == padded else
                        ([(0, p - r) for r, p in zip(real, padded)], a.pad_value))
        n_out = len(entry.record["outputs"])
        if spec.has_trees:
            # flat artifact results -> the kernel's outputs, trees rebuilt
            out_tree = jax.tree_util.tree_structure(spec.structure(spec.outputs, call.dims, static, call.dtype))
            in_tree = jax.tree_util.tree_structure([call.inputs[n] for n in names])
            slices = [None] * n_out
            for i, o in enumerate(o for o in spec.outputs if not o.is_tree):
                if spec.shape_of(o, call.dims) != spec.shape_of(o, bucket):
                    slices[_leaf_index(spec, o, out_tree)] = tuple(slice(0, n) for n in spec.shape_of(o, call.dims))
            flat_in, unflat_out = jax.tree_util.tree_leaves, out_tree.unflatten
        else:
            slices = [None if spec.shape_of(o, call.dims) == spec.shape_of(o, bucket)
                      else tuple(slice(0, n) for n in spec.shape_of(o, call.dims))
                      for o in spec.outputs[:n_out]]
            in_tree, flat_in, unflat_out = None, list, tuple
        arrays_of = _arrays_getter(spec, names)

        def stored(*leaves, valid_arg=valid):
            if path == "padded":
                leaves = [x if p is None else jnp.pad(x, p[0], constant_values=p[1])
                          for x, p in zip(leaves, pads)]
            outs = runner(*leaves, valid_arg)
            return tuple(o if s is None else o[s] for o, s in zip(outs, slices))

        if tracing:
            # A NumPy constant, not a device array: it belongs to no trace.
            reference = self._reference(spec, call)
            if in_tree is not None:
                plain = reference

                def reference(*leaves):
                    return tuple(jax.tree_util.tree_leaves(plain(*in_tree.unflatten(leaves))))
            fn = transformable(stored, reference, spec.name)

            def run(args, kwargs):
                return spec.pack(tuple(unflat_out(fn(*flat_in(arrays_of(args, kwargs))))), static)
            return run

        # Eager: the valid lengths live on the device once, made outside any trace.
        valid_arg = jax.device_put(valid, self.device)

        def run(args, kwargs):
            outs = stored(*flat_in(arrays_of(args, kwargs)), valid_arg=valid_arg)
            return spec.pack(tuple(unflat_out(outs)), static)
        return run

    def _reference(self, spec: KernelSpec, call):
        """The kernel compiled by JAX on this platform: the fallback, and what grad
        differentiates."""
        backend = fallback_backend(spec, self.platform)
        return jitted(spec, backend, call.present, call.static)

    def _make_fallback(self, spec: KernelSpec, call):
        self._fallback_backends[spec.name] = fallback_backend(spec, self.platform)
        fn = self._reference(spec, call)
        arrays_of = _arrays_getter(spec, [n for n, _, _ in _artifact_inputs(spec, call)])
        static = call.static

        def run(args, kwargs):
            return spec.pack(fn(*arrays_of(args, kwargs)), static)
        return run

    def _miss_message(self, spec, call, group, reason) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in call.dims.items())
        msg = f"{spec.name}: {reason} (call: {call.dtype}, {dims})"
        if self.store_problem:
            return msg + f"; the store cannot serve here: {self.store_problem}"
        if group is not None:
            near = sorted(group.members, key=lambda m: sum(
                abs(np.log2(max(p, 1)) - np.log2(max(w, 1)))
                for p, w in zip(m[0], (call.dims.get(d, 0) for d in group.paddable))))[:3]
            msg += "; nearest buckets: " + "; ".join(
                ", ".join(f"{d}={v}" for d, v in zip(group.paddable, p)) for p, _ in near)
            return msg
        same = [e.describe() for e in self.entries.values() if e.kernel == spec.name][:3]
        if same:
            return msg + "; stored entries of this kernel: " + "; ".join(same)
        rejected = self.rejections_of(spec.name)
        if rejected:
            return msg + f"; the store's {len(rejected)} entries of it were rejected, e.g.: {rejected[0]['reason']}"
        return msg + "; the store has no entries for it"

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
        spec = find_kernel(kernel) if isinstance(kernel, str) else None
        if spec is None and isinstance(kernel, str) and (kernel in self._pending or kernel in self._opened):
            self._ensure_kernel(kernel)
            spec = find_kernel(kernel)
        if spec is None:
            return None
        try:
            given = set(present)
            present = tuple(a.name for a in spec.inputs if a.optional and a.name in given)
            dims = spec.resolve_dims({k: int(v) for k, v in dims.items()})
            gkey, want = _bucket_key(spec, dtype, present, spec.canonical_static(static or {}), dims)
            self._ensure_kernel(spec.name)
            group = self._groups.get(gkey)
        except (TypeError, ValueError, KeyError):     # a malformed description covers nothing
            return None
        return None if group is None else (spec, group, want)

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        entries = self.entries        # checks every kernel's records, so all rejections are listed
        with self._lock:
            counts = dict(self._counts)
            rejected = list(self._rejected)
        return {
            "calls": {p: counts.get(p, 0) for p in ("exact", "padded", "fallback")},
            "tiers": {t: counts.get("tier:" + t, 0) for t in ("compiled", "portable", "jit")},
            "entries": len(entries),
            "rejected": rejected,
            "fallback_backend": dict(self._fallback_backends),
            "miss_log": str(self.misses.path) if self.misses.path else None,
            "miss_log_error": self.misses.error,
            "store_problem": self.store_problem,
            "warmup_errors": [run.error for run in self._warm_runs if run.error],
        }

    def warmup(self, threads: int | None = None, kernels: str | Iterable[str] | None = None) -> dict[str, int]:
        """Verifies and deserializes every entry's compiled tier now (portable tier where
        there is none) instead of on first use; returns how many entries got which tier.
        `kernels`: only these kernels' entries.

        Entries load on `threads` threads (default: up to 4, one per core); on an H100 host,
        51 entries took 318 ms on one thread, 117 ms on 4 and no less on 8 or 16. Calls come
        first (see ejaot.runtime.warmup)."""
        run = self._start_warmup(threads, kernels)
        run.join()
        return dict(run.tiers)

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Waits for an eager="background" warm-up; True once it has finished (or if none
        was started)."""
        return self._warm.join(timeout) if self._warm is not None else True

    def _start_warmup(self, threads, kernels) -> WarmUp:
        if kernels is not None:
            kernels = {kernels} if isinstance(kernels, str) else set(kernels)
            with self._open_lock:
                stored = set(self._pending) | self._opened
            unknown = sorted(k for k in kernels if find_kernel(k) is None and k not in stored)
            if unknown:
                raise ValueError(f"warmup: unknown kernel(s) {unknown}; installed: {', '.join(all_kernels())}")

        def list_entries():
            with self._open_lock:
                names = kernels if kernels is not None else set(self._pending) | self._opened
            for k in sorted(names):
                self._ensure_kernel(k)       # one at a time: a call's own kernel waits less
            with self._open_lock:
                entries = [e for e in self._entries.values() if e.kernel in names]
            # compiled tiers first: PJRT deserializes them without the GIL, while a portable
            # tier's jax.export.deserialize holds it (and slows any call made meanwhile)
            return sorted(entries, key=lambda e: e.compiled_block is not None)
        run = WarmUp(list_entries, self._calls_first, threads or min(4, os.cpu_count() or 1))
        self._warm_runs.append(run)
        return run.start()


def _target_platform(target) -> str | None:
    from ..targets import get_target
    try:
        return get_target(target).platform
    except (KeyError, TypeError):
        return None


def _sig_part(v):
    """One argument's part of a call signature: an array's shape and dtype, a static's
    value, a tree's structure and leaves; a callable (attention's init_bias) only as
    "given", so a fresh lambda per call does not grow the plan cache."""
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        # the sharding too: the same shapes split over a mesh are served by other entries
        return (tuple(v.shape), v.dtype, getattr(v, "sharding", None))
    if callable(v):
        return ("<callable>",)
    if isinstance(v, (dict, list, tuple)) and v and not isinstance(v, str):
        import jax
        leaves, treedef = jax.tree_util.tree_flatten(v)
        return (treedef, tuple(_sig_part(x) for x in leaves))
    return freeze(v)


def _arrays_getter(spec: KernelSpec, names: list[str]):
    """(args, kwargs) -> the arrays an artifact or the fallback takes, in order, after the
    kernel's call-time hook (hot path: no binding checks, the plan already did them)."""
    prepare = spec.prepare_call

    def arrays_of(args, kwargs):
        inputs, extra = split_args(spec, args, kwargs)
        if prepare is not None:
            prepare(inputs, extra)
        return [inputs[n] for n in names]
    return arrays_of


def _artifact_inputs(spec: KernelSpec, call):
    """(name, shape, dtype) of the arguments the artifact takes, in order (dtype None for a
    tree, whose leaves the artifact takes flat)."""
    return [(a.name, None, None if a.is_tree else spec.dtype_of(a, call.dtype)) for a in spec.inputs
            if not a.optional or a.name in call.present]


def _leaf_index(spec: KernelSpec, arg, out_tree) -> int:
    """Position of array output `arg` among the flat outputs."""
    import jax
    marked = out_tree.unflatten(range(out_tree.num_leaves))
    return next(m for o, m in zip(spec.outputs, marked) if o is arg)

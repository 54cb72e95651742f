"""ejaot.load(): the serving runtime.

    bundle = ejaot.load("artifacts/cpu")
    out = bundle.call("attention", q, k, v, causal=True)

Dispatch, per call: the exact bucket; else the cheapest stored bucket that covers the
call along the kernel's paddable dimensions (pad, run, slice: the kernel masks the
padding, so the result equals the unpadded one); else the JIT fallback, which still
computes the right answer and records the miss. With strict=True a miss raises instead.

The hot path is a dict lookup keyed by the call's shapes, dtypes and static arguments;
everything else (binding, bucket search, verification, deserialization) happens once per
distinct call signature. The Bundle is the facade: the store's accepted records are the
catalog's (catalog.py), a signature's plan the dispatcher's (dispatch.py), loading ahead of
calls the warm-up's (warmup.py), multi-chip routing the mesh router's (meshed.py).
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any, Iterable

from ..artifact import compat
from ..artifact.binding import bind
from ..errors import CallError
from ..spec.registry import all_kernels, find_kernel
from ..store.filestore import FileStore
from .catalog import Catalog
from .dispatch import Dispatcher, Plan, signature_part
from .entry import StoredEntry
from .meshed import MeshRouter
from .misslog import MissLog
from .traced import eager
from .warmup import CallsFirst, WarmUp


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


class Bundle:
    def __init__(self, root, strict=False, device=None, eager=False, trusted_keys=None, miss_log=True,
                 require=False, mesh=None):
        import jax
        self.root = str(root)
        self.strict = strict
        self.device = device or jax.local_devices()[0]
        self.platform = compat.local_platform(self.device)
        self.store = FileStore(root)
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._plans: dict[tuple, Plan] = {}
        # kernel -> its call-time keywords (KernelSpec.call_kwargs: consumed by prepare_call at
        # every call, so a plan depends only on whether one is given, not None, not on its value)
        self._call_kwargs: dict[str, frozenset] = {}
        self._warm: WarmUp | None = None            # the eager="background" run
        self._warm_runs: list[WarmUp] = []          # every warm-up run, for stats()
        self._calls_first = CallsFirst()
        self._meshes = MeshRouter(mesh)
        self.misses = MissLog(self.store.misses_path if miss_log else None)
        verifier = None
        if trusted_keys is not None:
            from ..artifact.signing import Verifier
            verifier = Verifier(trusted_keys)
        if isinstance(eager, str) and eager != "background":
            raise ValueError(f"eager must be False, True or 'background', not {eager!r}")
        self.catalog = Catalog(self.root, self.store, self.device, self.platform, verifier, self._meshes,
                               require)
        self._dispatch = Dispatcher(self.catalog, self._meshes, self.device, self.platform, strict,
                                    self.misses)
        if eager == "background":
            self._warm = self._start_warmup(None, None)
        elif eager:
            self.warmup()

    @property
    def target(self) -> str | None:
        """The target the store was built for (None when there is no readable store)."""
        return self.catalog.target

    @property
    def store_problem(self) -> str | None:
        """Why the store cannot serve here at all, or None."""
        return self.catalog.store_problem

    @property
    def entries(self) -> dict[str, StoredEntry]:
        """Every accepted entry (checking all kernels' records now if not yet done)."""
        return self.catalog.all_entries()

    def rejections_of(self, kernel: str) -> list[dict]:
        return self.catalog.rejections_of(kernel)

    def covers(self, kernel: str, dims: dict, dtype: str, present=(), static: dict | None = None,
               dtypes: dict | None = None) -> bool:
        """Whether such a call (as a miss log line records it) would be served by a stored
        entry accepted here, exact or padded, rather than by the JIT fallback."""
        return self.catalog.covers(kernel, dims, dtype, present, static, dtypes)

    def bucket_grid(self, kernel: str, dims: dict, dtype: str, present=(),
                    static: dict | None = None) -> dict[str, list[int]]:
        """The stored values of each paddable dim among the entries that could serve such a
        call, ascending; {} when there are none."""
        return self.catalog.bucket_grid(kernel, dims, dtype, present, static)

    # -- serving --------------------------------------------------------------------------
    def call(self, kernel: str, *args: Any, **kwargs: Any) -> Any:
        """Runs `kernel` on the arrays, returning what the kernel's public function returns.
        Eager calls run the compiled tier; under any JAX trace (jit, grad, vmap,
        eval_shape) the portable tier is inlined into the traced program."""
        tracing = not eager()
        loose = self._call_kwargs.get(kernel)
        if loose is None and kwargs:
            loose = self._loose_kwargs(kernel)
        try:
            sig = (kernel, tracing and self._meshes.trace_key((*args, *kwargs.values())),
                   tuple(signature_part(a) for a in args),
                   tuple((k, (v is not None) if loose and k in loose else signature_part(v))
                         for k, v in kwargs.items()))
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

    def _loose_kwargs(self, kernel: str) -> frozenset:
        spec = self.catalog.find(kernel)
        if spec is None:       # an unknown kernel: _resolve says so; nothing is remembered
            return frozenset()
        loose = self._call_kwargs[kernel] = frozenset(spec.call_kwargs)
        return loose

    def _resolve(self, kernel: str, tracing: bool, args, kwargs, sig) -> Plan:
        spec = self.catalog.find(kernel)
        if spec is None:
            why = [r["reason"] for r in self.catalog.rejections_of(kernel)]
            raise CallError(f"unknown kernel {kernel!r}; installed kernels: {', '.join(all_kernels())}"
                            + (f"; the store's entries for it: {why[0]}" if why else ""))
        call = bind(spec, args, kwargs)          # raises CallError on bad arguments
        with self._lock:
            plan = self._plans.get(sig) if sig is not None else None
        if plan is not None:
            return plan
        self.catalog.ensure_kernel(spec.name)
        plan = self._dispatch.plan_for(spec, call, tracing)
        if sig is not None:
            with self._lock:
                self._plans[sig] = plan
        return plan

    # -- reporting --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        entries = self.entries        # checks every kernel's records, so all rejections are listed
        with self._lock:
            counts = dict(self._counts)
        return {
            "calls": {p: counts.get(p, 0) for p in ("exact", "padded", "fallback")},
            "tiers": {t: counts.get("tier:" + t, 0) for t in ("compiled", "portable", "jit")},
            "entries": len(entries),
            "rejected": self.catalog.rejections(),
            "fallback_backend": self._dispatch.fallback_backends(),
            "miss_log": str(self.misses.path) if self.misses.path else None,
            "miss_log_error": self.misses.error,
            "store_problem": self.store_problem,
            "warmup_errors": [run.error for run in self._warm_runs if run.error],
        }

    # -- loading ahead of calls -------------------------------------------------------------
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
            stored = self.catalog.stored_kernels()
            unknown = sorted(k for k in kernels if find_kernel(k) is None and k not in stored)
            if unknown:
                raise ValueError(f"warmup: unknown kernel(s) {unknown}; installed: {', '.join(all_kernels())}")

        def list_entries():
            names = kernels if kernels is not None else self.catalog.stored_kernels()
            for k in sorted(names):
                self.catalog.ensure_kernel(k)       # one at a time: a call's own kernel waits less
            with self.catalog.open_lock:
                entries = [e for e in self.catalog.accepted.values() if e.kernel in names]
            # compiled tiers first: PJRT deserializes them without the GIL, while a portable
            # tier's jax.export.deserialize holds it (and slows any call made meanwhile)
            return sorted(entries, key=lambda e: e.compiled_block is not None)
        run = WarmUp(list_entries, self._calls_first, threads or min(4, os.cpu_count() or 1))
        self._warm_runs.append(run)
        return run.start()

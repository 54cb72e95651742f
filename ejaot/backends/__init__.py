"""Kernel backends as data: each module of this package declares one `BACKEND` (its name,
the platforms it runs on and its rank there, the packages its artifacts depend on, whether
the JIT path can use it on this host, and the jax.export checks its custom calls need
disabled). Targets, the toolchain record, the JIT fallback and lowering read this registry
and never name a backend: a new backend is a new module here.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable


@dataclass(frozen=True)
class BackendInfo:
    name: str
    platforms: tuple[str, ...]            # jax platforms its kernels run on
    rank: int                             # lower runs first where several fit (xla: last)
    tools: tuple[str, ...] = ()           # distributions recorded in an entry's toolchain
    jit_usable: Callable[[], bool] = field(default=lambda: True)   # the JIT path can trace it here
    disabled_checks: Callable[[], list] = field(default=list)      # jax.export safety checks to disable
    call_name: str | None = None          # its name for ejkernel's `platform=` argument (ejaot.ops)
    build_cost: float = 1.0               # lowering one entry, relative to a small XLA entry (shard.py)
    reference: bool = False               # runs everywhere: verify's reference, the JIT's last resort


@lru_cache(maxsize=1)
def all_backends() -> dict[str, BackendInfo]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        backend = getattr(importlib.import_module(f"{__name__}.{info.name}"), "BACKEND", None)
        if isinstance(backend, BackendInfo):
            found[backend.name] = backend
    return found


def get_backend(name: str) -> BackendInfo:
    backends = all_backends()
    if name not in backends:
        raise KeyError(f"unknown backend {name!r}; known: {sorted(backends)}")
    return backends[name]


@lru_cache(maxsize=1)
def by_call_name() -> dict[str, str]:
    """ejkernel's `platform=` names -> backend names."""
    return {b.call_name: b.name for b in all_backends().values() if b.call_name}


def reference_backend() -> str:
    """The backend every kernel has and every platform runs."""
    return next(b.name for b in all_backends().values() if b.reference)


def backends_for(platform: str) -> tuple[str, ...]:
    """The backends that run on `platform`, in order of preference."""
    return tuple(b.name for b in sorted(all_backends().values(), key=lambda b: (b.rank, b.name))
                 if platform in b.platforms)

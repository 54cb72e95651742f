"""ejaot: ahead-of-time compiled JAX kernel artifacts.

    make artifacts TARGET=cpu              # build a store from manifests/default.toml
    bundle = ejaot.load("artifacts/cpu")   # at server start-up: milliseconds
    out = bundle.call("attention", q, k, v, causal=True)
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from .runtime.bundle import Bundle

__version__ = "0.1.0"


def load(root: str | os.PathLike, strict: bool = False, device: Any = None, eager: bool | str = False,
         trusted_keys: Any = None, miss_log: bool = True, require: bool = False,
         kernel_modules: Iterable[str] | None = None, mesh: Any = None) -> Bundle:
    """Opens an artifact store for serving; see ejaot.runtime.bundle.load (and docs/api.md)."""
    from .runtime.bundle import load as _load
    return _load(root, strict=strict, device=device, eager=eager, trusted_keys=trusted_keys,
                 miss_log=miss_log, require=require, kernel_modules=kernel_modules, mesh=mesh)


def use(store: str | os.PathLike | Bundle | None = None, **load_options: Any) -> Bundle | None:
    """Serves `ejaot.ops` (ejkernel's functions) from a store; see ejaot.runtime.active."""
    from .runtime.active import use as _use
    return _use(store, **load_options)


__all__ = ["load", "use", "__version__"]

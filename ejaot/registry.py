"""Finds the kernel collection: every sub-package of `ejaot_kernels` that exports SPEC."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from .kernel_spec import KernelSpec

COLLECTION = "ejaot_kernels"


@lru_cache(maxsize=1)
def all_kernels() -> dict[str, KernelSpec]:
    root = importlib.import_module(COLLECTION)
    found = {}
    for info in pkgutil.iter_modules(root.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{COLLECTION}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, KernelSpec):
            found[spec.name] = spec
    return dict(sorted(found.items()))


def get_kernel(name: str) -> KernelSpec:
    kernels = all_kernels()
    if name not in kernels:
        raise KeyError(f"unknown kernel {name!r}; known kernels: {', '.join(kernels)}")
    return kernels[name]

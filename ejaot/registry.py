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


_by_name: dict[str, KernelSpec] = {}


def find_kernel(name: str) -> KernelSpec | None:
    """The kernel called `name`, importing only its own folder (start-up is hot)."""
    spec = _by_name.get(name)
    if spec is None and isinstance(name, str) and name.isidentifier():
        try:
            module = importlib.import_module(f"{COLLECTION}.{name}")
        except ImportError:
            module = None
        spec = getattr(module, "SPEC", None)
        if not (isinstance(spec, KernelSpec) and spec.name == name):
            spec = all_kernels().get(name)
        if spec is not None:
            _by_name[name] = spec
    return spec


def get_kernel(name: str) -> KernelSpec:
    spec = find_kernel(name)
    if spec is None:
        raise KeyError(f"unknown kernel {name!r}; known kernels: {', '.join(all_kernels())}")
    return spec

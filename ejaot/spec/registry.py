"""Finds kernels: the collection (every sub-package of `ejaot_kernels` that exports SPEC)
and kernels from outside it, in a user's own importable module (a model's steps, say),
named by a manifest's `module` key and recorded in each of their entries.

An outside module declares KernelSpecs as module-level names, or lists them in SPECS; a
kernel is then found by its name, exactly like a built-in one."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from functools import lru_cache

from . import COLLECTION, KernelSpec


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


_import_failures: dict[str, ImportError] = {}


def register_module(module: str) -> dict[str, KernelSpec]:
    """Imports an outside module and registers the KernelSpecs it declares; returns them.
    Raises ImportError (with the module's name) when it cannot be imported; a failure is
    remembered, so a store of many such entries tries once."""
    if module in _import_failures:
        raise _import_failures[module]
    _trusted.add(module)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        _import_failures[module] = e
        raise
    declared = list(getattr(mod, "SPECS", ())) + [v for v in vars(mod).values() if isinstance(v, KernelSpec)]
    found = {s.name: s for s in declared if isinstance(s, KernelSpec)}
    for name, spec in found.items():
        _by_name[name] = spec
        _module_of[name] = module
    return found


_module_of: dict[str, str] = {}


def module_of(name: str) -> str | None:
    """The outside module a registered kernel came from (None for the collection's)."""
    return _module_of.get(name)


_trusted: set[str] = set()


def trust_modules(modules) -> None:
    """Outside modules this process may import when a store's records name them."""
    _trusted.update(m for m in (modules or ()) if isinstance(m, str))


def may_import(module: str) -> bool:
    """A store never makes a server import a module by itself: only one the process has
    already imported, one registered by a manifest, or one it trusted (ejaot.load's
    kernel_modules)."""
    return module in sys.modules or module in _trusted


def find_kernel(name: str, module: str | None = None) -> KernelSpec | None:
    """The kernel called `name`, importing only its own folder (start-up is hot); an outside
    kernel from `module` when this process may import it (may_import; ImportError if it
    cannot be)."""
    spec = _by_name.get(name)
    if spec is None and module and may_import(module):
        spec = register_module(module).get(name)
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


def get_kernel(name: str, module: str | None = None) -> KernelSpec:
    """The build's lookup: an outside module named by a manifest (the operator's input) is
    imported and registered."""
    if module and name not in _by_name:
        trust_modules([module])
    spec = find_kernel(name, module)
    if spec is None:
        raise KeyError(f"unknown kernel {name!r}; known kernels: {', '.join(all_kernels())}")
    return spec

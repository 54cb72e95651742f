"""Source hashing: which Python sources an entry's artifacts depend on. A kernel of the
collection hashes what its backend reaches (its spec's __init__, the implementation module
and every collection module they import, read from the source text); an outside kernel (a
model's step) hashes its own package, the whole collection and ejaot.ops. A changed hash
makes an entry stale; nothing else does."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re

COLLECTION = "ejaot_kernels"
_OPS_MODULE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "ops.py")
_source_hashes: dict[tuple, str] = {}


def outside_source_hash(package: str) -> str:
    """A kernel from outside the collection (a model's step): its own package's sources
    (the top-level package that holds `package`, every .py file in it), the whole kernel
    collection and ejaot.ops, since a step inlines whichever kernels it calls."""
    if ("outside", package) not in _source_hashes:
        top = package.split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"package {top!r} not found")
        folder = list(spec.submodule_search_locations)[0]
        h = hashlib.sha256()
        for rel in _python_files(folder):
            h.update(f"{top}/{rel}".encode() + b"\0" + _read(os.path.join(folder, rel)) + b"\0")
        collection = list(importlib.util.find_spec(COLLECTION).submodule_search_locations)[0]
        for rel in _python_files(collection):
            h.update(f"{COLLECTION}/{rel}".encode() + b"\0" + _read(os.path.join(collection, rel)) + b"\0")
        h.update(_read(_OPS_MODULE))
        _source_hashes[("outside", package)] = h.hexdigest()
    return _source_hashes[("outside", package)]


def backend_source_hash(package: str, impl_module: str) -> str:
    """sha256 over `package`'s __init__, the module `impl_module`, and every collection
    module they import (following import statements, across kernel folders and into the
    collection's shared modules)."""
    key = (package, impl_module)
    if key not in _source_hashes:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"kernel package {package!r} not found")
        folder = list(spec.submodule_search_locations)[0]
        collection = os.path.dirname(folder)
        own = os.path.basename(folder)
        start = [f"{own}/__init__.py"]
        if impl_module.startswith(package + "."):
            start.append(f"{own}/{impl_module[len(package) + 1:].replace('.', '/')}.py")
        h = hashlib.sha256()
        for rel, text in _reached_modules(collection, start):
            h.update(rel.encode() + b"\0" + text + b"\0")
        _source_hashes[key] = h.hexdigest()
    return _source_hashes[key]


# Imports of kernel-collection modules, read from the source text (cheap enough for
# serving start-up, where hashes are checked): "ejaot_kernels.pkg[.module]" not followed
# by ":" (which names an implementation for lazy import: Backend("pkg.module:fn")),
# "from .module import", and "from ejaot_kernels.pkg import a, b" / "from . import a, b"
# (a name that is no module file is ignored).
# Each pattern starts with a literal, which the regex engine searches for quickly: these
# run on the first call of every kernel at serving start-up.
_ABSOLUTE = re.compile(rb"ejaot_kernels\.(\w+)(?:\.(\w+))?(?![\w.:])")
_FROM_RELATIVE = re.compile(rb"from[ \t]+\.(\w+)[ \t]+import\b")
_FROM_PACKAGE = re.compile(rb"from[ \t]+(?:ejaot_kernels\.(\w+)|(\.))[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)")


def _module_refs(text: bytes, pkg: str) -> list[tuple[str, str | None]]:
    """(package, module or None) of each collection module that `text`, a module of
    package `pkg`, imports."""
    refs = [(p.decode(), m.decode() or None) for p, m in _ABSOLUTE.findall(text)]
    refs += [(pkg, m.decode()) for m in _FROM_RELATIVE.findall(text)]
    for p, dot, names in _FROM_PACKAGE.findall(text):
        target = pkg if dot else p.decode()
        refs += [(target, n.decode()) for n in re.split(rb"[\s,()\\]+", names) if n]
    return refs


def _reached_modules(collection: str, start: list[str]) -> list[tuple[str, bytes]]:
    """(path relative to the collection, bytes) of the `start` modules and of every
    kernel-package module they import, with each such package's __init__, transitively."""
    found: dict[str, bytes] = {}
    todo = list(start)
    while todo:
        rel = todo.pop()
        path = os.path.join(collection, rel)
        if rel in found or not os.path.isfile(path):
            continue
        found[rel] = _read(path)
        for pkg, module in _module_refs(found[rel], rel.split("/")[0]):
            if os.path.isdir(os.path.join(collection, pkg)):
                todo.append(f"{pkg}/__init__.py")
                if module:
                    todo.append(f"{pkg}/{module}.py")
            else:                                # a shared module of the collection
                todo.append(f"{pkg}.py")
    return sorted(found.items())


def _python_files(folder: str) -> list[str]:
    """Relative paths of the .py files under folder, in path-component order (os.walk
    and plain reads: this runs at serving start-up, where pathlib's glob costs ~1 ms)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel_root = os.path.relpath(root, folder)
        for f in files:
            if f.endswith(".py"):
                found.append(f if rel_root == "." else f"{rel_root}/{f}")
    return sorted(found, key=lambda r: r.split("/"))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()

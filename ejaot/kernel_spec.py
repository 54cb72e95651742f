"""What a kernel declares to the engine: its arrays, dimensions, static arguments,
which dimensions may be padded to a bucket, and its implementations per backend.

A spec is plain data and imports no jax: planning and incremental rebuilds read specs
without paying for a jax import. Implementations are named as "module:function" and
imported only when an entry is lowered or a fallback runs.

Implementation calling convention (every backend):

    impl(inputs: dict[str, Array | None], valid_lens: int32[len(valid_length_dims)],
         *, config: dict, **static) -> tuple[Array, ...]

`valid_lens` carries the real (unpadded) sizes of the dimensions listed in
`valid_length_dims`; a kernel masks everything past them, which is what keeps a padded
bucket's result exact. One artifact therefore serves its exact bucket and every smaller
shape padded into it.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class ArrayArg:
    """One array argument or result. `dims` holds dimension names or literal sizes."""
    name: str
    dims: tuple[str | int, ...]
    dtype: str | None = None      # None: the entry's dtype; else fixed ("int32", "bool")
    optional: bool = False
    pad_value: float | int | bool = 0
    is_tree: bool = False


@dataclass(frozen=True)
class TreeArg:
    """A pytree argument or result: a model's parameters, a KV cache. Its leaves' shapes and
    dtypes follow from the entry's dims, statics and dtype through `avals`, "module:function"
    (dims, static, dtype) -> pytree of jax.ShapeDtypeStruct; the entry records them and a
    call is checked against them leaf by leaf. A tree is never padded. `dims_from` reads
    dims off the given tree at call time: ((dim, leaf path as jax.tree_util.keystr, axis),).
    `donate`: the compiled tier may reuse this argument's buffers for its outputs."""
    name: str
    avals: str
    dims_from: tuple[tuple[str, str, int], ...] = ()
    donate: bool = False
    optional: bool = False          # the ArrayArg fields the engine reads on every input
    dtype: None = None
    dims: tuple = ()
    pad_value: int = 0
    is_tree: bool = True

    def expected(self, dims, static, dtype):
        module, _, fn = self.avals.partition(":")
        return getattr(importlib.import_module(module), fn)(dims, static, dtype)


@dataclass(frozen=True)
class StaticArg:
    """A compile-time argument. `normalize` maps a user value to a canonical,
    msgpack-able value (or raises ValueError saying what is expected)."""
    name: str
    default: Any = None
    normalize: Callable[[Any], Any] | None = None
    doc: str = ""

    def canonical(self, value):
        return self.normalize(value) if self.normalize else value


@dataclass(frozen=True)
class Backend:
    """One implementation of a kernel: "module:function", plus its tunable configs."""
    impl: str
    heuristic_config: Callable[[Mapping[str, int], Mapping[str, Any], Any], dict] | None = None
    config_candidates: Callable[[Mapping[str, int], Mapping[str, Any], Any], list[dict]] | None = None

    def load(self) -> Callable:
        module, _, fn = self.impl.partition(":")
        return getattr(importlib.import_module(module), fn)

    def config_for(self, dims, static, target) -> dict:
        return dict(self.heuristic_config(dims, static, target)) if self.heuristic_config else {}


@dataclass(frozen=True)
class KernelSpec:
    name: str
    package: str                          # the kernel's folder as a package, e.g. ejaot_kernels.attention
    inputs: tuple[ArrayArg | TreeArg, ...]
    outputs: tuple[ArrayArg | TreeArg, ...]
    statics: tuple[StaticArg, ...]
    dims: tuple[str, ...]
    backends: Mapping[str, Backend]       # backend name ("xla", "triton", "pallas_tpu") -> impl
    dim_defaults: Mapping[str, str | int] = field(default_factory=dict)  # dim -> dim it equals, or a size
    paddable: frozenset[str] = frozenset()
    valid_length_dims: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    check: Callable[[Mapping[str, int], Mapping[str, Any]], None] | None = None
    pack_outputs: Callable[[tuple, Mapping[str, Any]], Any] | None = None
    prepare_call: Callable[[dict, dict], None] | None = None   # call-time hook, may edit inputs/static
    call_kwargs: tuple[str, ...] = ()     # extra call-time keywords that prepare_call consumes
    example_inputs: str | None = None     # "module:function"(dims, dtype, present, static, rng) -> dict of numpy arrays
    footprint: Callable[[Mapping[str, int]], int] | None = None   # elements of the largest reference intermediate
    doc: str = ""

    # -- derived views (cached: split_args reads them on every call) -------------------
    @functools.cached_property
    def input_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.inputs)

    @functools.cached_property
    def static_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statics)

    @functools.cached_property
    def has_trees(self) -> bool:
        return any(a.is_tree for a in self.inputs + self.outputs)

    def structure(self, args, dims, static, dtype, present=None) -> tuple:
        """The value of each of `args` (inputs or outputs) as a pytree of
        jax.ShapeDtypeStruct; optional inputs only when in `present`."""
        import jax
        import jax.numpy as jnp
        return tuple(a.expected(dims, static, dtype) if a.is_tree
                     else jax.ShapeDtypeStruct(self.shape_of(a, dims), jnp.dtype(self.dtype_of(a, dtype)))
                     for a in args if not a.optional or present is None or a.name in present)

    def leaf_avals(self, args, dims, static, dtype, present=None) -> list[tuple[str, tuple, str]]:
        """(name, shape, dtype) of every array leaf of `args`, in flattening order: an array
        argument by its name, a tree's leaves as name + key path (e.g. params['embed'])."""
        if not any(a.is_tree for a in args):
            return [(a.name, self.shape_of(a, dims), self.dtype_of(a, dtype))
                    for a in args if not a.optional or present is None or a.name in present]
        import jax
        out = []
        chosen = [a for a in args if not a.optional or present is None or a.name in present]
        for a, value in zip(chosen, self.structure(chosen, dims, static, dtype)):
            if not a.is_tree:
                out.append((a.name, tuple(value.shape), str(value.dtype)))
                continue
            for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
                out.append((a.name + jax.tree_util.keystr(path), tuple(leaf.shape), str(leaf.dtype)))
        return out

    def static_arg(self, name) -> StaticArg:
        for s in self.statics:
            if s.name == name:
                return s
        raise KeyError(name)

    def canonical_static(self, given: Mapping[str, Any]) -> dict:
        """All static arguments, defaults filled in, each in canonical form."""
        out = {}
        for s in self.statics:
            out[s.name] = s.canonical(given.get(s.name, s.default))
        return out

    def resolve_dims(self, given: Mapping[str, int]) -> dict:
        """Fill defaulted dimensions (e.g. kv_seq = seq) from the given ones."""
        dims = dict(given)
        for d, src in self.dim_defaults.items():
            if d not in dims:
                if isinstance(src, int):
                    dims[d] = src
                elif src in dims:
                    dims[d] = dims[src]
        return dims

    def shape_of(self, arg: ArrayArg, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in arg.dims)

    def dtype_of(self, arg: ArrayArg, dtype: str) -> str:
        return arg.dtype or dtype

    def source_hash(self, backend: str) -> str:
        """sha256 over the Python sources `backend`'s artifacts depend on: the kernel's
        `__init__` (its spec) and the backend's implementation module, and every module of
        the collection they import, transitively. Nothing else: editing the Hopper kernel
        that only the Triton backend imports leaves CPU and TPU entries fresh. A change
        makes entries stale."""
        if not self.package.startswith(COLLECTION + "."):
            return outside_source_hash(self.package)
        return backend_source_hash(self.package, self.backends[backend].impl.partition(":")[0])

    def make_inputs(self, dims, dtype, present, static, rng) -> dict:
        """Fresh random inputs that satisfy the kernel's contract (never zeros)."""
        module, _, fn = self.example_inputs.partition(":")
        return getattr(importlib.import_module(module), fn)(dims, dtype, present, static, rng)

    def pack(self, outputs: tuple, static: Mapping[str, Any]):
        if self.pack_outputs is not None:
            return self.pack_outputs(outputs, static)
        return outputs[0] if len(outputs) == 1 else outputs


_source_hashes: dict[tuple, str] = {}
COLLECTION = "ejaot_kernels"


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
        h.update(_read(os.path.join(os.path.dirname(__file__), "ops.py")))
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

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
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import sources


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
        return self.normalize(_python_scalar(value)) if self.normalize else value


def _python_scalar(value):
    """A NumPy scalar (np.float32(0.125), np.True_) as the Python value it holds, for the
    normalizers, which take Python numbers. A 0-d array stays an array (and is refused): a
    call's plan is keyed by an array's shape, not its value."""
    np = sys.modules.get("numpy")      # a NumPy scalar means NumPy is imported; a spec imports none
    return value.item() if np is not None and isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Backend:
    """One implementation of a kernel: "module:function", plus its tunable configs and
    the buckets it can run (`supports(dims, static)`; None: every bucket). Where a backend
    does not support a bucket, the next one the platform prefers takes it, at build and at
    JIT time alike."""
    impl: str
    heuristic_config: Callable[[Mapping[str, int], Mapping[str, Any], Any], dict] | None = None
    config_candidates: Callable[[Mapping[str, int], Mapping[str, Any], Any], list[dict]] | None = None
    supports: Callable[[Mapping[str, int], Mapping[str, Any]], bool] | None = None

    def load(self) -> Callable:
        module, _, fn = self.impl.partition(":")
        return getattr(importlib.import_module(module), fn)

    def config_for(self, dims, static, target) -> dict:
        return dict(self.heuristic_config(dims, static, target)) if self.heuristic_config else {}

    def runs(self, dims, static) -> bool:
        return self.supports is None or bool(self.supports(dims, static))


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
    # the same, for the inputs a bucket is timed on (tuning): its most work, where example
    # inputs vary it (paged kernels' random context lengths); None: example_inputs
    timing_inputs: str | None = None
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

    def choose_backend(self, preferred, dims=None, static=None) -> str | None:
        """The first of `preferred` (backend names, best first) this kernel has and that runs
        these dims (None: any dims; a bucket-independent question)."""
        for name in preferred:
            backend = self.backends.get(name)
            if backend is not None and (dims is None or backend.runs(dims, static or {})):
                return name
        return None

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
        if not self.package.startswith(sources.COLLECTION + "."):
            return sources.outside_source_hash(self.package)
        return sources.backend_source_hash(self.package, self.backends[backend].impl.partition(":")[0])

    def make_inputs(self, dims, dtype, present, static, rng, timing: bool = False) -> dict:
        """Fresh random inputs that satisfy the kernel's contract (never zeros); timing: the
        ones a bucket is timed on (timing_inputs, where the kernel declares them)."""
        where = (self.timing_inputs if timing else None) or self.example_inputs
        module, _, fn = where.partition(":")
        return getattr(importlib.import_module(module), fn)(dims, dtype, present, static, rng)

    def pack(self, outputs: tuple, static: Mapping[str, Any]):
        if self.pack_outputs is not None:
            return self.pack_outputs(outputs, static)
        return outputs[0] if len(outputs) == 1 else outputs

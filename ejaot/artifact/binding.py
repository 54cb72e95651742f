"""Binding a call to a kernel's signature: which arrays, which static arguments, and the
dimension sizes they imply. Every mistake becomes a CallError naming the argument.

bind() is the one place every call is checked (bundle.call, the JIT path of the public
functions and ejaot.ops, eager or under a JAX trace), so it also refuses what no kernel
can take: an array without a fixed dtype (query, key, caches, ...) whose dtype is not one
of the kernel's `dtypes` (integer, boolean, complex, float64, ...), such arrays of
different dtypes in one call (no silent casts: a store would miss and log the wrong
dtype), and a dimension of size 0 other than batch / num_seqs (EMPTY_OK_DIMS)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CallError
from ..spec import KernelSpec


@dataclass
class BoundCall:
    inputs: dict[str, Any]        # every input name -> array or None
    static: dict[str, Any]        # canonical static arguments, all of them
    dims: dict[str, int]
    dtype: str                    # the dtype of the first input: the entry's dtype
    present: tuple[str, ...]      # optional inputs given


def freeze(v):
    """A static argument as a hashable key part (lists, e.g. a (left, right) window, to tuples)."""
    if type(v) is list:
        return tuple(freeze(x) for x in v)
    return v


def split_args(spec: KernelSpec, args: tuple, kwargs: dict) -> tuple[dict, dict]:
    names = spec.input_names
    if len(args) > len(names):
        raise CallError(f"{spec.name}: takes at most {len(names)} positional arrays "
                        f"({', '.join(names)}), got {len(args)}")
    inputs = dict.fromkeys(names)
    inputs.update(zip(names, args))
    static = {}
    for k, v in kwargs.items():
        if k in inputs:
            if names.index(k) < len(args):
                raise CallError(f"{spec.name}: argument {k!r} given both by position and by keyword")
            inputs[k] = v
        elif k in spec.static_names or k in spec.call_kwargs:
            static[k] = v
        else:
            raise CallError(f"{spec.name}: unexpected argument {k!r}; arrays: {list(names)}, "
                            f"static: {list(spec.static_names) + list(spec.call_kwargs)}")
    return inputs, static


def bind(spec: KernelSpec, args: tuple, kwargs: dict) -> BoundCall:
    inputs, static = split_args(spec, args, kwargs)
    if spec.prepare_call is not None:
        spec.prepare_call(inputs, static)
    try:
        static = spec.canonical_static(static)
    except (ValueError, TypeError) as e:
        raise CallError(f"{spec.name}: {e}") from None
    dims: dict[str, int] = {}
    seen_in: dict[str, str] = {}
    trees = []
    entry_dtype, entry_from = None, None    # the dtype every dtype-None array must share
    for a in spec.inputs:
        x = inputs[a.name]
        if x is None:
            if not a.optional:
                raise CallError(f"{spec.name}: missing required array {a.name!r}")
            continue
        if a.is_tree:
            trees.append((a, _tree_leaves(spec, a, x)))
            for d, path, axis in a.dims_from:
                leaf = trees[-1][1].get(path)
                if leaf is None or axis >= len(leaf.shape):
                    raise CallError(f"{spec.name}: {a.name}{path} is missing or has no axis {axis} "
                                    f"(it gives dimension {d!r})")
                dims.setdefault(d, int(leaf.shape[axis]))
                seen_in.setdefault(d, a.name + path)
            continue
        shape = getattr(x, "shape", None)
        if shape is None:
            raise CallError(f"{spec.name}: {a.name!r} must be an array, got {type(x).__name__}")
        if len(shape) != len(a.dims):
            raise CallError(f"{spec.name}: {a.name!r} must have {len(a.dims)} dimensions "
                            f"[{', '.join(map(str, a.dims))}], got shape {tuple(shape)}")
        for d, n in zip(a.dims, shape):
            if isinstance(d, int):
                if n != d:
                    raise CallError(f"{spec.name}: {a.name!r} shape {tuple(shape)}: dimension "
                                    f"{a.dims.index(d)} must be {d}")
            elif d in dims and dims[d] != n:
                raise CallError(f"{spec.name}: dimension {d!r} is {dims[d]} in {seen_in[d]!r} "
                                f"but {n} in {a.name!r}")
            else:
                dims[d] = int(n)
                seen_in.setdefault(d, a.name)
        check_nonempty(spec, a, shape)
        if a.dtype is not None:
            if str(x.dtype) != a.dtype:
                raise CallError(f"{spec.name}: {a.name!r} must have dtype {a.dtype}, got {x.dtype}")
        else:
            entry_dtype = check_entry_dtype(spec, a, x.dtype, entry_dtype, entry_from)
            entry_from = entry_from or a.name
    dims = spec.resolve_dims(dims)
    dims = {d: dims[d] for d in spec.dims if d in dims}
    if spec.check:
        try:
            spec.check(dims, static)
        except ValueError as e:
            raise CallError(f"{spec.name}: {e}") from None
    first = inputs[spec.inputs[0].name]
    dtype = str(next(iter(trees[0][1].values())).dtype) if spec.inputs[0].is_tree else str(first.dtype)
    if entry_dtype is not None and not spec.inputs[0].is_tree:
        dtype = entry_dtype
    for a, leaves in trees:
        _check_tree(spec, a, leaves, dims, static, dtype)
    present = tuple(a.name for a in spec.inputs if a.optional and inputs[a.name] is not None)
    return BoundCall(inputs, static, dims, dtype, present)


# Dimensions that may be 0: a call over no batch rows (no sequences) returns an empty output
# of the right shape on every kernel. Any other dimension of size 0 (no heads, head_dim 0,
# an empty key sequence, a page of 0 tokens, no pages, an empty block table, a latent rank
# of 0, ...) leaves the kernel nothing it can compute (a softmax over no keys, a 0 ** -0.5
# scale, a GQA group of q_heads // 0), so bind refuses it.
EMPTY_OK_DIMS = frozenset({"batch", "num_seqs"})


def check_nonempty(spec: KernelSpec, a, shape) -> None:
    """A CallError naming the argument and the dimension when a dimension other than
    EMPTY_OK_DIMS has size 0."""
    for i, (d, n) in enumerate(zip(a.dims, shape)):
        if n == 0 and not isinstance(d, int) and d not in EMPTY_OK_DIMS:
            raise CallError(f"{spec.name}: {a.name!r} shape {tuple(shape)}: dimension {i} ({d!r}) is 0; "
                            f"{spec.name} needs at least one (only {' and '.join(sorted(EMPTY_OK_DIMS))} "
                            f"may be 0, giving an empty output)")


def _dtype_kind(name: str) -> str:
    if name == "bool":
        return "a boolean array"
    if name.startswith(("int", "uint")):
        return "an integer array"
    if name.startswith("complex"):
        return "a complex array"
    return f"dtype {name}"


def check_entry_dtype(spec: KernelSpec, a, got, entry_dtype: str | None, entry_from: str | None) -> str:
    """An array argument without a fixed dtype takes the entry's dtype: it must be one of the
    kernel's `dtypes` (floating point: integer, boolean and complex arrays are refused) and
    the same as every other such argument's (no silent casts). Returns the entry dtype."""
    name = str(got)
    if name not in spec.dtypes:
        raise CallError(f"{spec.name}: {a.name!r} must be a floating-point array of dtype "
                        f"{', '.join(spec.dtypes)}; got {_dtype_kind(name)}"
                        + ("" if _dtype_kind(name).startswith("dtype") else f" ({name})"))
    if entry_dtype is not None and name != entry_dtype:
        raise CallError(f"{spec.name}: {a.name!r} has dtype {name} but {entry_from!r} has {entry_dtype}: "
                        f"the floating-point arrays of one call must share a dtype (cast them first)")
    return name


def _tree_leaves(spec: KernelSpec, a, tree) -> dict:
    """{key path: leaf} of a tree argument; every leaf must be an array."""
    import jax
    leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = jax.tree_util.keystr(path)
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise CallError(f"{spec.name}: {a.name}{key} must be an array, got {type(leaf).__name__}")
        leaves[key] = leaf
    if not leaves:
        raise CallError(f"{spec.name}: {a.name!r} holds no arrays")
    return leaves


def _check_tree(spec: KernelSpec, a, leaves: dict, dims, static, dtype) -> None:
    """Each leaf of a tree argument against the shapes and dtypes the kernel declares for
    these dims and statics; a mismatch names the leaf."""
    import jax
    try:
        expected = a.expected(dims, static, dtype)
    except (KeyError, ValueError, TypeError) as e:
        raise CallError(f"{spec.name}: {a.name!r} cannot be described for dims {dims} and static "
                        f"{static}: {type(e).__name__}: {e}") from None
    want = {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_flatten_with_path(expected)[0]}
    for key, leaf in want.items():
        got = leaves.get(key)
        if got is None:
            raise CallError(f"{spec.name}: {a.name}{key} is missing (expected shape "
                            f"{tuple(leaf.shape)} {leaf.dtype})")
        if tuple(got.shape) != tuple(leaf.shape) or str(got.dtype) != str(leaf.dtype):
            raise CallError(f"{spec.name}: {a.name}{key} must have shape {tuple(leaf.shape)} and dtype "
                            f"{leaf.dtype}, got {tuple(got.shape)} {got.dtype}")
    extra = sorted(set(leaves) - set(want))
    if extra:
        raise CallError(f"{spec.name}: {a.name}{extra[0]} is not part of the declared {a.name!r} "
                        f"({len(extra)} unexpected leaves)")

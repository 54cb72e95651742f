"""Binding a call to a kernel's signature: which arrays, which static arguments, and the
dimension sizes they imply. Every mistake becomes a CallError naming the argument."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CallError
from ..kernel_spec import KernelSpec


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
    for a in spec.inputs:
        x = inputs[a.name]
        if x is None:
            if not a.optional:
                raise CallError(f"{spec.name}: missing required array {a.name!r}")
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
        if a.dtype is not None and str(x.dtype) != a.dtype:
            raise CallError(f"{spec.name}: {a.name!r} must have dtype {a.dtype}, got {x.dtype}")
    dims = spec.resolve_dims(dims)
    dims = {d: dims[d] for d in spec.dims if d in dims}
    if spec.check:
        try:
            spec.check(dims, static)
        except ValueError as e:
            raise CallError(f"{spec.name}: {e}") from None
    first = inputs[spec.inputs[0].name]
    present = tuple(a.name for a in spec.inputs if a.optional and inputs[a.name] is not None)
    return BoundCall(inputs, static, dims, str(first.dtype), present)

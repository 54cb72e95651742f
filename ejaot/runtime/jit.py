"""The function an artifact holds, and the same function compiled just in time.

`kernel_function` is the single definition of what an entry computes: build lowers it,
the JIT fallback compiles it, so the two can never disagree.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache

from ..kernel_spec import KernelSpec
from .binding import bind, freeze


def kernel_function(spec: KernelSpec, backend: str, present: tuple[str, ...], static: dict, config: dict):
    """fn(*arrays, valid_lens) -> tuple of outputs, arrays in spec order (optional ones
    only when present)."""
    impl = spec.backends[backend].load()
    names = [a.name for a in spec.inputs if not a.optional or a.name in present]
    all_names = spec.input_names

    def fn(*args):
        *arrays, valid_lens = args
        inputs = dict.fromkeys(all_names)
        inputs.update(zip(names, arrays))
        return tuple(impl(inputs, valid_lens, config=config, **static))
    fn.__name__ = f"{spec.name}_{backend}"
    return fn


def fallback_backend(spec: KernelSpec, platform: str) -> str:
    """The backend the JIT path uses on this platform: the platform's kernel when its
    toolchain is importable here, XLA otherwise."""
    if platform in ("cuda", "gpu") and "triton" in spec.backends and _importable("jax_triton"):
        return "triton"
    if platform == "tpu" and "pallas_tpu" in spec.backends:
        return "pallas_tpu"
    return "xla"


@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_jitted: dict = {}


def jitted(spec: KernelSpec, backend: str, present: tuple[str, ...], static: dict):
    """jax.jit of the kernel with the valid lengths taken from the shapes (no padding)."""
    key = (spec.name, backend, present, tuple((k, freeze(v)) for k, v in static.items()))
    fn = _jitted.get(key)
    if fn is None:
        import jax
        import jax.numpy as jnp
        # An empty config lets the implementation pick its heuristic from the traced shapes.
        inner = kernel_function(spec, backend, present, static, {})
        dims_of = {d: (i, j) for i, a in enumerate(a for a in spec.inputs if not a.optional or a.name in present)
                   for j, d in enumerate(a.dims) if isinstance(d, str)}

        def run(*arrays):
            valid = jnp.array([arrays[dims_of[d][0]].shape[dims_of[d][1]] for d in spec.valid_length_dims],
                              jnp.int32)
            return inner(*arrays, valid)
        fn = _jitted[key] = jax.jit(run)
    return fn


def call_jit(spec: KernelSpec, args: tuple, static: dict, backend: str | None = None):
    """The public (JIT) entry point of a kernel: bind, compile on first use, run."""
    import jax
    call = bind(spec, args, static)
    backend = backend or fallback_backend(spec, jax.default_backend())
    arrays = [call.inputs[a.name] for a in spec.inputs if not a.optional or a.name in call.present]
    outs = jitted(spec, backend, call.present, call.static)(*arrays)
    return spec.pack(outs, call.static)

"""The function an artifact holds, and the same function compiled just in time.

`kernel_function` is the single definition of what an entry computes: build lowers it,
the JIT fallback compiles it, so the two can never disagree.
"""
from __future__ import annotations


from ..spec import KernelSpec
from .binding import bind, freeze


def kernel_function(spec: KernelSpec, backend: str, present: tuple[str, ...], static: dict, config: dict,
                    dims: dict | None = None, dtype: str | None = None):
    """fn(*arrays, valid_lens) -> tuple of outputs, arrays in spec order (optional ones
    only when present): what an artifact holds. A kernel with tree arguments takes and
    returns their leaves, flat (the structure follows from `dims`, `static` and `dtype`)."""
    fn = _structured_function(spec, backend, present, static, config)
    if not spec.has_trees:
        return fn
    import jax
    chosen = [a for a in spec.inputs if not a.optional or a.name in present]
    in_tree = jax.tree_util.tree_structure(spec.structure(chosen, dims, static, dtype))

    def flat(*args):
        *leaves, valid_lens = args
        return tuple(jax.tree_util.tree_leaves(fn(*in_tree.unflatten(leaves), valid_lens)))
    flat.__name__ = fn.__name__
    return flat


def _structured_function(spec: KernelSpec, backend: str, present, static: dict, config: dict):
    """fn(*values, valid_lens) -> tuple of outputs, trees given and returned as trees."""
    impl = spec.backends[backend].load()
    names = [a.name for a in spec.inputs if not a.optional or a.name in present]
    all_names = spec.input_names

    def fn(*args):
        *arrays, valid_lens = args
        inputs = dict.fromkeys(all_names)
        inputs.update(zip(names, arrays))
        return tuple(impl(inputs, valid_lens, config=config, **static))
    fn.__name__ = f"{spec.name.replace('.', '_')}_{backend}"
    return fn


def fallback_backend(spec: KernelSpec, platform: str, dims=None, static=None) -> str:
    """The backend the JIT path uses on this platform: the kernel's most preferred backend
    there whose toolchain is usable here (ejaot.backends) and that runs these dims (None:
    whatever the dims), the reference backend otherwise."""
    from ..backends import backends_for, get_backend, reference_backend
    platform = {"gpu": "cuda"}.get(platform, platform)
    usable = [name for name in backends_for(platform) if get_backend(name).jit_usable()]
    return spec.choose_backend(usable, dims, static) or reference_backend()


_jitted: dict = {}


def jitted(spec: KernelSpec, backend: str, present: tuple[str, ...], static: dict, config: dict | None = None):
    """jax.jit of the kernel with the valid lengths taken from the shapes (no padding).
    config None: the implementation's heuristic for the traced shapes."""
    key = (spec.name, backend, present, tuple((k, freeze(v)) for k, v in static.items()),
           tuple(sorted((k, freeze(v)) for k, v in (config or {}).items())))
    fn = _jitted.get(key)
    if fn is None:
        import jax
        import jax.numpy as jnp
        # An empty config lets the implementation pick its heuristic from the traced shapes.
        inner = _structured_function(spec, backend, present, static, dict(config or {}))
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
    backend = backend or fallback_backend(spec, jax.default_backend(), call.dims, call.static)
    arrays = [call.inputs[a.name] for a in spec.inputs if not a.optional or a.name in call.present]
    outs = jitted(spec, backend, call.present, call.static)(*arrays)
    return spec.pack(outs, call.static)

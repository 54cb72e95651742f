"""A stored entry as a function inside JAX transformations (jit, grad, vmap, eval_shape).

Under any trace the entry's portable tier is inlined into the caller's program: the bucket
is chosen once, at trace time, and the pad and slice become part of the traced program, so
a compiled step does no Python work per call. Nothing here holds a value made by a trace:
the valid lengths are a NumPy constant, so one plan serves every trace of every function.

The artifact itself has no batching rule, so vmap maps the entry over the mapped axis
(jax.lax.map: one artifact call per element, in one program) instead of failing inside jax.
grad runs the entry's stored VJP where it was built with one (`vjp = true`: jax.export's
serialized VJP, the kernel's own backward, recomputing the forward inside it; mapped by
vmap, as in vmap of grad, the backward is the reference's VJP, since the stored one has
no batching rule); otherwise it
differentiates the kernel's JIT function (its custom VJP where it has one), recomputing the
forward there. Multi-chip entries are differentiated over meshes with Auto axes: with
Explicit axes jax's custom VJP rejects the cotangents' types, stored VJP or not.
"""
from __future__ import annotations

from typing import Callable


def eager() -> bool:
    """True when no JAX trace is active (no jit, grad, vmap or eval_shape around the call).
    Private API, pinned by tests/engine/test_traced_calls.py."""
    from jax._src.core import trace_state_clean
    return trace_state_clean()


def transformable(stored: Callable, reference: Callable, name: str, stored_vjp: bool = False) -> Callable:
    """stored(*arrays) -> tuple of outputs, batchable by map and differentiable: through
    `stored` itself when its artifact carries a VJP (stored_vjp), else through `reference`
    (the same kernel compiled by JAX, taking the same unpadded arrays)."""
    import jax

    @jax.custom_batching.custom_vmap
    def batchable(*arrays):
        return stored(*arrays)

    @batchable.def_vmap
    def _batched(axis_size, in_batched, *arrays):
        mapped = [a for a, b in zip(arrays, in_batched) if b]

        def one(xs):
            it = iter(xs)
            return stored(*[next(it) if b else a for a, b in zip(arrays, in_batched)])
        outs = jax.lax.map(one, mapped)
        return outs, tuple(True for _ in outs)

    @jax.custom_vjp
    def fn(*arrays):
        return batchable(*arrays)

    def fwd(*arrays):
        return batchable(*arrays), arrays

    def pull(f, n):
        def pullback(*flat):          # the primals, then the output cotangents
            _, vjp = jax.vjp(f, *flat[:n])
            return vjp(tuple(flat[n:]))
        return pullback

    def bwd(arrays, cotangents):
        if not stored_vjp:
            return pull(reference, len(arrays))(*arrays, *cotangents)
        # the stored VJP has no batching rule either: under vmap (vmap of grad, grad of
        # vmap) the reference's VJP is mapped instead, the same gradients by another kernel
        stored_pull = jax.custom_batching.custom_vmap(pull(stored, len(arrays)))

        @stored_pull.def_vmap
        def _batched_pull(axis_size, in_batched, *flat):
            outs = jax.vmap(pull(reference, len(arrays)), in_axes=[0 if b else None for b in in_batched],
                            axis_size=axis_size)(*flat)
            return outs, tuple(True for _ in outs)
        return stored_pull(*arrays, *cotangents)

    fn.defvjp(fwd, bwd)
    fn.__name__ = f"ejaot_{name}"
    return fn

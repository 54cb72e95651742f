"""Lowering a multi-chip entry: the kernel under shard_map, exported over an abstract mesh
(the portable tier: any devices of that shape can run it), and compiled for the target's
devices of that mesh (the compiled tier) where the target has them here.

JAX's own SPMD does the work: each device runs the kernel's function on its shard, with
the in/out partitions the kernel's `sharding.toml` groups give (ejaot/spec/mesh.py); nothing is
communicated between devices, since a split group keeps every computation it needs local.
"""
from __future__ import annotations

from ..spec.mesh import Layout, concrete_mesh


def _specs(entry):
    """(input partition specs incl. the replicated valid lengths, output partition specs)."""
    import jax
    from jax.sharding import PartitionSpec as P
    spec, layout = entry.spec, entry.layout
    args = [a for a in spec.inputs if not a.optional or a.name in entry.present]
    ins = [P(*layout.spec_of(a)) for a in args] + [P()]
    # how many outputs the function returns (attention's weights only on request)
    local = layout.local_dims(entry.dims)
    avals = [jax.ShapeDtypeStruct(s, jax.numpy.dtype(d))
             for _, s, d in spec.leaf_avals(spec.inputs, local, entry.static, entry.dtype, entry.present)]
    avals.append(jax.ShapeDtypeStruct((len(spec.valid_length_dims),), jax.numpy.int32))
    return ins, avals


def _out_specs(entry, fn, local_avals):
    import jax
    from jax.sharding import PartitionSpec as P
    spec, layout = entry.spec, entry.layout
    outs = jax.eval_shape(fn, *local_avals)
    specs = []
    for i, o in enumerate(outs):
        arg = spec.outputs[i] if i < len(spec.outputs) else None
        if arg is None or arg.is_tree or len(arg.dims) != len(o.shape):
            raise ValueError(f"{spec.name}: output {i} (shape {o.shape}) is not one of the declared "
                             "outputs, so its partition over the mesh is unknown")
        specs.append(P(*layout.spec_of(arg)))
    return tuple(specs)


def abstract_mesh(layout: Layout):
    from jax.sharding import AbstractMesh, AxisType
    names = tuple(a for a, _ in layout.axes)
    return AbstractMesh(tuple(n for _, n in layout.axes), names, axis_types=(AxisType.Auto,) * len(names))


def sharded(entry, fn):
    """jax.jit of `fn` split over the entry's abstract mesh, ready for jax.export."""
    import jax
    from jax.sharding import NamedSharding
    mesh = abstract_mesh(entry.layout)
    ins, local_avals = _specs(entry)
    outs = _out_specs(entry, fn, local_avals)
    # check_vma off: the kernels are written per device and communicate nothing
    body = jax.shard_map(fn, mesh=mesh, in_specs=tuple(ins), out_specs=outs, check_vma=False)
    body.__name__ = getattr(fn, "__name__", "kernel")
    return jax.jit(body, in_shardings=tuple(NamedSharding(mesh, s) for s in ins),
                   out_shardings=tuple(NamedSharding(mesh, s) for s in outs))


def compile_shardings(entry, exported, target, platform):
    """(input avals carrying their shardings, the mesh, None) for compiling the exported
    module on the target's devices, or (None, None, why not)."""
    import jax
    from jax.sharding import NamedSharding
    get = getattr(platform, "compile_devices", None)
    if get is None:
        return None, None, f"target {target.name} cannot compile multi-chip entries here"
    devices, why = get(target, entry.layout.devices)
    if devices is None:
        return None, None, why
    mesh = concrete_mesh(entry.layout, devices)
    ins = [NamedSharding(mesh, s) for s in _specs(entry)[0]]
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s) for a, s in zip(exported.in_avals, ins)]
    return avals, mesh, None

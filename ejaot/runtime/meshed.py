"""Serving multi-chip entries: which mesh entry a call's shardings ask for, and running it.

A call is routed by its arrays, never by a guess:
  * eager, every array on one device (or NumPy): the single-device entries, as always;
  * eager, arrays with NamedShardings over a mesh of several devices: the entries built for
    that mesh (axes and sizes) whose groups (heads, batch, ...) are split over the same axes
    as the arrays' (a group's dims read off whichever arrays split them; arrays left
    replicated are split to match). Anything else is a miss with its reason: the JIT
    fallback, which XLA partitions over the arrays' mesh, serves it;
  * under a trace: the mesh the traced arrays carry (jit over sharded arrays), else the
    mesh given to ejaot.load(mesh=...), else the ambient one (jax.set_mesh). With a mesh
    entry for it, that entry's portable tier is inlined (it carries its own shardings);
    without one, the single-device entries serve as before.
The exact / padded / fallback rules are the bundle's own: mesh entries of one layout form
their own bucket groups.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from ..spec.mesh import Layout, layout_of, shardable_groups
from .entry import StoredEntry


@dataclass(frozen=True)
class Placement:
    """Where an eager call's mesh entry runs: the arrays' mesh (None under a trace)."""
    mesh: object


class MeshedEntry(StoredEntry):
    """A mesh entry: its compiled tier is deserialized per concrete mesh (devices in the
    mesh's order), on first use for that mesh; its portable tier is the same for all."""

    def __init__(self, key, record, store, device, reject, mesh=None):
        super().__init__(key, record, store, device, reject)
        self.layout: Layout = layout_of(record)
        self._mesh = mesh if mesh is not None and mesh_axes(mesh) == self.layout.axes else None
        self._on_mesh: dict = {}

    def describe(self) -> str:
        return f"{super().describe()} {self.layout.describe()}"

    def compiled(self):
        """On the mesh given to ejaot.load (warm-up); None without one."""
        return self.compiled_on(self._mesh) if self._mesh is not None else None

    def compiled_on(self, mesh):
        if self.compiled_block:
            return None
        exe = self._on_mesh.get(mesh)
        if exe is None:
            with self._lock:
                exe = self._on_mesh.get(mesh)
                if exe is None and not self.compiled_block:
                    exe = self._on_mesh[mesh] = self._decode_compiled(mesh)
        return exe


def mesh_axes(mesh) -> tuple:
    """((axis, size), ...) of a Mesh or AbstractMesh."""
    return tuple((str(a), int(n)) for a, n in mesh.shape.items())


class MeshRouter:
    """The bundle's mesh side: files mesh entries under their layout, routes calls."""

    def __init__(self, mesh=None):
        self.mesh = mesh                       # ejaot.load(mesh=...): for traces and warm-up
        self._layouts: dict = {}               # single-device group key -> layout keys stored
        self._lock = threading.Lock()

    def entry(self, key, record, store, device, reject) -> StoredEntry:
        if "mesh" in record:
            return MeshedEntry(key, record, store, device, reject, self.mesh)
        return StoredEntry(key, record, store, device, reject)

    def group_key(self, gkey, record):
        """A mesh entry's bucket group: the single-device group's key plus its layout."""
        if "mesh" not in record:
            return gkey
        lkey = layout_of(record).key
        with self._lock:
            known = self._layouts.setdefault(gkey, [])
            if lkey not in known:
                known.append(lkey)
                known.sort()
        return (gkey, lkey)

    def trace_key(self, values) -> tuple:
        """What a traced call's routing depends on besides shapes: the ambient mesh and the
        traced arrays' shardings (part of the plan cache key, computed only at trace time)."""
        import jax
        out = [jax.sharding.get_abstract_mesh()]
        for v in values:
            if hasattr(v, "shape") and hasattr(v, "dtype"):
                try:
                    out.append(jax.typeof(v).sharding)
                except Exception:      # a value JAX cannot type: routed as unsharded
                    out.append(None)
        return tuple(out)

    def route(self, spec, call, tracing: bool, gkey, groups):
        """(group key to look up, Placement or None, miss reason or None)."""
        if tracing:
            return self._route_traced(spec, call, gkey)
        found = _call_layout(spec, call)
        if found is None:
            return gkey, None, None
        mesh, lkey, why = found
        if why is None and (gkey, lkey) not in groups:
            stored = [_show_layout(k) for k in self._layouts.get(gkey, [])]
            why = (f"no multi-chip entry for {_show_layout(lkey)}"
                   + (f"; stored: {'; '.join(stored)}" if stored else "; the store has none for this call"))
        return (gkey, lkey), Placement(mesh), why

    def _route_traced(self, spec, call, gkey):
        import jax
        mesh_key, groups = None, None
        for a in spec.inputs:
            x = call.inputs[a.name]
            if a.is_tree or x is None:
                continue
            try:
                s = jax.typeof(x).sharding
            except Exception:
                continue
            m = getattr(s, "mesh", None)
            if m is None or m.empty or m.size <= 1:
                continue
            mesh_key = mesh_axes(m)
            groups = _groups_of(spec, [(a, s.spec)], groups or {})
        if mesh_key is None:
            for m in (self.mesh, jax.sharding.get_abstract_mesh()):
                if m is not None and not m.empty and m.size > 1:
                    mesh_key = mesh_axes(m)
                    break
        if mesh_key is None:
            return gkey, None, None
        candidates = [k for k in self._layouts.get(gkey, []) if k[0] == mesh_key]
        if isinstance(groups, dict) and groups:    # the trace says how the arrays are split
            candidates = [k for k in candidates if k[1] == tuple(sorted(groups.items()))]
        if not candidates:                 # no mesh entry: the single-device ones, as before
            return gkey, None, None
        return (gkey, candidates[0]), None, None


def _call_layout(spec, call):
    """(concrete mesh, layout key, problem or None) of an eager call whose arrays are split
    over several devices; None when every array is on one device."""
    from jax.sharding import NamedSharding
    sharded, other = [], None
    for a in spec.inputs:
        x = call.inputs[a.name]
        if a.is_tree or x is None:
            continue
        s = getattr(x, "sharding", None)
        if s is None or len(s.device_set) <= 1:
            continue
        if not isinstance(s, NamedSharding):
            other = other or f"{a.name!r} is sharded by a {type(s).__name__}; mesh entries match NamedShardings"
            continue
        sharded.append((a, s))
    if not sharded and other is None:
        return None
    if not sharded:
        return None, ((), ()), other
    mesh = sharded[0][1].mesh
    lkey_axes = mesh_axes(mesh)
    for a, s in sharded[1:]:
        if s.mesh != mesh:
            return mesh, (lkey_axes, ()), (f"{a.name!r} is on mesh {mesh_axes(s.mesh)}, "
                                           f"{sharded[0][0].name!r} on {lkey_axes}: one call, one mesh")
    groups = _groups_of(spec, [(a, s.spec) for a, s in sharded], {})
    if isinstance(groups, str):
        return mesh, (lkey_axes, ()), groups
    return mesh, (lkey_axes, tuple(sorted(groups.items()))), other


def _groups_of(spec, arrays, groups):
    """{group: axis} the arrays' partition specs split, or a problem (str)."""
    if isinstance(groups, str):
        return groups
    group_of = {d: g for g, dims in shardable_groups(spec).items() for d in dims}
    for a, pspec in arrays:
        for d, e in zip(a.dims, tuple(pspec)):
            if e is None:
                continue
            axes = (e,) if isinstance(e, str) else tuple(e)
            if len(axes) != 1:
                return f"{a.name!r} splits {d} over several axes {axes}; mesh entries split a group over one"
            g = group_of.get(d) if isinstance(d, str) else None
            if g is None:
                return (f"{a.name!r} splits dimension {d} over {axes[0]!r}, which no group of "
                        f"{spec.name}'s sharding declaration holds")
            if groups.get(g, axes[0]) != axes[0]:
                return f"group {g} is split over both {groups[g]!r} and {axes[0]!r}"
            groups[g] = axes[0]
    return groups


def _show_layout(lkey) -> str:
    axes, shard = lkey
    mesh = ",".join(f"{a}={n}" for a, n in axes) or "?"
    return f"mesh {mesh} ({', '.join(f'{g} over {a}' for g, a in shard) or 'nothing split'})"


def place(runner, entry: MeshedEntry, spec, call, placement: Placement, valid):
    """runner(*arrays, valid) -> the same on the call's mesh: each array put on the sharding
    the entry was compiled for (a no-op when it is there already: an array left replicated is
    split locally), the valid lengths replicated (made once, here, outside any trace)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh, layout = placement.mesh, entry.layout
    args = [a for a in spec.inputs if not a.optional or a.name in call.present]
    shardings = [NamedSharding(mesh, P(*layout.spec_of(a))) for a in args]
    valid_on_mesh = jax.device_put(valid, NamedSharding(mesh, P()))

    def run(*leaves):
        arrays = [x if getattr(x, "sharding", None) == s else jax.device_put(x, s)
                  for x, s in zip(leaves[:-1], shardings)]
        return runner(*arrays, valid_on_mesh)
    return run


def verify_tiers(entry: MeshedEntry, spec, record, compiled_ok: bool, portable_ok: bool):
    """(tier, fn(*arrays, valid)) pairs that run a mesh entry on this process's first devices,
    arrays placed as the entry splits them (`ejaot verify`); or ([], why not)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from ..spec.mesh import concrete_mesh
    layout = entry.layout
    devices = jax.local_devices()
    if len(devices) < layout.devices:
        return [], (f"a mesh of {layout.devices} devices; this process has {len(devices)} "
                    f"(XLA_FLAGS=--xla_force_host_platform_device_count={layout.devices} on a CPU)")
    mesh = concrete_mesh(layout, devices)
    args = [a for a in spec.inputs if not a.optional or a.name in record["present"]]
    shardings = [NamedSharding(mesh, P(*layout.spec_of(a))) for a in args] + [NamedSharding(mesh, P())]

    def placed(fn):
        return None if fn is None else (
            lambda *xs: fn(*(jax.device_put(x, s) for x, s in zip(xs, shardings))))
    return [("compiled", placed(entry.compiled_on(mesh) if compiled_ok else None)),
            ("portable", placed(entry.portable() if portable_ok else None))], None

"""How one call signature is served, decided once: the exact bucket; else the cheapest
stored bucket that covers the call along the kernel's paddable dimensions (pad, run,
slice: the kernel masks the padding, so the result equals the unpadded one); else the JIT
fallback, which still computes the right answer and records the miss (strict mode raises
instead). The Plan it returns is what the bundle's hot path calls.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import numpy as np

from ..artifact.binding import freeze, split_args
from ..artifact.function import fallback_backend, jitted
from ..errors import BucketMissError
from ..spec import KernelSpec
from ..spec.registry import module_of
from . import meshed
from .catalog import Catalog, bucket_key
from .entry import StoredEntry
from .misslog import MissLog
from .traced import transformable

log = logging.getLogger("ejaot")


class Plan:
    """How one call signature is served. Built once, then called on the hot path."""
    __slots__ = ("path", "tier", "tier_key", "run", "entry")

    def __init__(self, path: str, tier: str, run: Callable, entry: StoredEntry | None = None):
        self.path, self.tier, self.run, self.entry = path, tier, run, entry
        self.tier_key = "tier:" + tier          # the stats counter, built once


class Dispatcher:
    def __init__(self, catalog: Catalog, meshes, device, platform: str, strict: bool, misses: MissLog):
        self.catalog, self._meshes = catalog, meshes
        self.device, self.platform, self.strict, self.misses = device, platform, strict, misses
        # kernel -> the backends its fallbacks run (a backend may take only some shapes);
        # plans are made on callers' threads while stats() may read it
        self._fallback_backends: dict[str, set[str]] = {}
        self._fallback_lock = threading.Lock()

    def plan_for(self, spec: KernelSpec, call, tracing: bool) -> Plan:
        gkey, want = bucket_key(spec, call.dtype, call.present, call.static, call.dims)
        # arrays split over a mesh: that mesh's entries (ejaot/runtime/meshed.py)
        gkey, placement, mesh_miss = self._meshes.route(spec, call, tracing, gkey, self.catalog.groups)
        group = self.catalog.groups.get(gkey)
        dtypes_ok = all(str(call.inputs[n].dtype) == d for n, _, d in _artifact_inputs(spec, call)
                        if d is not None)       # a tree's leaves were checked by bind
        # eager arrays committed to another device than the bundle's: the compiled tier is
        # loaded for the bundle's device, so the portable tier runs where the arrays are
        portable_only = tracing or (placement is None and self._elsewhere(call))
        if group is not None and dtypes_ok:
            for pdims, entry in group.members:
                if not all(w <= p for w, p in zip(want, pdims)):
                    continue
                runner, tier = self._runner(entry, portable_only, placement)
                if runner is None:
                    continue
                path = "exact" if pdims == want else "padded"
                run = self._make_run(spec, call, entry, runner, path, portable_only, placement)
                plan = Plan(path, tier, run, entry)
                if tier == "compiled":
                    plan.run = self._guarded(spec, call, entry, run, plan)
                return plan
        reason = mesh_miss or ("no bucket covers this shape" if group is not None
                               else "no stored entry for this kernel, dtype, inputs and static arguments")
        if self.strict:
            raise BucketMissError(self._miss_message(spec, call, group, reason))
        dtypes = {a.name: str(call.inputs[a.name].dtype) for a in spec.inputs
                  if not a.is_tree and call.inputs[a.name] is not None}
        # one miss line per kernel, shape, dtypes and statics: not per trace or per argument
        # layout (positional or keyword), which the bundle's plan key tells apart
        what = repr((spec.name, sorted(call.dims.items()), call.dtype, sorted(call.present),
                     sorted(call.static.items()), sorted(dtypes.items()), reason))
        hit = self.misses.record(what, spec.name, call.dims, call.dtype, call.present, call.static, reason,
                                 dtypes, module=module_of(spec.name))
        if self.catalog.store_problem is None:   # a store-wide problem was said once at load
            log.warning("%s: %s (%s); served by the JIT fallback, recorded in the miss log",
                        spec.name, reason, ", ".join(f"{k}={v}" for k, v in call.dims.items()))
        run = self._make_fallback(spec, call)
        if hit is not None:              # the miss log counts this signature's calls in memory
            fallback = run

            def run(args, kwargs):
                hit()
                return fallback(args, kwargs)
        return Plan("fallback", "jit", run)

    def _elsewhere(self, call) -> bool:
        """Whether an input array is committed to a device other than the bundle's."""
        for x in call.inputs.values():
            if getattr(x, "committed", False) and getattr(x, "devices", None) is not None \
                    and x.devices() != {self.device}:
                return True
        return False

    def _guarded(self, spec: KernelSpec, call, entry: StoredEntry, run, plan: Plan):
        """run, except that an executable the runtime refuses for its arguments
        (INVALID_ARGUMENT: a record that misstates it, since its checks are against the
        record itself) blocks the entry's compiled tier, is reported once, and the call and
        the ones after it are served by the JIT fallback, `plan` then counting them as
        such in stats(). Other runtime errors (out of memory, say) are the caller's, as
        before."""
        import jax
        fallback = []

        def guarded(args, kwargs):
            if fallback:
                return fallback[0](args, kwargs)
            try:
                return run(args, kwargs)
            except jax.errors.JaxRuntimeError as e:
                if "INVALID_ARGUMENT" not in str(e):
                    raise
                entry._fail("compiled", f"the executable failed to run: {str(e).splitlines()[0][:300]}")
                log.warning("%s: entry %s: %s; served by the JIT fallback", spec.name, entry.key[:12],
                            entry.compiled_block)
                fallback.append(self._make_fallback(spec, call))
                plan.path, plan.tier, plan.tier_key = "fallback", "jit", "tier:jit"
                return fallback[0](args, kwargs)
        return guarded

    def _runner(self, entry: StoredEntry, tracing: bool, placement=None):
        if not tracing:
            exe = entry.compiled() if placement is None else entry.compiled_on(placement.mesh)
            if exe is not None:
                return exe, "compiled"
        fn = entry.portable()
        return (fn, "portable") if fn is not None else (None, None)

    def _make_run(self, spec: KernelSpec, call, entry: StoredEntry, runner, path: str, tracing: bool,
                  placement=None):
        import jax
        import jax.numpy as jnp
        names = [n for n, _, _ in _artifact_inputs(spec, call)]
        static = call.static
        valid = np.array([call.dims[d] for d in spec.valid_length_dims], np.int32)
        if placement is not None:         # an eager call on a mesh: arrays onto the entry's shardings
            runner = meshed.place(runner, entry, spec, call, placement, valid)
        bucket = {**call.dims, **entry.record["dims"]}
        pads = []                         # per artifact input leaf: None or (widths, value)
        for a in spec.inputs:
            if a.name not in names:
                continue
            if a.is_tree:
                pads += [None] * len(jax.tree_util.tree_leaves(call.inputs[a.name]))
                continue
            real, padded = spec.shape_of(a, call.dims), spec.shape_of(a, bucket)
            pads.append(None if real == padded else
                        ([(0, p - r) for r, p in zip(real, padded)], a.pad_value))
        n_out = len(entry.record["outputs"])
        if spec.has_trees:
            # flat artifact results -> the kernel's outputs, trees rebuilt
            out_tree = jax.tree_util.tree_structure(spec.structure(spec.outputs, call.dims, static, call.dtype))
            in_tree = jax.tree_util.tree_structure([call.inputs[n] for n in names])
            slices = [None] * n_out
            for i, o in enumerate(o for o in spec.outputs if not o.is_tree):
                if spec.shape_of(o, call.dims) != spec.shape_of(o, bucket):
                    slices[_leaf_index(spec, o, out_tree)] = tuple(slice(0, n) for n in spec.shape_of(o, call.dims))
            flat_in, unflat_out = jax.tree_util.tree_leaves, out_tree.unflatten
        else:
            slices = [None if spec.shape_of(o, call.dims) == spec.shape_of(o, bucket)
                      else tuple(slice(0, n) for n in spec.shape_of(o, call.dims))
                      for o in spec.outputs[:n_out]]
            in_tree, flat_in, unflat_out = None, list, tuple
        arrays_of = _arrays_getter(spec, names)

        def stored(*leaves, valid_arg=valid):
            if path == "padded":
                leaves = [x if p is None else jnp.pad(x, p[0], constant_values=p[1])
                          for x, p in zip(leaves, pads)]
            outs = runner(*leaves, valid_arg)
            return tuple(o if s is None else o[s] for o, s in zip(outs, slices))

        if tracing:
            # A NumPy constant, not a device array: it belongs to no trace.
            _, reference = self._reference(spec, call)
            if in_tree is not None:
                plain = reference

                def reference(*leaves):
                    return tuple(jax.tree_util.tree_leaves(plain(*in_tree.unflatten(leaves))))
            # grad runs the stored VJP where the entry has one, else differentiates the JIT function
            fn = transformable(stored, reference, spec.name, stored_vjp=has_stored_vjp(entry.record))

            def run(args, kwargs):
                return spec.pack(tuple(unflat_out(fn(*flat_in(arrays_of(args, kwargs))))), static)
            return run

        # Eager: the valid lengths live on the device once, made outside any trace.
        valid_arg = jax.device_put(valid, self.device)

        def run(args, kwargs):
            outs = stored(*flat_in(arrays_of(args, kwargs)), valid_arg=valid_arg)
            return spec.pack(tuple(unflat_out(outs)), static)
        return run

    def _reference(self, spec: KernelSpec, call):
        """(backend, the kernel compiled by JAX on this platform with it): the fallback,
        and what grad differentiates."""
        backend = fallback_backend(spec, self.platform, call.dims, call.static)
        return backend, jitted(spec, backend, call.present, call.static)

    def _make_fallback(self, spec: KernelSpec, call):
        backend, fn = self._reference(spec, call)
        with self._fallback_lock:
            self._fallback_backends.setdefault(spec.name, set()).add(backend)
        arrays_of = _arrays_getter(spec, [n for n, _, _ in _artifact_inputs(spec, call)])
        static = call.static

        def run(args, kwargs):
            return spec.pack(fn(*arrays_of(args, kwargs)), static)
        return run

    def fallback_backends(self) -> dict[str, list[str]]:
        """kernel -> the sorted backends its fallbacks have run, as of now."""
        with self._fallback_lock:
            return {k: sorted(v) for k, v in self._fallback_backends.items()}

    def _miss_message(self, spec, call, group, reason) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in call.dims.items())
        msg = f"{spec.name}: {reason} (call: {call.dtype}, {dims}{_statics(call.static, call.present)})"
        if self.catalog.store_problem:
            return msg + f"; the store cannot serve here: {self.catalog.store_problem}"
        if group is not None:
            near = sorted(group.members, key=lambda m: sum(
                abs(np.log2(max(p, 1)) - np.log2(max(w, 1)))
                for p, w in zip(m[0], (call.dims.get(d, 0) for d in group.paddable))))[:3]
            msg += "; nearest buckets: " + "; ".join(
                ", ".join(f"{d}={v}" for d, v in zip(group.paddable, p)) for p, _ in near)
            return msg
        same = [e.describe() + _statics(e.record.get("static") or {}, e.record.get("present") or ())
                for e in self.catalog.all_entries().values() if e.kernel == spec.name][:3]
        if same:
            return msg + "; stored entries of this kernel: " + "; ".join(same)
        rejected = self.catalog.rejections_of(spec.name)
        if rejected:
            return msg + f"; the store's {len(rejected)} entries of it were rejected, e.g.: {rejected[0]['reason']}"
        return msg + "; the store has no entries for it"


def has_stored_vjp(record: dict) -> bool:
    """The entry's portable tier holds its VJP (built with `vjp = true`)."""
    return record["exported"].get("vjp_order", 0) >= 1


def signature_part(v):
    """One argument's part of a call signature: an array's shape and dtype, a static's
    value, a tree's structure and leaves; a callable (attention's init_bias) only as
    "given", so a fresh lambda per call does not grow the plan cache. A NumPy scalar
    (1 / np.sqrt(d) is one), a dtype and a scalar type (np.float32, jnp.bfloat16: callable)
    count by value: they are static arguments, and two values must not share a plan."""
    if isinstance(v, np.generic):
        return ("<scalar>", v.dtype, v.item())
    if isinstance(v, (type, np.dtype)):      # np.float32 (a class with shape and dtype attributes)
        return ("<type>", v)
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        # the sharding too: the same shapes split over a mesh are served by other entries;
        # and whether it is committed (to a device: _elsewhere)
        return (tuple(v.shape), v.dtype, getattr(v, "sharding", None), getattr(v, "committed", None))
    if callable(v):
        return ("<callable>",)
    if isinstance(v, (dict, list, tuple)) and v and not isinstance(v, str):
        import jax
        leaves, treedef = jax.tree_util.tree_flatten(v)
        return (treedef, tuple(signature_part(x) for x in leaves))
    return freeze(v)


def _statics(static: dict, present) -> str:
    """The static arguments and optional inputs a miss message shows beside the dims, which
    alone do not tell a call from a stored entry that differs only there."""
    parts = [f"{k}={v}" for k, v in sorted(static.items()) if v is not None]
    parts += [f"with {n}" for n in sorted(present)]
    return (", " + ", ".join(parts)) if parts else ""


def _arrays_getter(spec: KernelSpec, names: list[str]):
    """(args, kwargs) -> the arrays an artifact or the fallback takes, in order, after the
    kernel's call-time hook (hot path: no binding checks, the plan already did them)."""
    prepare = spec.prepare_call

    def arrays_of(args, kwargs):
        inputs, extra = split_args(spec, args, kwargs)
        if prepare is not None:
            prepare(inputs, extra)
        return [inputs[n] for n in names]
    return arrays_of


def _artifact_inputs(spec: KernelSpec, call):
    """(name, shape, dtype) of the arguments the artifact takes, in order (dtype None for a
    tree, whose leaves the artifact takes flat)."""
    return [(a.name, None, None if a.is_tree else spec.dtype_of(a, call.dtype)) for a in spec.inputs
            if not a.optional or a.name in call.present]


def _leaf_index(spec: KernelSpec, arg, out_tree) -> int:
    """Position of array output `arg` among the flat outputs."""
    import jax
    marked = out_tree.unflatten(range(out_tree.num_leaves))
    return next(m for o, m in zip(spec.outputs, marked) if o is arg)

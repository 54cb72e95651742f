"""Lowering one entry: the portable tier (jax.export), the kernel binaries the target's
backend produces, and the compiled tier where this host can compile for the target."""
from __future__ import annotations

import time

from .plan import EntrySpec
from ..artifact import codec
from ..artifact.function import kernel_function
from ..store.filestore import FileStore
from ..backends import get_backend
from ..targets import get_target, lowering_for


def _avals(entry: EntrySpec, sharding=None):
    import jax
    import jax.numpy as jnp
    kw = {"sharding": sharding} if sharding is not None else {}
    avals = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), **kw) for _, shape, dtype in entry.input_avals()]
    avals.append(jax.ShapeDtypeStruct((len(entry.spec.valid_length_dims),), jnp.int32, **kw))
    return avals


def lower_entry(entry: EntrySpec) -> tuple[dict[str, bytes], dict]:
    """Returns (payloads by kind, metadata for the record)."""
    from jax._src import config
    # Python tracebacks in MLIR locations differ with the caller (CLI, worker, test), and
    # the kernels' file paths with where the sources are installed (two CI runners' shards
    # of one manifest must merge): without the tracebacks, and with file names only, the
    # artifact's bytes depend on the entry alone.
    with config.traceback_in_locations_limit(0), config.include_full_tracebacks_in_locations(False), \
            config.hlo_source_file_canonicalization_regex(r".*/"):
        return _lower_entry(entry)


def _lower_entry(entry: EntrySpec) -> tuple[dict[str, bytes], dict]:
    import jax

    target = get_target(entry.target)
    platform = target.platform_module
    spec = entry.spec
    fn = kernel_function(spec, entry.backend, entry.present, entry.static, entry.config,
                         entry.dims, entry.dtype)
    t0 = time.perf_counter()
    # any of the target's backends may appear: a model's step inlines the kernels it calls
    checks = [c for b in target.backends for c in get_backend(b).disabled_checks()]
    if entry.layout is not None:      # multi-chip: the kernel per device, over an abstract mesh
        from . import lower_mesh
        jitted = lower_mesh.sharded(entry, fn)
    else:
        jitted = jax.jit(fn)
    with lowering_for(target):
        exported = jax.export.export(jitted, platforms=(target.platform,),
                                     disabled_checks=checks)(*_avals(entry))
        # vjp_order=1 exports the VJP beside the function (the kernel's own backward, e.g. a
        # custom_vjp's Triton kernels): jax.grad of the deserialized call runs it
        serialized = exported.serialize(vjp_order=1 if entry.vjp else 0)
    payloads = {"exported": bytes(serialized)}
    meta = {
        # every array the artifact takes; a tree's leaves named by their key paths
        "inputs": [[n, list(s), d] for n, s, d in entry.input_avals()],
        "outputs": [[list(a.shape), str(a.dtype)] for a in exported.out_avals],
        "exported": {"calling_convention_version": exported.calling_convention_version,
                     "platforms": list(exported.platforms), **({"vjp_order": 1} if entry.vjp else {})},
        "timings": {"export_s": round(time.perf_counter() - t0, 4)},
        "notes": [],
    }
    donate = _donated_leaves(entry)
    if donate:    # the compiled tier, here or by `ejaot finalize`, reuses these inputs' buffers
        meta["donated"] = list(donate)
    binaries, binary_meta = platform.kernel_binaries(exported, exported.mlir_module(), entry)
    payloads.update(binaries)
    meta.update(binary_meta)

    if entry.layout is not None:
        from . import lower_mesh
        avals, mesh, why_not = lower_mesh.compile_shardings(entry, exported, target, platform)
        device = None if mesh is None else mesh.devices.flat[0]
    else:
        device, why_not = platform.compile_device(target)
        if device is not None:
            avals = _avals(entry, jax.sharding.SingleDeviceSharding(device))
    if device is None:
        meta["notes"].append(f"no compiled tier: {why_not}")
        return payloads, meta
    t0 = time.perf_counter()
    compiled = jax.jit(exported.call, donate_argnums=donate).lower(*avals).compile()
    meta["timings"]["compile_s"] = round(time.perf_counter() - t0, 4)
    try:
        raw, exe_meta = codec.encode(compiled)
    except codec.Unsupported as e:
        meta["notes"].append(f"no compiled tier: {e}")
        return payloads, meta
    payloads["executable"] = raw
    meta["executable"] = {**exe_meta, **platform.device_identity(target, device)}
    if entry.layout is not None and hasattr(platform, "mesh_identity"):
        meta["executable"].update(platform.mesh_identity(target, entry.layout.devices))
    meta["analysis"] = _analysis(compiled)
    if hasattr(platform, "roofline"):
        meta["roofline"] = platform.roofline(meta["analysis"], target)
    return payloads, meta


def call_inlined(spec, args: tuple, static: dict, target):
    """A kernel called inside an entry being lowered for `target` (a model's step calling
    ejaot.ops): its preferred backend there, with the config its own entry would get at
    these shapes (tuned for the target, else the heuristic), inlined into the entry."""
    from .. import toolchain as tc
    from . import tuned
    from ..artifact.binding import bind
    from ..artifact.function import jitted
    call = bind(spec, args, static)
    backend = spec.choose_backend(target.backends, call.dims, call.static)
    if backend is None:
        raise ValueError(f"{spec.name}: no backend for {target.name} runs {dict(call.dims)} "
                         f"(has {sorted(spec.backends)})")
    config, _ = tuned.choose_config(spec, backend, target, call.dims, call.dtype, call.static,
                                     tc.toolchain(target.platform, backend))
    arrays = [call.inputs[a.name] for a in spec.inputs if not a.optional or a.name in call.present]
    return spec.pack(jitted(spec, backend, call.present, call.static, config)(*arrays), call.static)


def _donated_leaves(entry: EntrySpec) -> tuple[int, ...]:
    """Positions of the artifact's inputs that belong to a donated tree (a KV cache)."""
    spec = entry.spec
    donated = {a.name for a in spec.inputs if a.is_tree and a.donate}
    if not donated:
        return ()
    names = [n for n, _, _ in entry.input_avals()]
    return tuple(i for i, n in enumerate(names) if n.split("[", 1)[0] in donated)


def _analysis(compiled) -> dict:
    out = {}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out["flops"] = float(cost.get("flops", 0.0))
        out["bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
    except Exception:  # analyses are optional extras; not every backend provides them
        pass
    try:
        mem = compiled.memory_analysis()
        out["memory"] = {k: int(getattr(mem, k)) for k in (
            "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes") if hasattr(mem, k)}
    except Exception:
        pass
    return out


def lower_and_store(entry: EntrySpec, store_root: str) -> dict:
    """Lowers one entry and writes its blobs; returns the index record (not yet committed)."""
    payloads, meta = lower_entry(entry)
    store = FileStore(store_root)
    refs = {kind: store.put_blob(data) for kind, data in payloads.items()}
    return make_record(entry, refs, meta)


def make_record(entry: EntrySpec, payload_refs: dict, meta: dict) -> dict:
    import platform as _platform
    from ..artifact.record import RECORD_FORMAT
    return {
        "key": entry.key, "format": RECORD_FORMAT,
        **{k: v for k, v in entry.identity().items()},
        "config_source": entry.config_source,
        "valid_length_dims": list(entry.spec.valid_length_dims),
        "payloads": payload_refs,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_host": _platform.node(),
        **meta,
    }

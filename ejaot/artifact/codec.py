"""A compiled executable as raw bytes plus msgpack metadata, and back: no pickle.

jax's own `serialize_executable` pickles an UnloadedMeshExecutable. For a one-device
kernel every field of that object is describable as data: the raw executable bytes
(PJRT's own serialization), input/output avals, single-device shardings, the name and
`kept_var_idx`. We store those and rebuild the object directly. This reaches into jax
internals (pinned by tests/engine/test_codec.py); an entry the codec cannot describe gets no
compiled tier rather than a pickle.

A multi-chip executable (a mesh entry) is described the same way, its shardings as the
mesh's axes plus one partition spec per input and output: decode rebuilds them on the
serving mesh's devices, in the mesh's order (the order it was compiled for).
"""
from __future__ import annotations

import numpy as np

CODEC_VERSION = 1


class Unsupported(Exception):
    """This compiled object cannot be described without pickle."""


def encode(compiled) -> tuple[bytes, dict]:
    unloaded = getattr(compiled._executable, "_unloaded_executable", None)
    if unloaded is None:
        raise Unsupported("compilation does not support serialization")
    if unloaded.ordered_effects or unloaded.unordered_effects or unloaded.host_callbacks:
        raise Unsupported("executable has effects or host callbacks")
    if getattr(unloaded, "mut", None) is not None or compiled._params.const_args:
        raise Unsupported("executable closes over constants or mutable state")
    meshed = _mesh_meta(unloaded) if len(unloaded.device_list) != 1 else {}
    xla_exec = unloaded.xla_executable
    raw = xla_exec.serialize() if not hasattr(xla_exec, "client") else xla_exec.client.serialize_executable(xla_exec)
    meta = {
        "codec": CODEC_VERSION,
        "name": unloaded.name,
        "in_avals": [_aval(a) for a in unloaded.input_avals],
        "out_avals": [_aval(a) for a in unloaded.output_avals],
        "kept_var_idx": sorted(unloaded.kept_var_idx),
        **meshed,
    }
    return bytes(raw), meta


def _mesh_meta(unloaded) -> dict:
    from jax.sharding import NamedSharding
    shardings = list(unloaded.input_shardings) + list(unloaded.output_shardings)
    if not all(isinstance(s, NamedSharding) for s in shardings):
        raise Unsupported("a multi-device executable whose shardings are not all named shardings")
    mesh = shardings[0].mesh
    if any(s.mesh != mesh for s in shardings) or tuple(mesh.devices.flat) != tuple(unloaded.device_list):
        raise Unsupported("a multi-device executable over more than one mesh")
    return {"mesh": [[str(a), int(n)] for a, n in mesh.shape.items()],
            "in_specs": [_spec(s.spec) for s in unloaded.input_shardings],
            "out_specs": [_spec(s.spec) for s in unloaded.output_shardings]}


def _spec(p) -> list:
    """A PartitionSpec as data: per dimension None, an axis name, or a list of them."""
    return [None if e is None else e if isinstance(e, str) else [str(x) for x in e] for e in p]


def _partition(spec: list):
    from jax.sharding import PartitionSpec
    return PartitionSpec(*(tuple(e) if isinstance(e, list) else e for e in spec))


def _aval(a) -> list:
    return [list(a.shape), str(a.dtype)]


def decode(raw: bytes, meta: dict, device):
    """Rebuilds a callable jax.stages.Compiled on `device` from verified bytes; for a
    multi-chip executable (meta["mesh"]), `device` is the jax.sharding.Mesh to run on."""
    import jax
    from jax._src import core, sharding_impls, stages
    from jax._src.interpreters import pxla
    from jax._src.lib import xla_client as xc

    if meta.get("codec") != CODEC_VERSION:
        raise Unsupported(f"executable codec {meta.get('codec')!r}, this ejaot reads {CODEC_VERSION}")
    in_avals = [core.ShapedArray(tuple(s), np.dtype(_dtype(d))) for s, d in meta["in_avals"]]
    out_avals = [core.ShapedArray(tuple(s), np.dtype(_dtype(d))) for s, d in meta["out_avals"]]
    if "mesh" in meta:
        mesh = device
        if [[str(a), int(n)] for a, n in getattr(mesh, "shape", {}).items()] != meta["mesh"]:
            raise Unsupported(f"compiled for mesh {meta['mesh']}, asked to run on {getattr(mesh, 'shape', mesh)}")
        if len(meta["in_specs"]) != len(in_avals) or len(meta["out_specs"]) != len(out_avals):
            raise Unsupported("executable shardings do not match its signature")
        devices = xc.DeviceList(tuple(mesh.devices.flat))
        client = mesh.devices.flat[0].client
        in_shardings = [sharding_impls.NamedSharding(mesh, _partition(s)) for s in meta["in_specs"]]
        out_shardings = [sharding_impls.NamedSharding(mesh, _partition(s)) for s in meta["out_specs"]]
    else:
        client = device.client
        devices = xc.DeviceList((device,))
        sharding = sharding_impls.SingleDeviceSharding(device)
        in_shardings, out_shardings = [sharding] * len(in_avals), [sharding] * len(out_avals)
    loaded = client.deserialize_executable(raw, executable_devices=devices)
    unloaded = pxla.UnloadedMeshExecutable(
        xla_executable=loaded, device_list=devices, backend=client,
        input_avals=in_avals, input_shardings=in_shardings,
        output_avals=out_avals, output_shardings=out_shardings,
        committed="mesh" in meta, name=str(meta["name"]), unordered_effects=[], ordered_effects=[],
        keepalive=[], host_callbacks=[], kept_var_idx=set(meta["kept_var_idx"]), mut=None,
        xla_in_layouts=[None] * len(in_avals), dispatch_in_layouts=[None] * len(in_avals),
        xla_out_layouts=[None] * len(out_avals), all_args_info=None, pgle_profiler=None)
    args_info = (tuple(stages.ArgInfo(a, False) for a in in_avals), {})
    out_tree = jax.tree_util.tree_structure(tuple(range(len(out_avals))))
    return stages.Compiled(unloaded.load(), [], args_info, out_tree, no_kwargs=True)


def _dtype(name: str):
    import ml_dtypes
    return getattr(ml_dtypes, name) if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2") else name

"""`ejaot finalize`: add the compiled tier for this host's device to a store's entries.

Run on a host with the target's device (e.g. an H100 for gpu-sm90). Needs only jax: the
portable tier already contains the kernels (PTX for Triton), so neither triton nor
jax-triton is imported. Each entry's portable bytes are verified before deserializing.
"""
from __future__ import annotations

import time

from ..errors import StoreError
from ..artifact import codec, compat
from ..store.filestore import FileStore
from ..targets import device_problem, get_target


def finalize_store(root, echo=print, signer=None, force=False, kernels=None) -> dict:
    """kernels: only entries of these kernels (None: all)."""
    import jax
    store = FileStore(root)
    index = store.read_index()
    device = jax.local_devices()[0]
    platform = compat.local_platform(device)
    # the same identity the build records, so compat.compiled_problem accepts what this writes
    try:
        target = get_target(index["target"])
    except KeyError as e:
        raise StoreError(f"{root}: the store's {e.args[0]}") from None
    unfit = device_problem(target, device)     # a GPU the entries' kernels do not run on
    identity = target.platform_module.device_identity(target, device)
    from ..spec.registry import trust_modules      # an operator's tool: the store's model packages may load
    trust_modules({r.get("module") for r in index["entries"].values() if isinstance(r, dict)} - {None})
    counts = {"compiled": 0, "skipped": 0, "failed": 0, "refused": 0}
    for key, record in index["entries"].items():
        if kernels is not None and isinstance(record, dict) and record.get("kernel") not in kernels:
            continue
        label = f"{key[:12]} {record.get('kernel')} {record.get('dtype')} {record.get('dims')}"
        problem = compat.record_problem(key, record) or compat.entry_problem(record, platform)
        if problem is None and unfit and compat.holds_gpu_kernels(record):
            problem = f"{unfit}; finalize it on a GPU it runs on"
        if problem:
            echo(f"skip {label}: {problem}")
            counts["skipped"] += 1
            continue
        if "mesh" in record:     # compiled over a mesh of devices, which finalize does not build
            echo(f"skip {label}: a multi-chip entry (mesh {record['mesh']}); its portable tier serves here")
            counts["skipped"] += 1
            continue
        if not force and compat.compiled_problem(record, device) is None:
            damaged = _damaged_executable(store, record)
            if damaged is None:
                counts["skipped"] += 1
                continue
            echo(f"recompiling {label}: {damaged}")
        if signer is None and "signature" in record:
            # a changed record without a new signature would be refused under trusted_keys
            echo(f"REFUSED {label}: the entry is signed; finalize changes it, so give --sign KEY "
                 "to sign the new record")
            counts["refused"] += 1
            continue
        unsigned_by_me = signer.own_signature_problem(record) if signer and "signature" in record else None
        if unsigned_by_me:
            # re-signing would vouch for a record this key's signature does not cover
            echo(f"REFUSED {label}: {unsigned_by_me}; finalize re-signs only records this key "
                 "signed as they are")
            counts["refused"] += 1
            continue
        try:
            ref = record["payloads"]["exported"]
            exported = jax.export.deserialize(bytearray(store.read_blob(ref["sha256"], ref["size"])))
            sharding = jax.sharding.SingleDeviceSharding(device)
            avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in exported.in_avals]
            t0 = time.perf_counter()
            donate = record.get("donated", [])
            if not (isinstance(donate, list) and all(type(i) is int and 0 <= i < len(avals) for i in donate)):
                raise StoreError(f"record field 'donated' is malformed: {donate!r}")
            compiled = jax.jit(exported.call, donate_argnums=tuple(donate)).lower(*avals).compile()
            seconds = time.perf_counter() - t0
            raw, meta = codec.encode(compiled)
        except Exception as e:  # report per entry, keep going (EjaotError, codec.Unsupported, XLA's)
            echo(f"FAIL {label}: {type(e).__name__}: {e}")
            counts["failed"] += 1
            continue
        new = dict(record)
        new["payloads"] = {**record["payloads"], "executable": store.put_blob(raw)}
        new["executable"] = {**meta, **identity, "finalized_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        new["timings"] = {**record.get("timings", {}), "compile_s": round(seconds, 4)}
        new.pop("signature", None)
        new.pop("signer", None)
        if signer is not None:
            new = signer.sign(new)
        store.commit(index["target"], {key: new})
        counts["compiled"] += 1
        echo(f"ok   {label}: compiled in {seconds:.2f}s ({len(raw)} bytes)")
    return counts


def _damaged_executable(store: FileStore, record: dict) -> str | None:
    """Why the entry's stored executable cannot serve (its blob missing or not matching its
    sha256), or None: compat.compiled_problem reads only the record."""
    ref = record.get("payloads", {}).get("executable")
    if not isinstance(ref, dict):
        return "the record has no executable payload"
    try:
        store.read_blob(ref.get("sha256"), ref.get("size"))
    except (StoreError, FileNotFoundError) as e:
        return str(e) or "its executable blob is missing"
    return None

"""`ejaot inspect`: one entry, readable."""
from __future__ import annotations

import json

from .store.filestore import FileStore


def describe_entry(store: FileStore, record: dict, hlo: bool = False) -> str:
    lines = [f"key          {record.get('key')}"]
    for field in ("kernel", "backend", "target", "platform", "dtype", "present", "dims", "static",
                  "config", "config_source", "source_hash", "toolchain", "built_at", "build_host"):
        if field in record:
            lines.append(f"{field:<12} {json.dumps(record[field], sort_keys=True)}")
    lines.append("inputs")
    lines += [f"  {n:<16} {s} {d}" for n, s, d in record.get("inputs", [])]
    lines.append("outputs")
    lines += [f"  {s} {d}" for s, d in record.get("outputs", [])]
    lines.append("payloads")
    for kind, ref in record.get("payloads", {}).items():
        lines.append(f"  {kind:<12} {ref.get('size'):>10} bytes  sha256 {ref.get('sha256')}")
    if "executable" in record:
        exe = record["executable"]
        lines.append(f"compiled for {exe.get('device_kind')}"
                     + (f" (cpu features: {' '.join(exe.get('cpu_features') or [])})" if exe.get("cpu_features") else ""))
        if exe.get("hardware_checked") is False:
            lines.append("  not yet checked on hardware: run `ejaot verify` on a device of this kind")
    for section in ("analysis", "kernels", "roofline", "timings"):
        if section in record:
            lines.append(f"{section}")
            value = record[section]
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                lines.append(f"  {k}: {json.dumps(v, sort_keys=True)}")
    for note in record.get("notes", []):
        lines.append(f"note: {note}")
    if hlo:
        import jax
        ref = record["payloads"]["exported"]
        exported = jax.export.deserialize(bytearray(store.read_blob(ref["sha256"], ref["size"])))
        lines.append("stablehlo")
        lines.append(exported.mlir_module())
    return "\n".join(lines)

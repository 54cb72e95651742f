"""Configs: the tuned one when a valid tuning record exists, else the kernel's heuristic.

Tuned records live beside each kernel in `tuned/<target>.json`, written by `ejaot tune`
on a device of that target. A record is valid only for the kernel source, device kind and
toolchain it was measured with; otherwise the heuristic is used and the build says so.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..spec import KernelSpec
from ..targets import Target


def tuned_path(spec: KernelSpec, target: Target) -> Path:
    import importlib.util
    folder = Path(list(importlib.util.find_spec(spec.package).submodule_search_locations)[0])
    return folder / "tuned" / f"{target.name}.json"


@lru_cache(maxsize=None)
def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def bucket_key(backend, dims, dtype, static) -> str:
    parts = [backend, dtype] + [f"{k}={dims[k]}" for k in sorted(dims)]
    parts += [f"{k}={static[k]}" for k in sorted(static)]
    return "|".join(str(p) for p in parts)


def choose_config(spec: KernelSpec, backend: str, target: Target, dims, dtype, static, tools):
    """Returns (config, source) where source records where the config came from."""
    heuristic = spec.backends[backend].config_for(dims, static, target)
    if spec.backends[backend].config_candidates is None:
        return heuristic, {"kind": "heuristic"}
    db = _read(tuned_path(spec, target))
    rec = db.get("entries", {}).get(bucket_key(backend, dims, dtype, static))
    if rec is None:
        return heuristic, {"kind": "heuristic", "why": "no tuning record for this bucket"}
    stale = []
    if db.get("source_hash") != spec.source_hash(backend):
        stale.append("kernel source changed")
    if db.get("toolchain") != {k: tools.get(k) for k in db.get("toolchain", {})}:
        stale.append("toolchain changed")
    if stale:
        return heuristic, {"kind": "heuristic", "why": "tuning record stale: " + ", ".join(stale)}
    return dict(rec["config"]), {"kind": "tuned", "device_kind": db.get("device_kind"),
                                 "measured_us": rec.get("measured_us"), "tuned_at": db.get("tuned_at")}

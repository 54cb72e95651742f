"""Versions of the tools an artifact depends on, and the identity of this host's device.

Read through package metadata, never by importing: importing triton or libtpu costs
seconds and libtpu prints at import.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import sys
from functools import lru_cache
from pathlib import Path

BASE_TOOLS = ("jax", "jaxlib")
PLATFORM_TOOLS = {"tpu": ("libtpu",), "cuda": (), "cpu": ()}


def extras_dir(name: str) -> Path:
    """Where target-specific packages that must stay off the runtime path live."""
    root = os.environ.get("EJAOT_EXTRAS") or os.path.join(sys.prefix, "ejaot-extras")
    return Path(root) / name


@lru_cache(maxsize=None)
def version_of(dist: str) -> str | None:
    # jax and jaxlib are imported by every caller that asks on a hot path (start-up);
    # their own version attributes are far cheaper than package metadata.
    if dist in ("jax", "jaxlib") and dist in sys.modules:
        module = sys.modules[dist]
        v = getattr(module, "__version__", None) or getattr(getattr(module, "version", None), "__version__", None)
        if v:
            return v
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        pass
    for extra in ("cuda", "tpu"):
        for d in md.distributions(path=[str(extras_dir(extra))]):
            if d.metadata["Name"].lower().replace("_", "-") == dist.lower():
                return d.version
    return None


def toolchain(platform: str, backend: str) -> dict[str, str | None]:
    from .backends import all_backends
    info = all_backends().get(backend)
    names = BASE_TOOLS + (info.tools if info else ()) + PLATFORM_TOOLS.get(platform, ())
    return {n: version_of(n) for n in names}


# x86 features that change what XLA's CPU backend emits. A CPU executable built where
# one of these exists may execute illegal instructions where it does not.
_CPU_FEATURES = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2",
                 "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16",
                 "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile", "amx_int8")


@lru_cache(maxsize=1)
def cpu_features() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return tuple(f for f in _CPU_FEATURES if f in have)
    return ()


def cpu_device_kind() -> str:
    import platform
    return f"cpu-{platform.machine()}"


@lru_cache(maxsize=None)
def importable(module: str) -> bool:
    """Whether `module` could be imported here (found, not imported: no start-up cost)."""
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False

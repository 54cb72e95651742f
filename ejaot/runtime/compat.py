"""Can this host use an entry's tiers? Decided from the verified index alone, before any
payload is read or deserialized."""
from __future__ import annotations

from functools import lru_cache

from .. import toolchain as tc
from ..registry import find_kernel
from ..store.format import RECORD_FORMAT

_RECORD_FIELDS = {"key": str, "kernel": str, "backend": str, "target": str, "platform": str,
                  "dims": dict, "dtype": str, "present": list, "static": dict, "source_hash": str,
                  "toolchain": dict, "payloads": dict, "inputs": list, "outputs": list,
                  "exported": dict}


def local_platform(device) -> str:
    return {"gpu": "cuda"}.get(device.platform, device.platform)


def target_platform(target_name) -> str | None:
    """The platform a store's target builds for, or None for an unknown target."""
    from ..targets import get_target
    try:
        return get_target(str(target_name)).platform
    except Exception:  # noqa: BLE001 - an unknown or missing target: no platform
        return None


# XLA:GPU runs sequences of ops as CUDA graphs ("command buffers"), custom calls included
# by default. On the H100 image (jax 0.11.2) a jax.jit program that inlines a Triton
# kernel's custom call (the portable tier under jit) among a few other ops fails at run
# time ("Failed to create a child graph node ... CUDA_ERROR_NOT_SUPPORTED"); with
# CUSTOM_CALL left out of the command buffer types it runs (BENCHMARKS.md). Eager calls
# (the compiled tier, a few ops per dispatch) are not affected.
COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN"


def command_buffer_hazard(platform: str, xla_flags: str) -> str | None:
    """Why jitted programs that inline this store's GPU kernels may fail here, or None: on
    CUDA unless XLA_FLAGS leaves CUSTOM_CALL out of the command buffer types. XLA starts
    from a default set that includes it; a flag whose items all start with + or - edits
    the set, any other value replaces it (empty: command buffers off); flags apply in
    order."""
    if platform != "cuda":
        return None
    custom_call = True
    for flag in xla_flags.split():
        name, eq, value = flag.partition("=")
        if name != "--xla_gpu_enable_command_buffer" or not eq:
            continue
        items = [v.strip().upper() for v in value.split(",") if v.strip()]
        if items and all(v[0] in "+-" for v in items):
            for v in items:
                if v[1:] == "CUSTOM_CALL":
                    custom_call = v[0] == "+"
        else:
            custom_call = "CUSTOM_CALL" in (v.lstrip("+-") for v in items)
    if not custom_call:
        return None
    return ("XLA command buffers include custom calls: a jax.jit program that inlines ejaot's "
            "Triton kernels may fail at run time with CUDA_ERROR_NOT_SUPPORTED (eager calls are "
            f"not affected); start the process with XLA_FLAGS={COMMAND_BUFFER_FLAG}")


def record_problem(key: str, record) -> str | None:
    """A structural problem with a record, or None."""
    if not isinstance(record, dict):
        return "record is not a table"
    for f, t in _RECORD_FIELDS.items():
        if not isinstance(record.get(f), t):
            return f"record field {f!r} missing or not a {t.__name__}"
    if record["key"] != key:
        return "record key does not match its index slot"
    if record.get("format") != RECORD_FORMAT:
        return f"record format {record.get('format')!r}, this ejaot reads {RECORD_FORMAT}"
    return None


def entry_problem(record: dict, platform: str) -> str | None:
    """Why no tier of this entry can serve on this host, or None."""
    spec = find_kernel(record["kernel"])
    if spec is None:
        return f"kernel {record['kernel']!r} is not installed here"
    if record["backend"] not in spec.backends:
        return f"backend {record['backend']!r} is not a backend of {record['kernel']} here"
    if record["platform"] != platform:
        return f"built for platform {record['platform']}, this host runs {platform}"
    if record["source_hash"] != spec.source_hash(record["backend"]):
        return "built from another version of the kernel's source than the one installed (stale)"
    return None


@lru_cache(maxsize=1)
def _calling_convention_window() -> tuple[int, int]:
    from jax import export
    return export.minimum_supported_calling_convention_version, export.maximum_supported_calling_convention_version


def portable_problem(record: dict) -> str | None:
    if "exported" not in record["payloads"]:
        return "no portable tier"
    v = record["exported"].get("calling_convention_version")
    lo, hi = _calling_convention_window()
    if not isinstance(v, int) or not lo <= v <= hi:
        return f"jax.export calling convention {v!r} is outside this jax's window [{lo}, {hi}]"
    return None


def compiled_problem(record: dict, device) -> str | None:
    if "executable" not in record["payloads"]:
        return "no compiled tier"
    exe = record.get("executable")
    if not isinstance(exe, dict):
        return "compiled tier has no metadata"
    # Only jax and jaxlib matter to a compiled executable here (the kernel is inside it);
    # looking up the build-side tools (triton, ...) would also cost a slow package scan.
    built = record["toolchain"]
    for tool in ("jax", "jaxlib"):
        here = tc.version_of(tool)
        if built.get(tool) != here:
            return f"compiled with {tool} {built.get(tool)}, this host has {here}"
    if record["platform"] == "cpu":
        kind = tc.cpu_device_kind()
        if exe.get("device_kind") != kind:
            return f"compiled for {exe.get('device_kind')}, this host is {kind}"
        missing = set(exe.get("cpu_features") or []).difference(tc.cpu_features())
        if missing:
            return f"compiled for CPU features this host lacks: {sorted(missing)}"
    elif exe.get("device_kind") != device.device_kind:
        return f"compiled for {exe.get('device_kind')}, this device is {device.device_kind}"
    return None

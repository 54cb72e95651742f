"""Can this host use an entry's tiers? Decided from the verified index alone, before any
payload is read or deserialized."""
from __future__ import annotations

from functools import lru_cache

from .. import toolchain as tc
from ..spec.registry import find_kernel, may_import
from . import record as _record

def local_platform(device) -> str:
    return {"gpu": "cuda"}.get(device.platform, device.platform)


def record_problem(key: str, rec) -> str | None:
    """A structural problem with a record, or None (the schema: ejaot/artifact/record.py)."""
    return _record.problem(key, rec)


def entry_problem(record: dict, platform: str) -> str | None:
    """Why no tier of this entry can serve on this host, or None."""
    module = record.get("module")
    if module is not None and not isinstance(module, str):
        return "record field 'module' is not a string"
    problem = outside_module_problem(record["kernel"], module)
    if problem:
        return problem
    spec = find_kernel(record["kernel"], module)
    if spec is None:
        return f"kernel {record['kernel']!r} is not installed here" + (f" (not declared in {module})" if module else "")
    if record["backend"] not in spec.backends:
        return f"backend {record['backend']!r} is not a backend of {record['kernel']} here"
    mismatch = _record.spec_problem(record, spec)
    if mismatch:
        return mismatch
    if record["platform"] != platform:
        return f"built for platform {record['platform']}, this host runs {platform}"
    if record["source_hash"] != spec.source_hash(record["backend"]):
        return "built from another version of the kernel's source than the one installed (stale)"
    return None


def outside_module_problem(kernel: str, module: str | None) -> str | None:
    """Why an outside kernel's module cannot be used here, or None."""
    if module is None:
        return None
    if not may_import(module):
        import importlib.util
        top = module.split(".")[0]
        try:
            found = importlib.util.find_spec(top) is not None     # finds, imports nothing
        except (ImportError, ValueError):
            found = False
        if not found:
            return (f"kernel {kernel!r} comes from module {module!r}, which cannot be imported here "
                    f"(no package {top!r}); install its package or put it on PYTHONPATH")
        return (f"kernel {kernel!r} comes from module {module!r}, which this process has not "
                "imported: a store never makes a server import a module; import it first or "
                "pass kernel_modules=[...] to ejaot.load")
    try:
        find_kernel(kernel, module)
    except ImportError as e:
        return (f"kernel {kernel!r} comes from module {module!r}, which cannot be imported here "
                f"({e}); install its package or put it on PYTHONPATH")
    return None


@lru_cache(maxsize=1)
def _calling_convention_window() -> tuple[int, int]:
    from jax import export
    return export.minimum_supported_calling_convention_version, export.maximum_supported_calling_convention_version


def holds_gpu_kernels(record: dict) -> bool:
    """The entry's program launches kernels compiled for one GPU generation (their PTX is
    stored beside it): its portable tier runs only where ejaot.targets.device_problem allows."""
    return "ptx" in (record.get("payloads") or {})


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

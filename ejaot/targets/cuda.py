"""GPU targets: Triton kernels lowered through jax-triton on any host (no GPU needed),
with the PTX and a cubin for the target architecture stored beside the portable tier.
The compiled tier needs the GPU itself: `ejaot finalize` adds it on a GPU host."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from .. import toolchain as tc
from ..errors import TargetUnavailableError
from .mlir_text import custom_call_strings

from ..backends.triton import TRITON_CALL


def require_toolchain(target):
    """Raises TargetUnavailableError, saying how to install it, when the CUDA plugin is
    missing (no side effects: the build checks this before it starts worker processes);
    returns the extras folder that holds it."""
    extras = tc.extras_dir("cuda")
    if not (extras / "jax_plugins").is_dir():
        raise TargetUnavailableError(
            f"{target.name} needs jax-cuda13-plugin to lower Triton kernels; install it with "
            f"`make artifacts TARGET={target.name}` or "
            f"`pip install --no-deps --target {extras} -r requirements/cuda-extras.txt`")
    return extras


def prepare_process(target) -> None:
    """Put the CUDA plugin on the path (jax-triton builds its kernel proto with it) and
    keep jax on the CPU; must run before jax is imported. Kernels are compiled without
    line info unless TRITON_DISABLE_LINE_INFO says otherwise: its `.file` directives name
    the source's absolute path, so a store's bytes would depend on where it was built
    (and stores built in two checkouts would not merge)."""
    extras = require_toolchain(target)
    if str(extras) not in sys.path:
        sys.path.insert(0, str(extras))
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TRITON_DISABLE_LINE_INFO", "1")


def compile_device(target):
    return None, "GPU executables are compiled on a GPU host: run `ejaot finalize DIR` there"


def compile_devices(target, count: int):
    return None, "GPU executables are compiled on a GPU host: run `ejaot finalize DIR` there"


def device_problem(target, device) -> str | None:
    """Why this GPU cannot run what was built for `target`, or None. Triton writes Hopper's
    and later generations' PTX for their arch-specific variant (sm_90a, sm_100a), which runs
    on that generation only; older generations' PTX the driver compiles for any later GPU
    that has the shared memory its tiles were sized for (an A100's 163 KB, not the 99 KB of
    an RTX 3090, L40S or RTX 5090)."""
    want = target.facts.get("compute_capability")
    have = _device_compute_capability(device)
    if want is None or have is None:
        return None
    gpu = f"this GPU ({getattr(device, 'device_kind', '?')}) has compute capability {have / 10:.1f}"
    if (have != want) if want >= 90 else (have < want):
        runs_on = f"compute capability {want / 10:.1f} only" if want >= 90 else f"compute capability {want / 10:.1f} and later"
        return f"the store was built for target {target.name!r}, whose kernels run on {runs_on}; {gpu}"
    sized_for = target.facts.get("shared_memory_per_block", 0)
    if _shared_memory_per_block(have) < sized_for:
        return (f"the store was built for target {target.name!r}, whose kernels may use {sized_for >> 10} KB "
                f"of shared memory per block; {gpu} and {_shared_memory_per_block(have) >> 10} KB")
    return None


def _shared_memory_per_block(cc: int) -> int:
    """The opt-in maximum per block by compute capability (the CUDA programming guide's
    table); the kernels keep their own copy (ejaot_kernels.cuda_arch): the engine names no
    kernel module."""
    if cc // 10 in (9, 10):
        return 227 << 10
    return {80: 163 << 10, 87: 163 << 10, 75: 64 << 10, 70: 96 << 10}.get(cc, 99 << 10)


def _device_compute_capability(device) -> int | None:
    """jax's "9.0" as 90; None when the device does not say."""
    text = str(getattr(device, "compute_capability", None) or "")
    m = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    return int(m.group(1)) * 10 + int(m.group(2)) if m else None


def device_identity(target, device) -> dict:
    return {"device_kind": device.device_kind,
            "compute_capability": getattr(device, "compute_capability", None)}



def kernel_binaries(exported, mlir_text: str, entry) -> tuple[dict, dict]:
    """PTX of every Triton kernel in the module, and a cubin assembled by Triton's ptxas
    for the target's architecture (registers, shared memory and spills recorded)."""
    calls = custom_call_strings(mlir_text, TRITON_CALL, "opaque")
    if not calls:
        return {}, {}
    ptxs = []
    for opaque in calls:
        found = [s for s in _proto_strings(zlib.decompress(opaque)) if s.lstrip().startswith(b"//") and b".version" in s]
        if not found:
            raise ValueError("no PTX found in a triton_kernel_call payload")
        ptxs.append(found[0])
    payloads = {"ptx": _pack(ptxs)}
    kernels = []
    cubins = []
    for ptx in ptxs:
        info = {"name": _ptx_entry(ptx), "ptx_bytes": len(ptx), "arch": _ptx_arch(ptx)}
        cubin, stats = _assemble(ptx, info["arch"])
        if cubin is not None:
            cubins.append(cubin)
            info.update(stats)
        else:
            info["cubin"] = stats.get("error", "ptxas unavailable")
        kernels.append(info)
    if cubins and len(cubins) == len(ptxs):
        payloads["cubin"] = _pack(cubins)
    return payloads, {"kernels": kernels}


def _pack(items: list[bytes]) -> bytes:
    return b"".join(len(x).to_bytes(8, "little") + x for x in items)


def _proto_strings(data: bytes, depth: int = 0):
    """Every length-delimited field of a protobuf message, recursively (no schema needed)."""
    i, n = 0, len(data)
    while i < n:
        key, i = _varint(data, i)
        if key is None:
            return
        wire = key & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(data, i)
            if length is None or i + length > n:
                return
            chunk = data[i:i + length]
            yield chunk
            if depth < 4:
                yield from _proto_strings(chunk, depth + 1)
            i += length
        else:
            return
        if i is None:
            return


def _varint(data: bytes, i: int):
    shift, value = 0, 0
    while i < len(data):
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            break
    return None, None


def _ptx_entry(ptx: bytes) -> str:
    m = re.search(rb"\.entry\s+([A-Za-z0-9_$]+)", ptx)
    return m.group(1).decode() if m else "?"


def _ptx_arch(ptx: bytes) -> str:
    m = re.search(rb"\.target\s+(sm_[0-9a-z]+)", ptx)
    return m.group(1).decode() if m else "?"


def _ptxas() -> str | None:
    import importlib.util
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "backends" / "nvidia" / "bin" / "ptxas"
    return str(path) if path.exists() else None


def _assemble(ptx: bytes, arch: str):
    ptxas = _ptxas()
    if ptxas is None:
        return None, {"error": "triton's ptxas not found"}
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "k.ptx", Path(d) / "k.cubin"
        src.write_bytes(ptx)
        r = subprocess.run([ptxas, f"-arch={arch}", "-v", "--warn-on-spills", str(src), "-o", str(out)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None, {"error": f"ptxas failed: {r.stderr.strip()[-300:]}"}
        log = r.stderr
        stats = {"cubin_bytes": out.stat().st_size}
        m = re.search(r"Used (\d+) registers", log)
        if m:
            stats["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", log)
        if m:
            stats["static_smem_bytes"] = int(m.group(1))
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        if m:
            stats["spill_store_bytes"], stats["spill_load_bytes"] = int(m.group(1)), int(m.group(2))
        return out.read_bytes(), stats

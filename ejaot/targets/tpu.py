"""TPU targets: lowered with Mosaic and compiled for a compile-only TPU topology through
libtpu, on any host. libtpu lives in <venv>/ejaot-extras/tpu, off the runtime's import
path: it prints at every jax import once installed, and servers never need it."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from .. import toolchain as tc
from ..errors import TargetUnavailableError
from .mlir_text import custom_call_strings


def require_toolchain(target):
    """Raises TargetUnavailableError, saying how to install it, when libtpu is missing
    (no side effects: the build checks this before it starts worker processes); returns
    the extras folder that holds it."""
    extras = tc.extras_dir("tpu")
    if not (extras / "libtpu").is_dir():
        raise TargetUnavailableError(
            f"{target.name} needs libtpu for cross-compiling; install it with "
            f"`make artifacts TARGET={target.name}` or "
            f"`pip install --no-deps --target {extras} -r requirements/tpu-extras.txt`")
    return extras


def prepare_process(target) -> None:
    """Put libtpu on the path and quiet it; must run before jax is imported."""
    extras = require_toolchain(target)
    if str(extras) not in sys.path:
        sys.path.insert(0, str(extras))
    # Compile-only: never try to open a TPU here, and keep libtpu's start-up logging quiet.
    os.environ["JAX_PLATFORMS"] = "cpu"
    for var, value in (("TPU_STDERR_LOG_LEVEL", "3"), ("TPU_MIN_LOG_LEVEL", "3"),
                       ("TF_CPP_MIN_LOG_LEVEL", "3"), ("GRPC_VERBOSITY", "ERROR"),
                       ("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                       # parallel build workers each load libtpu; without this they
                       # contend for /tmp/libtpu_lockfile and all but one fail
                       ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
        os.environ.setdefault(var, value)


@contextlib.contextmanager
def _quiet_native_stderr():
    """libtpu logs from C++ straight to fd 2 while it initializes; keep that out of the
    build's output unless initialization fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


_topology_devices: dict = {}


def compile_device(target):
    """The first chip of the target's compile-only topology."""
    if target.name not in _topology_devices:
        from jax.experimental import topologies
        f = target.facts
        try:
            with _quiet_native_stderr():
                topo = topologies.get_topology_desc(topology_name=f["topology"], platform="tpu",
                                                    chips_per_host_bounds=f["chips_per_host_bounds"])
        except Exception as e:  # libtpu missing, too old for this generation, or locked
            raise TargetUnavailableError(f"no compile-only topology for {f['topology']}: {e}") from None
        _topology_devices[target.name] = topo.devices[0]
    return _topology_devices[target.name], None


def compile_devices(target, count: int):
    """The chips of the target's compile-only topology with `count` chips (its facts'
    `topologies`), or (None, reason)."""
    found = target.facts.get("topologies", {}).get(str(count))
    if found is None:
        known = sorted(int(n) for n in target.facts.get("topologies", {}))
        return None, (f"{target.name} has no compile-only topology of {count} chips here "
                      f"(known: {known or 'none'})")
    name, bounds = found
    if name not in _topology_devices:
        from jax.experimental import topologies
        try:
            with _quiet_native_stderr():
                topo = topologies.get_topology_desc(topology_name=name, platform="tpu",
                                                    chips_per_host_bounds=tuple(bounds))
        except Exception as e:  # libtpu missing, too old for this generation, or locked
            raise TargetUnavailableError(f"no compile-only topology for {name}: {e}") from None
        _topology_devices[name] = list(topo.devices)
    return _topology_devices[name][:count], None


def mesh_identity(target, count: int) -> dict:
    """A multi-chip executable's topology, in place of the one-chip default."""
    return {"topology": target.facts["topologies"][str(count)][0], "chips": count}


def device_identity(target, device) -> dict:
    return {"device_kind": device.device_kind, "topology": target.facts["topology"],
            "libtpu": tc.version_of("libtpu"),
            # A TPU executable compiled here can only be checked on a TPU host.
            "hardware_checked": False}



def kernel_binaries(exported, mlir_text: str, entry) -> tuple[dict, dict]:
    """The Mosaic kernel(s) inside the module: each tpu_custom_call's serialized payload."""
    configs = custom_call_strings(mlir_text, "tpu_custom_call", "backend_config")
    if not configs:
        return {}, {}
    blob = b"".join(len(c).to_bytes(8, "little") + c for c in configs)
    return {"mosaic": blob}, {"kernels": {"mosaic_calls": len(configs),
                                          "mosaic_bytes": [len(c) for c in configs]}}


def roofline(analysis: dict, target) -> dict:
    """Lower bound on run time from the compiled cost analysis and the chip's peaks."""
    flops, nbytes = analysis.get("flops"), analysis.get("bytes_accessed")
    if not flops and not nbytes:
        return {}
    f = target.facts
    t_compute = (flops or 0) / f["peak_bf16_flops"]
    t_memory = (nbytes or 0) / f["hbm_bytes_per_s"]
    return {"compute_us": round(t_compute * 1e6, 3), "memory_us": round(t_memory * 1e6, 3),
            "bound": "compute" if t_compute >= t_memory else "memory",
            "peaks": {"bf16_flops": f["peak_bf16_flops"], "hbm_bytes_per_s": f["hbm_bytes_per_s"]}}

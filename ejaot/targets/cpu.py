"""The `cpu` target: XLA on this host, compiled here."""
from __future__ import annotations

from .. import toolchain as tc


def require_toolchain(target) -> None:
    """Nothing beyond the base environment."""


def prepare_process(target) -> None:
    """Nothing to set up: the base environment lowers and compiles for the CPU."""


def compile_device(target):
    """The device the compiled tier is built for here, or (None, reason)."""
    import jax
    return jax.devices("cpu")[0], None


def compile_devices(target, count: int):
    """`count` host devices for a multi-chip entry's compiled tier, or (None, reason).
    XLA makes several CPU devices only when asked before it starts (reserve_devices)."""
    import jax
    devices = jax.devices("cpu")
    if len(devices) < count:
        return None, (f"the mesh needs {count} devices and this process has {len(devices)} CPU "
                      f"device(s): start it with XLA_FLAGS=--xla_force_host_platform_device_count={count}")
    return devices[:count], None


def reserve_devices(count: int) -> None:
    """Before jax starts (here, or in build workers, which inherit the environment): ask XLA
    for `count` host devices, unless the environment already sets a count."""
    import os
    import sys
    flags = os.environ.get("XLA_FLAGS", "")
    if count <= 1 or "jax" in sys.modules or "xla_force_host_platform_device_count" in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def device_identity(target, device) -> dict:
    # XLA's CPU backend emits code for the build host's ISA: a loader must have every
    # feature the builder had, or the executable could fault on an illegal instruction.
    return {"device_kind": tc.cpu_device_kind(), "cpu_features": list(tc.cpu_features())}



def kernel_binaries(exported, lowered_text: str, entry) -> tuple[dict, dict]:
    return {}, {}

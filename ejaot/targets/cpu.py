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


def device_identity(target, device) -> dict:
    # XLA's CPU backend emits code for the build host's ISA: a loader must have every
    # feature the builder had, or the executable could fault on an illegal instruction.
    return {"device_kind": tc.cpu_device_kind(), "cpu_features": list(tc.cpu_features())}



def kernel_binaries(exported, lowered_text: str, entry) -> tuple[dict, dict]:
    return {}, {}

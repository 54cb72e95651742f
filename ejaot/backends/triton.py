"""Triton kernels through jax-triton (NVIDIA GPUs). Lowering needs triton and jax-triton
(any host); the artifact embeds the PTX, so serving needs neither."""
from . import BackendInfo

TRITON_CALL = "triton_kernel_call_ffi"


def _jit_usable() -> bool:
    from ..toolchain import importable
    return importable("jax_triton")


def _disabled_checks() -> list:
    # Triton custom calls carry no serialization-stability guarantee: jax.export refuses
    # them unless told, and the store pins the toolchain instead.
    from jax import export
    return [export.DisabledSafetyCheck.custom_call(TRITON_CALL)]


BACKEND = BackendInfo(name="triton", platforms=("cuda",), rank=10,
                      tools=("triton", "jax-triton", "jax-cuda13-plugin"), call_name="triton",
                      build_cost=4.0,   # the Triton compiler per entry
                      jit_usable=_jit_usable, disabled_checks=_disabled_checks)

"""What every Triton backend of the collection shares: the guarded triton import (a host
without triton can import a backend module and learn it cannot lower), the local GPU's
compute capability for the JIT path (an empty config on a GPU host), and the constants and
device functions the kernels have in common (LOG2E, tanh)."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
    jit = triton.jit
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None

    def jit(fn):
        return fn

# log2(e): the kernels run their softmax in the log2 domain (exp2), with the softmax
# scale times LOG2E folded into one multiply
LOG2E = 1.4426950408889634


@jit
def tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1); exp(2x) = exp2(x * 2 log2 e). Exact limits at +-inf,
    # abs error ~1e-7 near 0.
    e = tl.math.exp2(x * 2.8853900817779268)
    return 1.0 - 2.0 / (e + 1.0)


def local_compute_capability(kernel: str) -> int:
    import jax
    for dev in jax.local_devices():
        cc = getattr(dev, "compute_capability", None)
        if dev.platform == "gpu" and cc:
            major, _, minor = str(cc).partition(".")
            return int(major) * 10 + int(minor or 0)
    raise ValueError(f"{kernel} (triton): the config has no compute_capability and this host has no GPU "
                     "to read it from; give config['compute_capability'] (e.g. 90)")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def resolve_config(kernel: str, config, heuristic, dims, static) -> dict:
    """The config as given, completed by the kernel's heuristic for its compute capability
    (the local GPU's when the config names none: an empty config on a GPU host)."""
    from types import SimpleNamespace
    cfg = dict(config or {})
    cc = cfg.get("compute_capability")
    if cc is None:
        cc = local_compute_capability(kernel)
    full = heuristic(dims, static, SimpleNamespace(facts={"compute_capability": int(cc)}))
    full.update(cfg)
    full["compute_capability"] = int(cc)
    return full

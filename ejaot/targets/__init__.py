"""Build targets: what platform an artifact runs on, which kernel backends it prefers,
and what can be compiled for it on this host.

A target is plain data; the jax-side work for each platform (activating the toolchain,
finding compile devices) lives in `ejaot.targets.<platform>` and is imported lazily.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..backends import backends_for


@dataclass(frozen=True)
class Target:
    name: str
    platform: str                       # jax platform of the artifact: cpu | cuda | tpu
    backends: tuple[str, ...]           # kernel backends in order of preference (ejaot.backends)
    aliases: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def platform_module(self):
        return importlib.import_module(f"ejaot.targets.{self.platform}")


_TPU_FACTS = {
    # VMEM per core, MXU edge, peak bf16 dense FLOP/s, HBM bandwidth (B/s); public figures.
    "tpu-v4": dict(topology="v4:1x1x1", chips_per_host_bounds=(1, 1, 1), vmem_bytes=16 << 20,
                   mxu=128, peak_bf16_flops=275e12, hbm_bytes_per_s=1228e9, device_kind="TPU v4"),
    "tpu-v5e": dict(topology="v5e:1x1", chips_per_host_bounds=(1, 1, 1), vmem_bytes=128 << 20,
                    mxu=128, peak_bf16_flops=197e12, hbm_bytes_per_s=819e9, device_kind="TPU v5 lite",
                    # multi-chip entries: chips -> (compile-only topology, chips per host), one host
                    topologies={"4": ("v5e:2x2", (2, 2, 1)), "8": ("v5e:2x4", (2, 4, 1))}),
    "tpu-v5p": dict(topology="v5p:1x1x1", chips_per_host_bounds=(1, 1, 1), vmem_bytes=95 << 20,
                    mxu=128, peak_bf16_flops=459e12, hbm_bytes_per_s=2765e9, device_kind="TPU v5"),
    "tpu-v6e": dict(topology="v6e:1x1", chips_per_host_bounds=(1, 1, 1), vmem_bytes=128 << 20,
                    mxu=256, peak_bf16_flops=918e12, hbm_bytes_per_s=1640e9, device_kind="TPU v6 lite",
                    topologies={"4": ("v6e:2x2", (2, 2, 1)), "8": ("v6e:2x4", (2, 4, 1))}),
}

TARGETS: dict[str, Target] = {
    "cpu": Target("cpu", "cpu", backends_for("cpu"), description="XLA on the host CPU (StableHLO)"),
    "gpu-sm90": Target("gpu-sm90", "cuda", backends_for("cuda"), aliases=("gpu-h100", "gpu-h200"),
                       facts=dict(compute_capability=90, shared_memory_per_block=227 << 10),
                       description="NVIDIA Hopper: Triton PTX/cubin"),
    "gpu-sm80": Target("gpu-sm80", "cuda", backends_for("cuda"), aliases=("gpu-a100",),
                       facts=dict(compute_capability=80, shared_memory_per_block=163 << 10),
                       description="NVIDIA Ampere: Triton PTX/cubin"),
    **{name: Target(name, "tpu", backends_for("tpu"), facts=facts,
                    description=f"{facts['device_kind']}: Pallas Mosaic, compiled via libtpu")
       for name, facts in _TPU_FACTS.items()},
}

_ALIASES = {a: t.name for t in TARGETS.values() for a in t.aliases}


def known_target_names() -> list[str]:
    return sorted(TARGETS) + sorted(_ALIASES)


def get_target(name: str) -> Target:
    name = _ALIASES.get(name, name)
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; known targets: {', '.join(known_target_names())}")
    return TARGETS[name]


def device_problem(target: Target, device) -> str | None:
    """Why `device` cannot run what was built for `target` (a GPU of another generation),
    when the target's platform module can tell; None otherwise."""
    check = getattr(target.platform_module, "device_problem", None)
    return check(target, device) if check else None


_lowering_for: contextvars.ContextVar[Target | None] = contextvars.ContextVar("ejaot_lowering_for", default=None)


@contextlib.contextmanager
def lowering_for(target: Target):
    """While an entry is lowered for `target`: a kernel that calls other kernels through
    ejaot.ops (a model's step) gets each one's preferred backend on that target, not this
    host's, and no store is consulted."""
    token = _lowering_for.set(target)
    try:
        yield
    finally:
        _lowering_for.reset(token)


def lowering_target() -> Target | None:
    return _lowering_for.get()

"""What a CUDA generation lets a Triton kernel use, by compute capability (major * 10 +
minor: 90 for Hopper). Pure Python: configs read it without triton.

Kernels decide on these, never on `cc >= 90`: Blackwell (100, 103: B200, B300; 120, 121:
the RTX 50 series and GB10) counts above Hopper but has no Hopper warpgroup MMA, and its
consumer parts have Ampere's shared memory, not Hopper's."""
from __future__ import annotations

_KIB = 1024


def shared_memory_per_block(cc: int) -> int:
    """Bytes of shared memory one block may ask for (the opt-in maximum of the CUDA
    programming guide's table); a generation not listed gets the smallest of the recent
    ones, so that tiles sized by it fit."""
    major = cc // 10
    if major in (9, 10):            # Hopper, datacenter Blackwell
        return 227 * _KIB
    if cc in (80, 87):              # A100, Orin
        return 163 * _KIB
    if cc == 75:
        return 64 * _KIB
    if cc == 70:
        return 96 * _KIB
    return 99 * _KIB                # 86, 89, 12x (consumer Blackwell) and anything else


def has_wgmma(cc: int) -> bool:
    """Hopper's warpgroup MMA (sm_90a), in which the Gluon kernels are written; Blackwell
    replaced it (tcgen05), so compiling one for 100 or 120 aborts in LLVM."""
    return cc // 10 == 9


def has_tensor_memory(cc: int) -> bool:
    """Datacenter Blackwell's tensor memory (tcgen05), where Triton keeps tensor-core
    accumulators: 512 columns per block, a budget that tiles must fit besides shared memory."""
    return cc // 10 == 10


def has_tma(cc: int) -> bool:
    """The tensor memory accelerator (Hopper and every later generation)."""
    return cc >= 90

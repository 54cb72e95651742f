"""Shape checks and Pallas TPU configs for `page_attention`. Pure Python: the planner
reads these without importing jax.

Config keys of the `pallas_tpu` backend:
  pages_per_compute_block  pages DMA'd and processed per online-softmax step
  inline_seq_dim           True: one grid step per (kv head, sequence) loops over only the
                           page blocks the context needs; False: page blocks are a grid axis
  megacore_mode            None | "kv_head" | "batch": which grid axis is "parallel" (split
                           over the two TensorCores of a megacore chip: v4, v5p)
  interpret                True: run the kernel in the Pallas interpreter (CPU tests)
"""
from __future__ import annotations

_MEGACORE_KINDS = ("TPU v4", "TPU v5")    # two TensorCores per chip share a grid


def check_dims(dims, static):
    if dims["q_heads"] % dims["kv_heads"]:
        raise ValueError(f"q_heads={dims['q_heads']} is not a multiple of kv_heads={dims['kv_heads']}")


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def tpu_heuristic(dims, static, target=None):
    """Compute blocks of 256 tokens (512 on chips with >= 64 MiB VMEM): big enough to keep
    the MXU fed and to amortize a grid/loop step, small enough that the partial last block
    of a short context wastes little. pages_per_compute_block divides max_blocks, so no
    block straddles the end of the block table."""
    facts = (getattr(target, "facts", None) or {}) if target is not None else {}
    vmem = facts.get("vmem_bytes", 16 << 20)
    mxu = facts.get("mxu", 128)
    ps, mb, d = dims["page_size"], dims["max_blocks"], dims["head_dim"]
    want_tokens = max(512 if vmem >= (64 << 20) else 256, mxu)
    # K and V, two slots each, must stay a small part of VMEM (f32 worst case)
    while want_tokens > ps and 2 * 2 * want_tokens * d * 4 > vmem // 8:
        want_tokens //= 2
    ppcb = max([p for p in _divisors(mb) if p * ps <= want_tokens] or [1])
    mode = None
    if facts.get("device_kind") in _MEGACORE_KINDS:
        if dims["kv_heads"] % 2 == 0:
            mode = "kv_head"
        elif dims["num_seqs"] % 2 == 0:
            mode = "batch"
    return {"pages_per_compute_block": ppcb, "inline_seq_dim": True, "megacore_mode": mode}


def tpu_candidates(dims, static, target):
    """Block sizes from 64 to 2048 tokens whose double-buffered K/V fit a quarter of VMEM,
    each with the page loop inline and as a grid axis."""
    base = tpu_heuristic(dims, static, target)
    vmem = ((getattr(target, "facts", None) or {}) if target is not None else {}).get("vmem_bytes", 16 << 20)
    ps, mb, d = dims["page_size"], dims["max_blocks"], dims["head_dim"]
    out = []
    for ppcb in _divisors(mb):
        tokens = ppcb * ps
        if tokens > 2048 or (tokens < 64 and ppcb != mb) or 2 * 2 * tokens * d * 4 > vmem // 4:
            continue
        for inline in (True, False):
            out.append({**base, "pages_per_compute_block": ppcb, "inline_seq_dim": inline})
    return out or [base]

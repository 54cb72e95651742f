"""Shape checks and configs (Pallas TPU, Triton GPU) for `page_attention`. Pure Python: the planner
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


# ---------------------------------------------------------------------------------------
# Triton (NVIDIA GPUs)
#
# Config keys of the `triton` backend:
#   pages_per_block     pages (block-table entries) gathered per online-softmax step
#   num_splits          split-KV: programs per (sequence, kv head), each over a contiguous
#                       share of the needed pages; > 1 adds a small combine kernel
#   num_warps           warps per program
#   num_stages          software-pipelining depth of the page loop
#   compute_capability  the GPU generation the PTX is built for (90: sm_90a, 80: sm_80)
# ---------------------------------------------------------------------------------------

_SMS = {90: 132, 80: 108, 89: 128, 86: 84}    # multiprocessors of the usual part per generation


def _compute_capability(target) -> int:
    facts = (getattr(target, "facts", None) or {}) if target is not None else {}
    return int(facts.get("compute_capability", 90))


def _sm_count(target, cc) -> int:
    facts = (getattr(target, "facts", None) or {}) if target is not None else {}
    return int(facts.get("sm_count") or _SMS.get(cc, 132 if cc >= 90 else 108))


def _block_tokens(dims) -> int:
    """Tokens per loop step: 64 x head_dim 128 is 16 KB of K plus 16 KB of V (2-byte), which
    with a 3-deep pipeline keeps ~64 KB in flight per program and two programs per SM."""
    return 64 if dims["head_dim"] <= 128 else 32


def _pages_per_block(dims, tokens) -> int:
    return max(1, min(dims["max_blocks"], tokens // dims["page_size"]))


def _splits(dims, ppb, sms, min_blocks=2) -> int:
    """Split-KV until there are about four programs per SM (short of that, the grid runs
    in few, partial waves and the HBM idles at their tails): the next power of two, and no
    share of the longest context shorter than `min_blocks` page blocks. Measured on an H100
    (context 4096, bf16, 32/8 heads, head_dim 128): 64 sequences x 8 kv heads ran at
    2.6-2.9 TB/s unsplit and 2.8-2.9 TB/s with 2 splits (page size 64 gained most, and
    random context lengths too); 8 sequences best at 8-16 splits; 1 sequence at 32."""
    base = max(1, dims["num_seqs"] * dims["kv_heads"])
    blocks = -(-dims["max_blocks"] // ppb)
    want = -(-4 * sms // base)
    cap = max(1, blocks // min_blocks)
    splits = 1
    while splits < min(want, cap):
        splits *= 2
    return max(1, min(splits, cap))


def triton_heuristic(dims, static, target):
    cc = _compute_capability(target)
    sms = _sm_count(target, cc)
    ppb = _pages_per_block(dims, _block_tokens(dims))
    group = dims["q_heads"] // max(1, dims["kv_heads"])
    return {"compute_capability": cc,
            "pages_per_block": ppb,
            "num_splits": _splits(dims, ppb, sms),
            "num_warps": 8 if group > 32 else 4,
            "num_stages": 3 if cc >= 80 else 2}


def triton_candidates(dims, static, target):
    """Page blocks of 32 to 256 tokens, split counts around the heuristic's, 4 or 8 warps,
    2 to 4 stages: the heuristic first."""
    cc = _compute_capability(target)
    base = triton_heuristic(dims, static, target)
    ps, mb, d = dims["page_size"], dims["max_blocks"], dims["head_dim"]
    smem = (227 if cc >= 90 else 163) * 1024
    s0 = base["num_splits"]
    split_opts = sorted({max(1, s0 // 4), max(1, s0 // 2), s0, s0 * 2, s0 * 4, 1})
    out, seen = [base], {tuple(sorted(base.items()))}
    for tokens in (32, 64, 128, 256):
        ppb = _pages_per_block(dims, tokens)
        blocks = -(-mb // ppb)
        for splits in split_opts:
            if splits > blocks:
                continue
            for warps in (4, 8):
                for stages in (2, 3, 4):
                    bn = 1 << max(0, ppb * ps - 1).bit_length()
                    if stages * 2 * bn * d * 2 > smem * 3 // 4:
                        continue
                    cfg = dict(base, pages_per_block=ppb, num_splits=splits, num_warps=warps,
                               num_stages=stages)
                    key = tuple(sorted(cfg.items()))
                    if key not in seen:
                        seen.add(key)
                        out.append(cfg)
    return out

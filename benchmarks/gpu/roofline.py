"""FLOPs and minimum memory traffic of the kernels the GPU suite times, and the roofline
verdict built from them. Plain Python (no jax): every function takes the bucket's dims.

Conventions, one for every kernel:

* FLOPs count the matrix products only (a multiply-add is 2 FLOPs); softmax, scaling,
  masking and the MLA weight absorption are left out. A causal square attention does half
  the work of a full one (the usual S*S/2 convention, not the exact S*(S+1)/2).
* Bytes are the *minimum* traffic of one call: every input the result depends on read once,
  every output written once, at the array's item size. A kernel that reads something twice,
  or spills, moves more: its GB/s here is then below what the memory system delivered, never
  above. Paged kernels count only the pages their contexts use (whole pages, the last one
  included), plus the block table and the context lengths.
* The ridge point of a device is (matmul FLOP/s) / (copy bytes/s), both measured in the same
  process. A call whose arithmetic intensity (FLOPs / bytes) is at or above the ridge is
  "compute"-bound: its attainable rate is the matmul rate; below, "memory"-bound: its
  attainable rate is intensity x copy bandwidth.
"""
from __future__ import annotations

import math

ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}
INT32 = 4
FWD_BWD_OVER_FWD = 3.5        # backward = 2.5 x forward FLOPs (two more products for dP, dS
                              # and three for dQ, dK, dV, against two forward), + the forward


def itemsize(dtype: str) -> int:
    return ITEMSIZE[str(dtype)]


def _causal_factor(causal: bool) -> float:
    return 0.5 if causal else 1.0


def flash_fwd_flops(batch: int, q_heads: int, seq: int, kv_seq: int, head_dim: int, causal: bool) -> float:
    """Forward attention: Q K^T and P V, 2 * (2 * S * T * D) per (batch, query head), halved
    when causal: 4 * B * Hq * S * T * D * (1/2 if causal)."""
    return 4.0 * batch * q_heads * seq * kv_seq * head_dim * _causal_factor(causal)


def flash_fwd_bwd_flops(batch: int, q_heads: int, seq: int, kv_seq: int, head_dim: int, causal: bool) -> float:
    """Forward + backward: the forward's FLOPs x 3.5 (the backward counts 2.5 x the forward;
    a backward that recomputes the forward does more work than it is credited with)."""
    return FWD_BWD_OVER_FWD * flash_fwd_flops(batch, q_heads, seq, kv_seq, head_dim, causal)


def flash_fwd_bytes(batch: int, q_heads: int, kv_heads: int, seq: int, kv_seq: int, head_dim: int,
                    dtype: str) -> int:
    """Read Q, K, V once, write O once: (2 * B*S*Hq*D + 2 * B*T*Hk*D) * itemsize."""
    q = batch * seq * q_heads * head_dim
    kv = batch * kv_seq * kv_heads * head_dim
    return (2 * q + 2 * kv) * itemsize(dtype)


def flash_fwd_bwd_bytes(batch: int, q_heads: int, kv_heads: int, seq: int, kv_seq: int, head_dim: int,
                        dtype: str) -> int:
    """The forward's traffic, then the backward's: read Q, K, V, O, dO and write dQ, dK, dV
    (the row statistics, B*Hq*S float32, are left out):
    forward (2q + 2kv) + backward (3q + 2kv reads, q + 2kv writes) = (6q + 6kv) * itemsize,
    q = B*S*Hq*D, kv = B*T*Hk*D."""
    q = batch * seq * q_heads * head_dim
    kv = batch * kv_seq * kv_heads * head_dim
    return (6 * q + 6 * kv) * itemsize(dtype)


def flash_mla_flops(batch: int, heads: int, seq: int, head_dim: int, latent_dim: int, causal: bool,
                    backward: bool = False) -> float:
    """flash_mla_attention: attention over the latent space (flash_fwd_flops at head dim L)
    plus its four projections (query, key, value down to L, the output back up to D),
    2 * B * H * S * D * L each. With the backward, each part x 3.5 / x 3 (a projection's
    backward is two products of its size)."""
    attention = flash_fwd_flops(batch, heads, seq, seq, latent_dim, causal)
    projections = 4 * 2.0 * batch * heads * seq * head_dim * latent_dim
    if backward:
        return FWD_BWD_OVER_FWD * attention + 3 * projections
    return attention + projections


def flash_mla_bytes(batch: int, heads: int, seq: int, head_dim: int, latent_dim: int, dtype: str,
                    backward: bool = False) -> int:
    """Read Q, K, V and write O once (B*H*S*D each), and the two projection matrices (D*L);
    with the backward, flash_fwd_bwd_bytes's pattern on the D-wide tensors and the
    projections read again and their gradients written (the latent intermediates, which a
    fused kernel would not write, are left out)."""
    n = batch * heads * seq * head_dim
    weights = 2 * head_dim * latent_dim
    if backward:
        return (12 * n + 3 * weights) * itemsize(dtype)
    return (4 * n + weights) * itemsize(dtype)


def mla_decode_flops(batch: int, q_heads: int, kv_tokens: int, kv_lora_rank: int = 512, rope_dim: int = 64,
                     seq: int = 1) -> float:
    """Absorbed-form MLA attention: scores over latent + rope (R + E) and the latent output
    (R), 2 * B * H * S_q * T * ((R + E) + R); for DeepSeek-V3 decode (S_q = 1)
    2 * B * H * T * (576 + 512). The q @ w_kc and o @ w_vc absorptions (4 * B * H * S_q * R * D,
    under 1% here) are not counted."""
    return 2.0 * batch * q_heads * seq * kv_tokens * ((kv_lora_rank + rope_dim) + kv_lora_rank)


def mla_decode_bytes(batch: int, q_heads: int, kv_tokens: int, head_dim: int, kv_lora_rank: int,
                     rope_dim: int, dtype: str, seq: int = 1, kv_heads: int | None = None,
                     with_rope: bool = True) -> dict:
    """Minimum traffic of one whole mla_attention call (contiguous cache), by part:
    cache = B*T*(R + E) (the latent cache and the rope keys, read once), weights = 2*R*Hk*D
    (w_kc and w_vc), io = query and output (2 * B*S*Hq*D) + rope queries B*S*E. All at the
    item size; "total" is their sum. (FlashMLA's own benchmark counts cache + q_lat +
    out_lat, without the weights: derive it from the parts.)"""
    e = rope_dim if with_rope else 0
    hk = kv_heads or q_heads
    n = itemsize(dtype)
    parts = {
        "cache": batch * kv_tokens * (kv_lora_rank + e) * n,
        "weights": 2 * kv_lora_rank * hk * head_dim * n,
        "io": (2 * batch * seq * q_heads * head_dim + batch * seq * e) * n,
    }
    parts["total"] = sum(parts.values())
    return parts


def paged_tokens(context_lens, page_size: int) -> int:
    """Tokens of whole pages the contexts touch: sum of ceil(ctx / page) * page (ctx <= 0: none)."""
    return sum(math.ceil(max(int(c), 0) / page_size) * page_size for c in context_lens)


def paged_mla_decode_bytes(context_lens, q_heads: int, head_dim: int, kv_lora_rank: int, rope_dim: int,
                           page_size: int, max_blocks: int, dtype: str, kv_heads: int | None = None,
                           with_rope: bool = True) -> dict:
    """mla_decode_bytes over a paged cache: the pages the contexts use (whole pages), the
    weights, query/output/rope queries, plus the block table (num_seqs * max_blocks int32)
    and context lengths (num_seqs int32) under "tables"."""
    b = len(context_lens)
    e = rope_dim if with_rope else 0
    hk = kv_heads or q_heads
    n = itemsize(dtype)
    parts = {
        "cache": paged_tokens(context_lens, page_size) * (kv_lora_rank + e) * n,
        "weights": 2 * kv_lora_rank * hk * head_dim * n,
        "io": (2 * b * q_heads * head_dim + b * e) * n,
        "tables": (b * max_blocks + b) * INT32,
    }
    parts["total"] = sum(parts.values())
    return parts


def paged_decode_flops(context_lens, q_heads: int, head_dim: int) -> float:
    """page_attention (one query per sequence): q K^T and P V over each context,
    4 * Hq * D * sum(ctx)."""
    return 4.0 * q_heads * head_dim * sum(max(int(c), 0) for c in context_lens)


def paged_decode_bytes(context_lens, q_heads: int, kv_heads: int, head_dim: int, page_size: int,
                       max_blocks: int, dtype: str) -> dict:
    """page_attention: K and V of the pages the contexts use (2 * Hk * D per token of whole
    pages), query and output (2 * B * Hq * D), block table and context lengths (int32)."""
    b = len(context_lens)
    n = itemsize(dtype)
    parts = {
        "cache": 2 * paged_tokens(context_lens, page_size) * kv_heads * head_dim * n,
        "io": 2 * b * q_heads * head_dim * n,
        "tables": (b * max_blocks + b) * INT32,
    }
    parts["total"] = sum(parts.values())
    return parts


def ridge_point(matmul_flops_per_s: float, copy_bytes_per_s: float) -> float:
    """FLOPs per byte at which the measured matmul rate and copy bandwidth meet."""
    return matmul_flops_per_s / copy_bytes_per_s


def bound(flops: float, nbytes: float, matmul_flops_per_s: float, copy_bytes_per_s: float) -> str:
    """"compute" when the arithmetic intensity reaches the measured ridge point, else "memory"."""
    return "compute" if flops / nbytes >= ridge_point(matmul_flops_per_s, copy_bytes_per_s) else "memory"


def roofline(flops: float, nbytes: float, seconds: float, matmul_flops_per_s: float | None,
             copy_bytes_per_s: float | None) -> dict:
    """The rates of one timed call and, where the device's rates were measured, their
    fractions, the bound and the attainable fraction (rate over the roofline at this
    intensity). Keys: tflops, gbps, intensity, and (with both device rates) frac_matmul,
    frac_copy, ridge, bound, frac_roofline."""
    out = {"tflops": flops / seconds / 1e12, "gbps": nbytes / seconds / 1e9,
           "intensity": flops / nbytes if nbytes else None}
    if matmul_flops_per_s and copy_bytes_per_s:
        attainable = min(matmul_flops_per_s, out["intensity"] * copy_bytes_per_s)
        out.update(frac_matmul=flops / seconds / matmul_flops_per_s,
                   frac_copy=nbytes / seconds / copy_bytes_per_s,
                   ridge=ridge_point(matmul_flops_per_s, copy_bytes_per_s),
                   bound=bound(flops, nbytes, matmul_flops_per_s, copy_bytes_per_s),
                   frac_roofline=flops / seconds / attainable)
    return out

"""Static-argument normalization and call hooks for `page_attention` (no jax import)."""
from __future__ import annotations

import math

# ejkernel's extra call arguments. They only steer how the TPU kernel is
# scheduled (or are unused there), never what it computes; in ejaot the per-target
# config decides them, so a call may pass them and they are dropped.
EJKERNEL_CALL_KWARGS = ("max_context_len", "num_splits", "mask_value", "pages_per_compute_block",
                    "megacore_mode", "inline_seq_dim")


def norm_attn_scale(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"attn_scale must be a finite number or none, got {v!r}")
    return float(v)


def norm_sliding_window(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"sliding_window must be a positive int (tokens) or none, got {v!r}")
    return int(v)


def prepare_call(inputs, static):
    for name in EJKERNEL_CALL_KWARGS:
        static.pop(name, None)

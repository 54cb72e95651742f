"""`flash_attention` in plain jax.numpy: the reference, the fallback, and the backend for
platforms without a kernel. Differentiable by ordinary autodiff."""
from __future__ import annotations

import jax.numpy as jnp

from ejaot_kernels.attention.xla import attention_impl


def segment_mask(q_segment_ids, kv_segment_ids):
    """[batch, 1, seq, kv_seq] bool, or None."""
    if q_segment_ids is None and kv_segment_ids is None:
        return None
    if q_segment_ids is None or kv_segment_ids is None:
        raise ValueError("flash_attention: give both q_segment_ids and kv_segment_ids, or neither")
    return (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])[:, None]


def flash_attention_impl(inputs, valid_lens, *, config, causal, sliding_window, logits_soft_cap,
                         softmax_scale):
    mask = segment_mask(inputs.get("q_segment_ids"), inputs.get("kv_segment_ids"))
    bias = inputs.get("bias")
    if mask is not None and bias is not None:
        # attention() lets bias take precedence over a mask; segments must hold with a bias too
        bias = jnp.where(mask, bias.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        mask = None
    q = inputs["query"]
    attn_inputs = {"query": q, "key": inputs["key"], "value": inputs["value"],
                   "attention_mask": mask, "bias": bias, "softmax_aux": None}
    return attention_impl(attn_inputs, valid_lens, config={}, causal=causal, sliding_window=sliding_window,
                          logits_soft_cap=logits_soft_cap, softmax_scale=softmax_scale, dtype=None,
                          softmax_dtype="float32", return_weights=False)

"""`flash_attention` in plain jax.numpy: the reference, the fallback, and the backend for
platforms without a kernel. Differentiable by ordinary autodiff."""
from __future__ import annotations

from ejaot_kernels.attention.xla import attention_core


def segment_mask(q_segment_ids, kv_segment_ids):
    """[batch, 1, seq, kv_seq] bool, or None."""
    if q_segment_ids is None and kv_segment_ids is None:
        return None
    if q_segment_ids is None or kv_segment_ids is None:
        raise ValueError("flash_attention: give both q_segment_ids and kv_segment_ids, or neither")
    return (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])[:, None]


def flash_attention_impl(inputs, valid_lens, *, config, causal, sliding_window, logits_soft_cap,
                         softmax_scale):
    (out,) = attention_core(inputs["query"], inputs["key"], inputs["value"], valid_lens,
                            bias=inputs.get("bias"),
                            keep_mask=segment_mask(inputs.get("q_segment_ids"), inputs.get("kv_segment_ids")),
                            causal=causal, sliding_window=sliding_window, logits_soft_cap=logits_soft_cap,
                            softmax_scale=softmax_scale, softmax_dtype="float32")
    return (out,)

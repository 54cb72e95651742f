"""`page_attention` in plain jax.numpy: the XLA implementation for every platform, and the
reference and fallback for the Pallas TPU kernel."""
from __future__ import annotations

import jax.numpy as jnp


def page_attention_impl(inputs, valid_lens, *, config, attn_scale, attn_logits_soft_cap,
                        sliding_window):
    q, kc, vc = inputs["query"], inputs["key_cache"], inputs["value_cache"]
    tables = inputs["block_tables"]
    s, hq, d = q.shape
    hk, _, ps, _ = kc.shape
    mb = tables.shape[1]
    g, t = hq // hk, mb * ps
    scale = attn_scale if attn_scale is not None else d ** -0.5

    # Gather every sequence's pages: [kv_heads, num_seqs, max_blocks * page_size, head_dim].
    # mode="clip": table entries past a context may be garbage, and must not fault.
    k = jnp.take(kc, tables, axis=1, mode="clip").reshape(hk, s, t, d)
    v = jnp.take(vc, tables, axis=1, mode="clip").reshape(hk, s, t, d)

    ctx = jnp.clip(inputs["context_lens"], 0, t)[:, None]
    pos = jnp.arange(t, dtype=jnp.int32)[None, :]
    keep = pos < ctx                                              # [num_seqs, t]
    if sliding_window is not None:
        keep &= pos >= ctx - sliding_window

    qg = q.reshape(s, hk, g, d)
    logits = jnp.einsum("skgd,kstd->skgt", qg, k.astype(q.dtype), preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(scale)
    if attn_logits_soft_cap is not None:
        logits = attn_logits_soft_cap * jnp.tanh(logits / attn_logits_soft_cap)
    keep4 = keep[:, None, None, :]
    logits = jnp.where(keep4, logits, jnp.finfo(jnp.float32).min)
    m = logits.max(axis=-1, keepdims=True)
    p = jnp.where(keep4, jnp.exp(logits - m), 0)
    denom = p.sum(axis=-1, keepdims=True)
    probs = p / jnp.where(denom == 0, 1, denom)                   # context 0 -> zeros, not NaN
    # Values past the context get zero weight, but 0 * NaN is NaN: drop them outright.
    v = jnp.where(keep[None, :, :, None], v, 0).astype(q.dtype)
    out = jnp.einsum("skgt,kstd->skgd", probs.astype(q.dtype), v, preferred_element_type=jnp.float32)
    return (out.reshape(s, hq, d).astype(q.dtype),)

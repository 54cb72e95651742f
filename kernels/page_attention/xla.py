"""`page_attention` in plain jax.numpy: the XLA implementation for every platform, and the
reference and fallback for the Pallas TPU kernel."""
from __future__ import annotations

import jax
import jax.numpy as jnp


# Largest gathered K (or V) copy per step, in elements: above it the sequences are
# processed in chunks (a 256 x 32k-token bucket would otherwise gather 68 GB in float32).
_MAX_GATHER_ELEMENTS = 1 << 27


def page_attention_impl(inputs, valid_lens, *, config, attn_scale, attn_logits_soft_cap,
                        sliding_window):
    q, kc, vc = inputs["query"], inputs["key_cache"], inputs["value_cache"]
    tables, ctx = inputs["block_tables"], inputs["context_lens"]
    s, hq, d = q.shape
    hk, _, ps, _ = kc.shape
    mb = tables.shape[1]
    scale = attn_scale if attn_scale is not None else d ** -0.5

    def attend(q, tables, ctx):
        return _attend(q, kc, vc, tables, ctx, scale, attn_logits_soft_cap, sliding_window)

    chunk = max(1, _MAX_GATHER_ELEMENTS // (hk * mb * ps * d))
    if chunk >= s:
        return (attend(q, tables, ctx),)
    n = -(-s // chunk)
    pad = n * chunk - s      # padded rows get context 0: zeros, sliced off below

    def split(x):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((n, chunk) + x.shape[1:])
    out = jax.lax.map(lambda xs: attend(*xs), (split(q), split(tables), split(ctx)))
    return (out.reshape((n * chunk,) + out.shape[2:])[:s],)


def _attend(q, kc, vc, tables, ctx, scale, attn_logits_soft_cap, sliding_window):
    s, hq, d = q.shape
    hk, _, ps, _ = kc.shape
    mb = tables.shape[1]
    g, t = hq // hk, mb * ps

    # Gather every sequence's pages: [kv_heads, num_seqs, max_blocks * page_size, head_dim].
    # mode="clip": table entries past a context may be garbage, and must not fault.
    k = jnp.take(kc, tables, axis=1, mode="clip").reshape(hk, s, t, d)
    v = jnp.take(vc, tables, axis=1, mode="clip").reshape(hk, s, t, d)

    ctx = jnp.clip(ctx, 0, t)[:, None]
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
    return out.reshape(s, hq, d).astype(q.dtype)

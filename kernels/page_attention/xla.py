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


def token_keep(tables, ctx, total_pages, page_size, sliding_window=None):
    """[num_seqs, max_blocks * page_size] bool: the tokens a sequence attends to (the
    module docstring's rule, shared by every backend). Token t of sequence s is kept when
    lo <= t < ctx (lo = ctx - sliding_window, else 0; negative contexts count as 0), t lies
    within the block table (t < max_blocks * page_size) and its page
    block_tables[s, t // page_size] names a page of the cache (0 <= page < total_pages).
    One compare and select per page, then a broadcast over the page's tokens."""
    s, mb = tables.shape
    t = mb * page_size
    ctx = jnp.maximum(ctx.astype(jnp.int32), 0)[:, None]
    pos = jnp.arange(t, dtype=jnp.int32)[None, :]
    keep = pos < ctx                                   # pos < t always: clamped to the table
    if sliding_window is not None:
        keep &= pos >= ctx - sliding_window
    page_ok = (tables >= 0) & (tables < total_pages)   # [num_seqs, max_blocks]
    return keep & jnp.repeat(page_ok, page_size, axis=1, total_repeat_length=t)


def safe_pages(tables, total_pages):
    """The block table with every out-of-range entry replaced by page 0: what a gather may
    read without faulting. The tokens of those entries are masked out (token_keep), so
    what page 0 holds never reaches the output."""
    tables = tables.astype(jnp.int32)
    return jnp.where((tables >= 0) & (tables < total_pages), tables, 0)


def _attend(q, kc, vc, tables, ctx, scale, attn_logits_soft_cap, sliding_window):
    s, hq, d = q.shape
    hk, pages, ps, _ = kc.shape
    mb = tables.shape[1]
    g, t = hq // hk, mb * ps

    keep = token_keep(tables, ctx, pages, ps, sliding_window)      # [num_seqs, t]
    # Gather every sequence's pages: [kv_heads, num_seqs, max_blocks * page_size, head_dim].
    # Entries out of range (or past a context: they may be garbage) read page 0, masked.
    idx = safe_pages(tables, pages)
    k = jnp.take(kc, idx, axis=1, mode="clip").reshape(hk, s, t, d)
    v = jnp.take(vc, idx, axis=1, mode="clip").reshape(hk, s, t, d)

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
    probs = p / jnp.where(denom == 0, 1, denom)                   # nothing kept -> zeros, not NaN
    # Values of tokens not kept get zero weight, but 0 * NaN is NaN: drop them outright.
    v = jnp.where(keep[None, :, :, None], v, 0).astype(q.dtype)
    out = jnp.einsum("skgt,kstd->skgd", probs.astype(q.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(s, hq, d).astype(q.dtype)

"""`paged_mla_attention` in plain jax.numpy: the XLA implementation for every platform, and
the reference and fallback for the Triton kernel. The absorbed form (attend in the latent
space every head shares): a decode step never decompresses the cache."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ejaot_kernels.mla_attention.xla import default_scale, masked_softmax

F32 = jnp.float32

# Largest gathered latent-cache copy per step, in elements: above it the sequences are
# processed in chunks (256 sequences x 32k tokens x rank 512 would gather 8.6 GB in bf16).
_MAX_GATHER_ELEMENTS = 1 << 27


def gather_pages(cache, tables, ctx):
    """[num_seqs, max_blocks * page_size, width]: each sequence's cache rows in token
    order, rows past its context zeroed (they may hold NaN; 0 * NaN would leak), and the
    keep mask [num_seqs, tokens]. Table entries are clipped to the cache, never a fault."""
    s, mb = tables.shape
    _, ps, w = cache.shape
    rows = jnp.take(cache, tables, axis=0, mode="clip").reshape(s, mb * ps, w)
    keep = jnp.arange(mb * ps, dtype=jnp.int32)[None, :] < ctx[:, None]
    return jnp.where(keep[:, :, None], rows, 0), keep


def unpack(inputs):
    """(query, latent_cache, w_kc, w_vc, block_tables, context_lens, b_q, rope_cache); the
    last two None when absent. Both backends take their inputs this way."""
    return (inputs["query"], inputs["latent_cache"], inputs["w_kc"], inputs["w_vc"], inputs["block_tables"],
            inputs["context_lens"], inputs.get("b_q"), inputs.get("rope_cache"))


def paged_mla_attention_impl(inputs, valid_lens, *, config, softmax_scale):
    q, cache, w_kc, w_vc, tables, ctx, b_q, rope_cache = unpack(inputs)
    s, hq, d = q.shape
    _, ps, r = cache.shape
    mb = tables.shape[1]
    scale = default_scale(d, b_q.shape[-1] if b_q is not None else 0, softmax_scale)
    ctx = jnp.clip(ctx.astype(jnp.int32), 0, mb * ps)
    tables = tables.astype(jnp.int32)

    def attend(xs):
        return _attend(*xs, cache, rope_cache, w_kc, w_vc, scale)

    chunk = max(1, _MAX_GATHER_ELEMENTS // (mb * ps * r))
    if chunk >= s:
        return (attend((q, tables, ctx, b_q)),)
    n = -(-s // chunk)
    pad = n * chunk - s      # padded rows get context 0: zeros, sliced off below

    def split(x):
        if x is None:
            return None
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((n, chunk) + x.shape[1:])
    out = jax.lax.map(attend, (split(q), split(tables), split(ctx), split(b_q)))
    return (out.reshape((n * chunk,) + out.shape[2:])[:s],)


def _attend(q, tables, ctx, b_q, cache, rope_cache, w_kc, w_vc, scale):
    s, hq, d = q.shape
    hk = w_kc.shape[1]
    cdt = q.dtype                 # matmul inputs stay in the caller's dtype; accumulate in f32
    kv, keep = gather_pages(cache.astype(cdt), tables, ctx)                      # [s, t, r]
    q_lat = jnp.einsum("skgd,rkd->skgr", q.reshape(s, hk, hq // hk, d), w_kc.astype(cdt),
                       preferred_element_type=F32).astype(cdt)
    logits = jnp.einsum("skgr,str->skgt", q_lat, kv, preferred_element_type=F32)
    if b_q is not None:
        # the rope part is shared by every head: one [s, t] term broadcast over heads
        bk, _ = gather_pages(rope_cache.astype(cdt), tables, ctx)
        logits = logits + jnp.einsum("se,ste->st", b_q.astype(cdt), bk, preferred_element_type=F32)[:, None, None]
    probs = masked_softmax(logits * jnp.asarray(scale, F32), keep[:, None, None, :])
    out_lat = jnp.einsum("skgt,str->skgr", probs.astype(cdt), kv, preferred_element_type=F32)
    # out_lat stays f32 into the (small) up-projection: it is a sum over t keys
    out = jnp.einsum("skgr,rkd->skgd", out_lat, w_vc.astype(F32), preferred_element_type=F32)
    return out.reshape(s, hq, d).astype(q.dtype)

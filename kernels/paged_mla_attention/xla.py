"""`paged_mla_attention` in plain jax.numpy: the XLA implementation for every platform, and
the reference and fallback for the Triton kernel. The absorbed form (attend in the latent
space every head shares): a decode step never decompresses the cache."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ejaot_kernels._shared.mla_projections import absorb_query, expand_output
from ejaot_kernels.mla_attention.xla import default_scale, masked_softmax
from ejaot_kernels.page_attention.xla import safe_pages, token_keep

F32 = jnp.float32

# Largest gathered latent-cache copy per step, in elements: above it the sequences are
# processed in chunks (256 sequences x 32k tokens x rank 512 would gather 8.6 GB in bf16).
_MAX_GATHER_ELEMENTS = 1 << 27


def gather_pages(cache, tables, ctx):
    """[num_seqs, max_blocks * page_size, width]: each sequence's cache rows in token
    order, and the keep mask [num_seqs, tokens] (page_attention.xla.token_keep: tokens
    before the context's end, inside the table, on pages of the cache). Rows not kept are
    zeroed (they may hold NaN; 0 * NaN would leak); out-of-range table entries read page
    0, never a fault, and are masked."""
    s, mb = tables.shape
    pages, ps, w = cache.shape
    keep = token_keep(tables, ctx, pages, ps)
    rows = jnp.take(cache, safe_pages(tables, pages), axis=0, mode="clip").reshape(s, mb * ps, w)
    return jnp.where(keep[:, :, None], rows, 0), keep


def unpack(inputs):
    """(query, latent_cache, w_kc, w_vc, block_tables, context_lens, b_q, rope_cache); the
    last two None when absent. Every backend takes its inputs this way."""
    return (inputs["query"], inputs["latent_cache"], inputs["w_kc"], inputs["w_vc"], inputs["block_tables"],
            inputs["context_lens"], inputs.get("b_q"), inputs.get("rope_cache"))


def call_dims(q, cache, w_kc, tables, b_q) -> dict:
    """The kernel's dims for these arrays (what its configs are chosen from)."""
    s, hq, d = q.shape
    pages, ps, r = cache.shape
    return dict(num_seqs=s, q_heads=hq, kv_heads=w_kc.shape[1], head_dim=d, kv_lora_rank=r,
                rope_dim=b_q.shape[-1] if b_q is not None else 0, total_pages=pages, page_size=ps,
                max_blocks=tables.shape[1])


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
    s, hq, _ = q.shape
    hk = w_kc.shape[1]
    cdt = q.dtype                 # matmul inputs stay in the caller's dtype; accumulate in f32
    kv, keep = gather_pages(cache.astype(cdt), tables, ctx)                      # [s, t, r]
    q_lat = absorb_query(q, w_kc).reshape(s, hk, hq // hk, cache.shape[-1])
    logits = jnp.einsum("skgr,str->skgt", q_lat, kv, preferred_element_type=F32)
    if b_q is not None:
        # the rope part is shared by every head: one [s, t] term broadcast over heads
        bk, _ = gather_pages(rope_cache.astype(cdt), tables, ctx)
        logits = logits + jnp.einsum("se,ste->st", b_q.astype(cdt), bk, preferred_element_type=F32)[:, None, None]
    probs = masked_softmax(logits * jnp.asarray(scale, F32), keep[:, None, None, :])
    out_lat = jnp.einsum("skgt,str->skgr", probs.astype(cdt), kv, preferred_element_type=F32)
    return expand_output(out_lat.reshape(s, hq, cache.shape[-1]), w_vc, q.dtype)

"""`paged_mla_attention` in Triton (through jax-triton): the MLA decode kernels that
mla_attention runs too (the shared Triton MLA library, kernels/_shared/mla_triton.py) with
the latent cache and rope keys read page by page through the block table, between the same
two XLA projections (kernels/_shared/mla_projections.py):

  1. XLA: q_lat[s, h] = q[s, h] @ w_kc[:, g(h)]^T
  2. Triton: for each (sequence, block of 64 heads, kv split) one program streams the
     sequence's pages once for all its heads. On Hopper the warp-specialized Gluon kernel
     TMA-loads each 64-key block as one box (pages of a multiple of 64 keys) or one box
     per page (pages of 8, 16 or 32 keys); the tl.dot kernel (other page sizes, other
     GPUs, float32) looks every key's page up. Rows of the last block past the context
     are zeroed in shared memory before p @ kv (they may hold NaN). Keys whose block-table
     entry is out of range are masked out and never read from another page (the tl.dot
     kernel skips their loads; the Gluon kernels aim their TMA past the cache's end,
     which reads zeros, and drop their logits).
  3. XLA: out[s, h] = out_lat[s, h] @ w_vc[:, g(h)].

Only importable where triton is installed; jax and jax_triton are imported on first call.
"""
from __future__ import annotations

from ejaot_kernels._shared.mla_projections import absorb_query, expand_output
from ejaot_kernels._shared.mla_triton import latent_attention, latent_dtype, make_static
from ejaot_kernels.mla_attention.xla import default_scale
from ejaot_kernels.triton_support import resolve_config

from .configs import decode_dims, triton_heuristic
from .xla import call_dims, unpack


def paged_mla_attention_impl(inputs, valid_lens, *, config, softmax_scale):
    import jax.numpy as jnp
    q, cache, w_kc, w_vc, tables, ctx, b_q, rope_cache = unpack(inputs)
    d, ps = q.shape[-1], cache.shape[1]
    if q.shape[0] == 0:      # no sequences: an empty grid
        return (jnp.zeros(q.shape, q.dtype),)
    dims = call_dims(q, cache, w_kc, tables, b_q)
    cfg = resolve_config("paged_mla_attention", config, triton_heuristic, dims,
                         {"softmax_scale": softmax_scale})
    st = make_static(cfg, decode_dims(dims), jnp.dtype(q.dtype).itemsize, page_size=ps)
    out_lat = latent_attention(
        st, absorb_query(q[:, None], w_kc), None if b_q is None else b_q[:, None], cache, rope_cache,
        ctx, scale=default_scale(d, dims["rope_dim"], softmax_scale), causal=False,
        out_dtype=latent_dtype(q.dtype), block_tables=tables)
    return (expand_output(out_lat, w_vc, q.dtype)[:, 0],)

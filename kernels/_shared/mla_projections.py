"""The absorbed MLA form's two projections in XLA, shared by paged_mla_attention's XLA and
Pallas TPU backends and by the Triton MLA library (mla_triton.py: mla_attention's and
paged_mla_attention's Triton backends):

  absorb_query   q_lat[..., h] = q[..., h] @ w_kc[:, g(h)]^T
  expand_output  out[..., h] = out_lat[..., h] @ w_vc[:, g(h)]

Leading dims are any ([num_seqs] paged, [batch, seq] otherwise); g(h) is query head h's kv
head (GQA groups). Matmul inputs are the caller's dtype (out_lat's for the second) with
float32 accumulation, and float32 callers get exact float32 products (Precision.HIGHEST:
XLA would otherwise round f32 operands to bf16 on TPU and to tf32 on GPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _precision(dtype):
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def absorb_query(q, w_kc):
    """q [..., q_heads, head_dim] -> q_lat [..., q_heads, rank] in q's dtype."""
    *lead, hq, d = q.shape
    r, hk = w_kc.shape[:2]
    q_lat = jnp.einsum("...kgd,rkd->...kgr", q.reshape(*lead, hk, hq // hk, d), w_kc.astype(q.dtype),
                       preferred_element_type=jnp.float32, precision=_precision(q.dtype))
    return q_lat.astype(q.dtype).reshape(*lead, hq, r)


def expand_output(out_lat, w_vc, dtype):
    """out_lat [..., q_heads, rank] -> out [..., q_heads, head_dim] in `dtype` (the caller's).
    w_vc meets out_lat in out_lat's dtype: float32 where out_lat is (a sum over every key,
    kept in f32 into this small up-projection by the XLA and Pallas backends), the caller's
    16-bit dtype where the Triton kernel wrote it so (mla_triton.latent_dtype)."""
    *lead, hq, r = out_lat.shape
    hk, d = w_vc.shape[1:]
    out = jnp.einsum("...kgr,rkd->...kgd", out_lat.reshape(*lead, hk, hq // hk, r),
                     w_vc.astype(out_lat.dtype), preferred_element_type=jnp.float32,
                     precision=_precision(dtype))
    return out.reshape(*lead, hq, d).astype(dtype)

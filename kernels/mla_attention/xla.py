"""`mla_attention` in plain jax.numpy: the XLA implementation for every platform, and the
reference and fallback for the Pallas kernel.

Two algebraically equal forms (see configs.choose_form for when each is cheaper):
  naive     K_h = kv @ w_kc[:, g(h)], V_h = kv @ w_vc[:, g(h)]; ordinary attention.
  absorbed  q_lat_h = q_h @ w_kc[:, g(h)]^T; logits = q_lat_h · kv; out_lat = p @ kv;
            out_h = out_lat @ w_vc[:, g(h)]. Attention runs in the rank-wide latent space
            that every head shares, and per-head K/V are never materialized.
"""
from __future__ import annotations

import jax.numpy as jnp

from ejaot_kernels.attention.xla import key_mask

from .configs import choose_form, norm_form

F32 = jnp.float32


def default_scale(head_dim, rope_dim, softmax_scale):
    # The logit is a (head_dim + rope_dim)-wide dot product when the rope part is given.
    return softmax_scale if softmax_scale is not None else (head_dim + rope_dim) ** -0.5


def visible(valid_lens, s, t, causal, cu_seqlens):
    """[s, t] bool: keys each query may see. Queries sit bottom-right (query i at position
    i + kv_len - q_len); keys >= kv_len are padding. With cu_seqlens, a query sees only
    keys of its own packed sequence; tokens outside [cu[0], cu[-1]) belong to none."""
    q_len, kv_len = valid_lens[0], valid_lens[1]
    keep = key_mask(q_len, kv_len, s, t, causal, None)
    if cu_seqlens is not None:
        cu = cu_seqlens.astype(jnp.int32)
        q_pos = jnp.arange(s, dtype=jnp.int32) + (kv_len - q_len)
        k_pos = jnp.arange(t, dtype=jnp.int32)

        def seq_id(pos):
            inside = (pos >= cu[0]) & (pos < cu[-1])
            return jnp.where(inside, jnp.searchsorted(cu, pos, side="right") - 1, -1)
        sq, sk = seq_id(q_pos), seq_id(k_pos)
        keep &= (sq[:, None] == sk[None, :]) & (sq[:, None] >= 0)
    return keep


def masked_softmax(logits, keep):
    """Softmax over kept keys in f32; a row with no kept key is all zeros (not NaN)."""
    logits = jnp.where(keep, logits, jnp.finfo(F32).min)
    p = jnp.where(keep, jnp.exp(logits - logits.max(axis=-1, keepdims=True)), 0)
    denom = p.sum(axis=-1, keepdims=True)
    return p / jnp.where(denom == 0, 1, denom)


def mla_attention_impl(inputs, valid_lens, *, config, causal, softmax_scale):
    q, kv, w_kc, w_vc = inputs["query"], inputs["key_value"], inputs["w_kc"], inputs["w_vc"]
    b_q, b_k, cu = inputs.get("b_q"), inputs.get("b_k"), inputs.get("cu_seqlens")
    b, s, hq, d = q.shape
    t, r = kv.shape[1], kv.shape[2]
    hk = w_kc.shape[1]
    g = hq // hk
    rope = b_q.shape[-1] if b_q is not None else 0
    scale = default_scale(d, rope, softmax_scale)
    form = norm_form(config) or choose_form(dict(batch=b, seq=s, kv_seq=t, q_heads=hq, kv_heads=hk,
                                                 head_dim=d, kv_lora_rank=r))
    cdt = q.dtype                       # matmul inputs stay in the caller's dtype; accumulate in f32
    kv, w_kc, w_vc = kv.astype(cdt), w_kc.astype(cdt), w_vc.astype(cdt)
    qg = q.reshape(b, s, hk, g, d)

    if form == "naive":
        key = jnp.einsum("btr,rkd->btkd", kv, w_kc, preferred_element_type=F32).astype(cdt)
        logits = jnp.einsum("bskgd,btkd->bkgst", qg, key, preferred_element_type=F32)
    else:
        q_lat = jnp.einsum("bskgd,rkd->bkgsr", qg, w_kc, preferred_element_type=F32).astype(cdt)
        logits = jnp.einsum("bkgsr,btr->bkgst", q_lat, kv, preferred_element_type=F32)
    if b_q is not None:
        # the rope part is shared by every head: one [b, s, t] term broadcast over heads
        rope_logits = jnp.einsum("bsr,btr->bst", b_q.astype(cdt), b_k.astype(cdt), preferred_element_type=F32)
        logits = logits + rope_logits[:, None, None]
    logits = logits * jnp.asarray(scale, F32)
    probs = masked_softmax(logits, visible(valid_lens, s, t, causal, cu)[None, None, None])

    if form == "naive":
        value = jnp.einsum("btr,rkd->btkd", kv, w_vc, preferred_element_type=F32).astype(cdt)
        out = jnp.einsum("bkgst,btkd->bskgd", probs.astype(cdt), value, preferred_element_type=F32)
    else:
        # heads stay leading in out_lat: XLA:CPU has no bf16 x bf16 -> f32 dot for the
        # layout a "->bskgr" output asks for
        out_lat = jnp.einsum("bkgst,btr->bkgsr", probs.astype(cdt), kv, preferred_element_type=F32)
        # out_lat stays f32 into the (small) up-projection: it is a sum over t keys
        out = jnp.einsum("bkgsr,rkd->bskgd", out_lat, w_vc.astype(F32), preferred_element_type=F32)
    return (out.reshape(b, s, hq, d).astype(q.dtype),)

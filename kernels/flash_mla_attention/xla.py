"""`flash_mla_attention` in plain jax.numpy: the reference, the fallback, and the backend
for buckets the kernel backends leave (it materializes the scores)."""
from __future__ import annotations

import jax.numpy as jnp

from ejaot_kernels.mla_attention.xla import masked_softmax

F32 = jnp.float32


def flash_mla_attention_impl(inputs, valid_lens, *, config, causal, softmax_scale):
    q, k, v = inputs["query"], inputs["key"], inputs["value"]
    lk, lv, bias = inputs["latent_key"], inputs["latent_value"], inputs.get("bias")
    s, latent = q.shape[2], lk.shape[1]
    cdt = q.dtype
    lk, lv = lk.astype(cdt), lv.astype(cdt)
    scale = softmax_scale if softmax_scale is not None else latent ** -0.5
    # Project once per token (s·d·L) rather than folding latent_key @ latent_key^T into
    # a d×d matrix: the logits are then L wide, which is the point of the latent space.
    q_l = jnp.einsum("bhsd,dl->bhsl", q, lk, preferred_element_type=F32).astype(cdt)
    k_l = jnp.einsum("bhsd,dl->bhsl", k.astype(cdt), lk, preferred_element_type=F32).astype(cdt)
    v_l = jnp.einsum("bhsd,dl->bhsl", v.astype(cdt), lv, preferred_element_type=F32).astype(cdt)
    logits = jnp.einsum("bhsl,bhtl->bhst", q_l, k_l, preferred_element_type=F32) * jnp.asarray(scale, F32)
    if bias is not None:
        logits = logits + bias.astype(F32)
    pos = jnp.arange(s, dtype=jnp.int32)
    keep = pos[None, :] < valid_lens[0]
    if causal:
        keep = keep & (pos[None, :] <= pos[:, None])
    probs = masked_softmax(logits, keep[None, None])
    out_l = jnp.einsum("bhst,bhtl->bhsl", probs.astype(cdt), v_l, preferred_element_type=F32)
    out = jnp.einsum("bhsl,dl->bhsd", out_l, lv.astype(F32), preferred_element_type=F32)
    return (out.astype(q.dtype),)

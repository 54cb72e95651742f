"""`attention` in plain jax.numpy: the XLA implementation for every platform, and the
reference and last-resort fallback for the other backends."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def key_mask(q_len, kv_len, s, t, causal, sliding_window):
    """[s, t] bool: which keys each query may see. Queries sit at the end of the key
    range (bottom-right alignment); keys at or past kv_len are padding."""
    q_pos = jnp.arange(s, dtype=jnp.int32)[:, None] + (kv_len - q_len)
    k_pos = jnp.arange(t, dtype=jnp.int32)[None, :]
    keep = k_pos < kv_len
    if causal:
        keep &= k_pos <= q_pos
    if sliding_window is not None:
        left, right = sliding_window
        keep &= (k_pos >= q_pos - left) & (k_pos <= q_pos + right)
    return keep


def attention_impl(inputs, valid_lens, *, config, causal, sliding_window, logits_soft_cap,
                   softmax_scale, dtype, softmax_dtype, return_weights):
    mask, bias = inputs.get("attention_mask"), inputs.get("bias")
    return attention_core(inputs["query"], inputs["key"], inputs["value"], valid_lens,
                          bias=bias, keep_mask=mask if bias is None else None,  # as ejkernel: bias wins
                          sinks=inputs.get("softmax_aux"), causal=causal, sliding_window=sliding_window,
                          logits_soft_cap=logits_soft_cap, softmax_scale=softmax_scale, dtype=dtype,
                          softmax_dtype=softmax_dtype, return_weights=return_weights)


def attention_core(q, k, v, valid_lens, *, bias=None, keep_mask=None, sinks=None, causal=False,
                   sliding_window=None, logits_soft_cap=None, softmax_scale=None, dtype=None,
                   softmax_dtype=None, return_weights=False):
    """keep_mask: [batch, 1, seq, kv_seq] bool, applied together with any bias."""
    cdt = jnp.dtype(dtype) if dtype else q.dtype
    sdt = jnp.dtype(softmax_dtype or "float32")
    b, s, hq, d = q.shape
    t, hk, dv = k.shape[1], k.shape[2], v.shape[3]
    g = hq // hk
    scale = softmax_scale if softmax_scale is not None else d ** -0.5

    # float32 means float32 products: XLA:GPU would otherwise run these dots in tf32 and
    # pick the algorithm per compilation (two compiles of one entry then disagree at 1e-3).
    prec = jax.lax.Precision.HIGHEST if cdt == jnp.float32 else None
    qg = q.astype(cdt).reshape(b, s, hk, g, d)
    logits = jnp.einsum("bskgd,btkd->bkgst", qg, k.astype(cdt), preferred_element_type=sdt,
                        precision=prec)
    logits = logits.astype(sdt) * jnp.asarray(scale, sdt)
    if logits_soft_cap is not None:
        logits = logits_soft_cap * jnp.tanh(logits / logits_soft_cap)
    if bias is not None:
        logits = logits + bias.astype(sdt).reshape(b, hk, g, s, t)

    keep = key_mask(valid_lens[0], valid_lens[1], s, t, causal, sliding_window)[None, None, None]
    if keep_mask is not None:
        keep = keep & keep_mask.reshape(b, 1, 1, s, t)
    lowest = jnp.finfo(sdt).min
    logits = jnp.where(keep, logits, lowest)

    m = logits.max(axis=-1, keepdims=True)
    if sinks is not None:
        sink_logits = sinks.astype(sdt).reshape(1, hk, g, 1, -1)
        m = jnp.maximum(m, sink_logits.max(axis=-1, keepdims=True))
    p = jnp.where(keep, jnp.exp(logits - m), 0)
    denom = p.sum(axis=-1, keepdims=True)
    if sinks is not None:
        denom = denom + jnp.exp(sink_logits - m).sum(axis=-1, keepdims=True)
    probs = p / jnp.where(denom == 0, 1, denom)

    out = jnp.einsum("bkgst,btkd->bskgd", probs.astype(cdt), v.astype(cdt), preferred_element_type=sdt,
                     precision=prec)
    out = out.reshape(b, s, hq, dv).astype(cdt)
    if return_weights:
        return out, probs.reshape(b, hq, s, t).astype(cdt)
    return (out,)


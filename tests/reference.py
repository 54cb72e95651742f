"""Float64 NumPy references, written independently of the kernels they check."""
from __future__ import annotations

import numpy as np


def attention_reference(query, key, value, attention_mask=None, bias=None, softmax_aux=None, *,
                        causal=False, sliding_window=None, logits_soft_cap=None,
                        softmax_scale=None, return_weights=False, **_):
    q, k, v = (np.asarray(x, np.float64) for x in (query, key, value))
    b, s, hq, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    group = hq // hk
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    out = np.zeros((b, s, hq, v.shape[3]))
    weights = np.zeros((b, hq, s, t))
    if isinstance(sliding_window, int):
        sliding_window = (sliding_window, sliding_window)
    for h in range(hq):
        kh = h // group
        logits = np.einsum("bsd,btd->bst", q[:, :, h], k[:, :, kh]) * scale
        if logits_soft_cap is not None:
            logits = logits_soft_cap * np.tanh(logits / logits_soft_cap)
        if bias is not None:
            logits = logits + np.asarray(bias, np.float64)[:, h]
        keep = np.ones((b, s, t), bool)
        qpos = np.arange(s)[:, None] + (t - s)
        kpos = np.arange(t)[None, :]
        if causal:
            keep &= kpos <= qpos
        if sliding_window is not None:
            keep &= (kpos >= qpos - sliding_window[0]) & (kpos <= qpos + sliding_window[1])
        if bias is None and attention_mask is not None:
            keep &= np.asarray(attention_mask)[:, 0]
        sinks = None if softmax_aux is None else np.asarray(softmax_aux, np.float64)
        for bi in range(b):
            for i in range(s):
                row = logits[bi, i][keep[bi, i]]
                extra = sinks[h] if sinks is not None else np.zeros(0)
                if row.size + extra.size == 0:
                    continue
                m = max(row.max(initial=-np.inf), extra.max(initial=-np.inf))
                e = np.exp(row - m)
                p = e / (e.sum() + np.exp(extra - m).sum())
                full = np.zeros(t)
                full[keep[bi, i]] = p
                weights[bi, h, i] = full
                out[bi, i, h] = full @ v[bi, :, kh]
    return (out, weights) if return_weights else out


def softmax_rows(logits, keep):
    """Softmax over kept entries of the last axis; rows with none kept are zeros."""
    z = np.where(keep, logits, -np.inf)
    m = z.max(axis=-1, keepdims=True)
    e = np.where(keep, np.exp(z - np.where(np.isfinite(m), m, 0)), 0.0)
    den = e.sum(axis=-1, keepdims=True)
    return e / np.where(den == 0, 1, den)


def flash_mla_reference(query, key, value, latent_key, latent_value, bias=None, *, causal=False,
                        softmax_scale=None):
    q, k, v, lk, lv = (np.asarray(x, np.float64) for x in (query, key, value, latent_key, latent_value))
    scale = lk.shape[1] ** -0.5 if softmax_scale is None else softmax_scale
    ql, kl, vl = q @ lk, k @ lk, v @ lv
    logits = np.einsum("bhsl,bhtl->bhst", ql, kl) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    s = q.shape[2]
    keep = np.ones((s, s), bool) if not causal else np.tril(np.ones((s, s), bool))
    return np.einsum("bhst,bhtl->bhsl", softmax_rows(logits, keep), vl) @ lv.T

"""`mla_attention` for TPU: a Pallas (Mosaic) flash-attention kernel over either form.

One kernel serves both forms; it attends rows of `q` to blocks of `k`/`v` with an online
softmax in float32 and masks by the valid lengths (scalar-prefetched):
  absorbed  (decode) rows are (query position, head) pairs: q_lat_h = q_h @ w_kc[:, g]^T,
            and keys = values = the latent cache, shared by every head — so all heads of
            a query form one MQA-like row block and each kv block is read once for all
            of them. The kernel returns out_lat; XLA applies w_vc.
  naive     (prefill) K/V are decompressed once by XLA (one matmul each, amortized over
            all queries) and the kernel runs per (kv head, group member) head.
Row r of a q block is query r // rows_per_query (rows_per_query = q_heads or 1), so the
bottom-right causal test j <= i + (kv_len - q_len) becomes (j - off) * rows_per_query <= r
with no vector division. kv blocks past what a q block can see are skipped, and their
index map is clamped to the last needed block so the pipeline does not fetch them.
"""
from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .configs import choose_form, norm_form, tpu_heuristic
from .xla import default_scale, mla_attention_impl as xla_mla_attention_impl

F32 = jnp.float32
NUM_LANES = 128
# Finite, so exp(mask - mask) stays defined; masked entries are zeroed explicitly anyway.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
NT = (((1,), (1,)), ((), ()))     # a @ b^T
NN = (((1,), (0,)), ((), ()))     # a @ b


def _round_up(n, m):
    return -(-n // m) * m


def _lanes(x, n):
    """Lane-replicated row stats [rows, 128] -> [rows, n]."""
    return jnp.tile(x, (1, pl.cdiv(n, NUM_LANES)))[:, :n]


def _kernel(lens_ref, last_ref, *refs, scale, causal, rows_per_query, block_q, block_k,
            shared_kv, has_rope):
    refs = list(refs)
    q_ref, k_ref = refs.pop(0), refs.pop(0)
    v_ref = k_ref if shared_kv else refs.pop(0)
    bq_ref, bk_ref = (refs.pop(0), refs.pop(0)) if has_rope else (None, None)
    o_ref, m_ref, l_ref, acc_ref = refs
    qi, ki = pl.program_id(3), pl.program_id(4)
    dv = acc_ref.shape[-1]

    @pl.when(ki == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, MASK_VALUE, F32)
        l_ref[...] = jnp.zeros(l_ref.shape, F32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    @pl.when(ki <= last_ref[qi])
    def _step():
        logits = lax.dot_general(q_ref[...], k_ref[...], NT, preferred_element_type=F32)
        if has_rope:
            logits = logits + lax.dot_general(bq_ref[...], bk_ref[...], NT, preferred_element_type=F32)
        logits = logits * scale
        q_len, kv_len = lens_ref[0], lens_ref[1]
        rows = qi * block_q + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
        cols = ki * block_k + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
        keep = cols < kv_len
        if causal:
            keep = keep & ((cols - (kv_len - q_len)) * rows_per_query <= rows)
        logits = jnp.where(keep, logits, MASK_VALUE)

        m_prev, l_prev = m_ref[...], l_ref[...]
        m_next = jnp.maximum(m_prev, logits.max(axis=-1)[:, None])
        # zeroing masked entries (not just a low logit) keeps rows that see no key at l = 0
        p = jnp.where(keep, jnp.exp(logits - _lanes(m_next, block_k)), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_ref[...] = alpha * l_prev + lax.broadcast_in_dim(p.sum(axis=-1), l_prev.shape, (0,))
        m_ref[...] = m_next
        v = v_ref[...]
        pv = lax.dot_general(p.astype(v.dtype), v, NN, preferred_element_type=F32)
        acc_ref[...] = acc_ref[...] * _lanes(alpha, dv) + pv

    @pl.when(ki == pl.num_programs(4) - 1)
    def _finish():
        l = l_ref[...]
        inv = 1.0 / jnp.where(l == 0, 1.0, l)        # rows with no visible key: acc is 0 -> 0
        o_ref[...] = (acc_ref[...] * _lanes(inv, dv)).astype(o_ref.dtype)


def flash_rows(q, k, v, b_q, b_k, valid_lens, *, rows_per_query, causal, scale, block_q, block_k,
               out_dtype, interpret=False):
    """q [b, h1, h2, R, dk]; k [b, h1, T, dk]; v [b, h1, T, dv], or None for v = k;
    b_q [b, R, e], b_k [b, T, e] or None. Returns [b, h1, h2, R, dv] in out_dtype."""
    b, h1, h2, rows, dk = q.shape
    t = k.shape[2]
    block_q = min(block_q, _round_up(rows, 8))
    block_k = min(block_k, _round_up(t, 8))
    rows_p, t_p = _round_up(rows, block_q), _round_up(t, block_k)
    pad_rows = lambda x, axis: x if rows_p == rows else jnp.pad(
        x, [(0, rows_p - rows if a == axis else 0) for a in range(x.ndim)])
    pad_keys = lambda x, axis: x if t_p == t else jnp.pad(
        x, [(0, t_p - t if a == axis else 0) for a in range(x.ndim)])
    q, k = pad_rows(q, 3), pad_keys(k, 2)
    v = None if v is None else pad_keys(v, 2)
    has_rope = b_q is not None
    if has_rope:
        b_q, b_k = pad_rows(b_q, 1), pad_keys(b_k, 1)
    dv = k.shape[-1] if v is None else v.shape[-1]
    nq, nk = rows_p // block_q, t_p // block_k

    # Last kv block each q block can see (-1: none). It bounds the work (pl.when) and the
    # DMA (the clamped index map), which is what makes a padded or causal bucket cheap.
    lens = valid_lens.astype(jnp.int32)
    q_len, kv_len = lens[0], lens[1]
    first_row = jnp.arange(nq, dtype=jnp.int32) * block_q
    row_end = jnp.minimum(first_row + block_q, q_len * rows_per_query)
    key_end = jnp.broadcast_to(kv_len, (nq,))
    if causal:
        key_end = jnp.clip((row_end - 1) // rows_per_query + (kv_len - q_len) + 1, 0, kv_len)
    last = jnp.where(row_end > first_row, (key_end + block_k - 1) // block_k - 1, -1).astype(jnp.int32)

    def kv_block(qi, ki, last_ref):
        return jnp.minimum(ki, jnp.maximum(last_ref[qi], 0))

    q_map = lambda bi, i, j, qi, ki, lens_ref, last_ref: (bi, i, j, qi, 0)
    k_map = lambda bi, i, j, qi, ki, lens_ref, last_ref: (bi, i, kv_block(qi, ki, last_ref), 0)
    in_specs = [pl.BlockSpec((None, None, None, block_q, dk), q_map),
                pl.BlockSpec((None, None, block_k, dk), k_map)]
    operands = [q, k]
    if v is not None:
        in_specs.append(pl.BlockSpec((None, None, block_k, dv), k_map))
        operands.append(v)
    if has_rope:
        e = b_q.shape[-1]
        in_specs += [pl.BlockSpec((None, block_q, e), lambda bi, i, j, qi, ki, lens_ref, last_ref: (bi, qi, 0)),
                     pl.BlockSpec((None, block_k, e),
                                  lambda bi, i, j, qi, ki, lens_ref, last_ref: (bi, kv_block(qi, ki, last_ref), 0))]
        operands += [b_q, b_k]

    kernel = functools.partial(_kernel, scale=float(scale), causal=causal, rows_per_query=rows_per_query,
                               block_q=block_q, block_k=block_k, shared_kv=v is None, has_rope=has_rope)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b, h1, h2, rows_p, dv), out_dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, h1, h2, nq, nk),
            in_specs=in_specs,
            out_specs=pl.BlockSpec((None, None, None, block_q, dv), q_map),
            scratch_shapes=[pltpu.VMEM((block_q, NUM_LANES), F32),     # running max
                            pltpu.VMEM((block_q, NUM_LANES), F32),     # running denominator
                            pltpu.VMEM((block_q, dv), F32)],           # output accumulator
        ),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="mla_flash_rows",
    )(lens, last, *operands)
    return out[:, :, :, :rows]


def mla_attention_impl(inputs, valid_lens, *, config, causal, softmax_scale):
    if inputs.get("cu_seqlens") is not None:
        # Packed sequences would need per-token sequence ids in the mask and a block skip
        # that follows sequence boundaries; they take the exact XLA path (which lowers on
        # TPU like any XLA program) instead.
        return xla_mla_attention_impl(inputs, valid_lens, config={"form": norm_form(config)},
                                      causal=causal, softmax_scale=softmax_scale)
    q, kv, w_kc, w_vc = inputs["query"], inputs["key_value"], inputs["w_kc"], inputs["w_vc"]
    b_q, b_k = inputs.get("b_q"), inputs.get("b_k")
    b, s, hq, d = q.shape
    t, r = kv.shape[1], kv.shape[2]
    hk = w_kc.shape[1]
    g = hq // hk
    dims = dict(batch=b, seq=s, kv_seq=t, q_heads=hq, kv_heads=hk, head_dim=d, kv_lora_rank=r)
    # An empty config (the JIT path) takes the heuristic for the traced shapes.
    cfg = {**tpu_heuristic(dims, {}, None), **{k: v for k, v in config.items() if v is not None}}
    form = norm_form(cfg) or choose_form(dims)
    scale = default_scale(d, b_q.shape[-1] if b_q is not None else 0, softmax_scale)
    cdt = q.dtype
    kv, w_kc, w_vc = kv.astype(cdt), w_kc.astype(cdt), w_vc.astype(cdt)
    if b_q is not None:
        b_q, b_k = b_q.astype(cdt), b_k.astype(cdt)
    run = functools.partial(flash_rows, valid_lens=valid_lens, causal=causal, scale=scale,
                            block_q=int(cfg["block_q"]), block_k=int(cfg["block_k"]),
                            interpret=bool(cfg.get("interpret", False)))

    if form == "absorbed":
        q_lat = jnp.einsum("bskgd,rkd->bskgr", q.reshape(b, s, hk, g, d), w_kc, preferred_element_type=F32)
        q_lat = q_lat.astype(cdt).reshape(b, 1, 1, s * hq, r)          # row = query * hq + head
        bq_rows = None if b_q is None else jnp.repeat(b_q, hq, axis=1)  # rope part, per row
        # out_lat in f32: it feeds the w_vc up-projection, a second rank-wide sum
        out_lat = run(q_lat, kv[:, None], None, bq_rows, b_k, rows_per_query=hq, out_dtype=F32)
        out = jnp.einsum("bskgr,rkd->bskgd", out_lat.reshape(b, s, hk, g, r), w_vc.astype(F32),
                         preferred_element_type=F32)
        return (out.reshape(b, s, hq, d).astype(q.dtype),)

    key = jnp.einsum("btr,rkd->bktd", kv, w_kc, preferred_element_type=F32).astype(cdt)
    value = jnp.einsum("btr,rkd->bktd", kv, w_vc, preferred_element_type=F32).astype(cdt)
    qh = q.reshape(b, s, hk, g, d).transpose(0, 2, 3, 1, 4)               # [b, hk, g, s, d]
    out = run(qh, key, value, b_q, b_k, rows_per_query=1, out_dtype=q.dtype)
    return (out.transpose(0, 3, 1, 2, 4).reshape(b, s, hq, d),)

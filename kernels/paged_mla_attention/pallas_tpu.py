"""`paged_mla_attention` as a Pallas TPU (Mosaic) kernel: the absorbed form over a paged
latent cache.

  1. XLA: q_lat[s, h] = q[s, h] @ w_kc[:, g(h)]^T (f32 accumulation, the caller's dtype).
  2. Pallas: grid (sequence, block of heads). One instance holds a block of q_lat rows
     and loops over only the page blocks its context needs: the latent cache and rope
     keys stay in HBM (memory_space ANY) and each block of pages is DMA'd into one of
     two VMEM slots while the previous one is computed on, as in page_attention's TPU
     kernel. Every head shares the latent cache, so a page is read once for all the
     heads of the block (MQA-like rows). Logits q_lat @ kv^T + b_q @ b_k^T, online
     softmax in f32, out_lat += p @ kv with the rows past the context zeroed first (a
     page's unused rows may hold NaN). A block-table entry out of range (< 0 or >=
     total_pages) is never DMA'd and its tokens are masked out, as in every backend.
  3. XLA: out[s, h] = out_lat[s, h] @ w_vc[:, g(h)], out_lat in f32 (a rank-wide sum).

block_tables and context_lens arrive by scalar prefetch (SMEM); batches whose table
would crowd SMEM run as several calls over sequence chunks (page_attention's rule).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ejaot_kernels._shared.mla_projections import absorb_query, expand_output
from ejaot_kernels.mla_attention.xla import default_scale
from ejaot_kernels.page_attention.pallas_tpu import SMEM_TABLE_ENTRIES, interpret_params, page_ok, tokens_ok

from .configs import tpu_heuristic
from .xla import call_dims, unpack

F32 = jnp.float32
_NEG = float(jnp.finfo(jnp.float32).min)
_LANES = 128   # softmax statistics kept lane-replicated: a full vreg row, no relayout
NT = (((1,), (1,)), ((), ()))     # a @ b^T


def _kernel(ctx_ref, tables_ref, q_ref, *refs, ppcb, page_size, max_blocks, total_pages, scale, has_rope):
    if has_rope:
        bq_ref, kv_hbm, bk_hbm, o_ref, kv_buf, bk_buf, sems, m_ref, l_ref, acc_ref = refs
    else:
        kv_hbm, o_ref, kv_buf, sems, m_ref, l_ref, acc_ref = refs
    s = pl.program_id(0)
    block_tokens = ppcb * page_size
    ctx = ctx_ref[s]                                   # clamped to [0, max_blocks*page_size]
    # lax.div: truncating, and the operands are >= 0 (jnp's // lowers a sign correction)
    end = lax.div(ctx + block_tokens - 1, block_tokens)

    def copies(b, slot, i):
        page = tables_ref[s * max_blocks + b * ppcb + i]
        rows = pl.ds(i * page_size, page_size)
        out = [pltpu.make_async_copy(kv_hbm.at[page], kv_buf.at[slot, rows], sems.at[0, slot])]
        if has_rope:
            out.append(pltpu.make_async_copy(bk_hbm.at[page], bk_buf.at[slot, rows], sems.at[1, slot]))
        return out

    def valid(p):
        return page_ok(tables_ref, s, p, max_blocks=max_blocks, total_pages=total_pages)

    def for_each_page(b, slot, action):
        for i in range(ppcb):                          # static: ppcb pages per block
            # only pages holding a token of the context (table entries past it may be
            # garbage) that name a page of the cache (an out-of-range entry's tokens are
            # masked out, never read from another sequence's page)
            @pl.when(((b * ppcb + i) * page_size < ctx) & valid(b * ppcb + i))
            def _():
                for c in copies(b, slot, i):
                    action(c)

    def step(b, carry):
        slot = lax.rem(b, 2)

        @pl.when(b + 1 < end)
        def _():
            for_each_page(b + 1, 1 - slot, lambda c: c.start())   # prefetch the next block first
        for_each_page(b, slot, lambda c: c.wait())
        kv = kv_buf[slot]                              # [block_tokens, rank]
        pos = b * block_tokens + lax.broadcasted_iota(jnp.int32, (block_tokens, 1), 0)
        ok_of_page = lambda i: valid(b * ppcb + i)
        # rows of pages not fetched, or past the context, hold stale data (maybe NaN)
        row_keep = (pos < ctx) & tokens_ok((block_tokens, 1), 0, ok_of_page, ppcb, page_size)
        kv = jnp.where(row_keep, kv, jnp.zeros_like(kv))
        logits = lax.dot_general(q_ref[...], kv, NT, preferred_element_type=F32)
        if has_rope:
            bk = bk_buf[slot]
            bk = jnp.where(row_keep, bk, jnp.zeros_like(bk))
            # one [1, tokens] rope term, shared by every head of the block
            logits = logits + lax.dot_general(bq_ref[...], bk, NT, preferred_element_type=F32)
        keep = ((b * block_tokens + lax.broadcasted_iota(jnp.int32, logits.shape, 1)) < ctx) & \
            tokens_ok(logits.shape, 1, ok_of_page, ppcb, page_size)
        logits = jnp.where(keep, logits * scale, _NEG)
        m_prev = m_ref[...]                            # [rows, 128], lanes replicated
        m_new = jnp.maximum(m_prev, logits.max(axis=1, keepdims=True))
        alpha = jnp.exp(m_prev - m_new)
        p = jnp.where(keep, jnp.exp(logits - m_new[:, :1]), 0.0)
        l_ref[...] = alpha * l_ref[...] + p.sum(axis=1, keepdims=True)
        m_ref[...] = m_new
        pv = jnp.dot(p.astype(kv.dtype), kv, preferred_element_type=F32)
        acc_ref[...] = alpha[:, :1] * acc_ref[...] + pv
        return carry

    m_ref[...] = jnp.full(m_ref.shape, _NEG, F32)
    l_ref[...] = jnp.zeros(l_ref.shape, F32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    @pl.when(end > 0)
    def _():
        for_each_page(0, 0, lambda c: c.start())

    lax.fori_loop(0, end, step, 0)
    l = l_ref[...][:, :1]
    o_ref[...] = acc_ref[...] / jnp.where(l == 0, 1.0, l)   # context 0: acc is 0 -> zeros


def _call(ctx, flat_tables, q_lat, b_q, cache, rope_cache, *, ppcb, block_h, scale, interpret):
    s, hq, r = q_lat.shape
    total_pages, ps, _ = cache.shape
    mb = flat_tables.shape[0] // s
    has_rope = b_q is not None
    kernel = functools.partial(_kernel, ppcb=ppcb, page_size=ps, max_blocks=mb, total_pages=total_pages,
                               scale=float(scale), has_rope=has_rope)
    row_spec = pl.BlockSpec((None, block_h, r), lambda i, h, *_: (i, h, 0))
    in_specs, operands = [row_spec], [q_lat]
    scratch = [pltpu.VMEM((2, ppcb * ps, r), cache.dtype)]
    if has_rope:
        e = b_q.shape[-1]
        in_specs.append(pl.BlockSpec((None, 1, e), lambda i, h, *_: (i, 0, 0)))
        operands.append(b_q[:, None])
    in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
    operands.append(cache)
    if has_rope:
        in_specs.append(pl.BlockSpec(memory_space=pl.ANY))
        operands.append(rope_cache)
        scratch.append(pltpu.VMEM((2, ppcb * ps, rope_cache.shape[-1]), rope_cache.dtype))
    scratch += [pltpu.SemaphoreType.DMA((2, 2)),
                pltpu.VMEM((block_h, _LANES), F32),     # running max
                pltpu.VMEM((block_h, _LANES), F32),     # running denominator
                pltpu.VMEM((block_h, r), F32)]          # out_lat accumulator
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((s, hq, r), F32),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(s, hq // block_h),
            in_specs=in_specs,
            out_specs=row_spec,
            scratch_shapes=scratch),
        # every (sequence, head block) is independent: either axis may be split over a
        # megacore's two TensorCores
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name="paged_mla_attention",
    )(ctx, flat_tables, *operands)


def paged_mla_attention_impl(inputs, valid_lens, *, config, softmax_scale):
    q, cache, w_kc, w_vc, tables, ctx, b_q, rope_cache = unpack(inputs)
    s, hq, d = q.shape
    ps, mb = cache.shape[1], tables.shape[1]
    dims = call_dims(q, cache, w_kc, tables, b_q)
    cfg = {**tpu_heuristic(dims, {}), **(config or {})}
    ppcb = max(1, min(int(cfg["pages_per_compute_block"]), mb))
    block_h = int(cfg["block_h"])
    if hq % block_h or (block_h % 8 and block_h != hq):
        # Mosaic tiles a block's second-to-last dim by 8 unless the block spans it
        raise ValueError(f"paged_mla_attention (pallas_tpu): block_h={block_h} must divide "
                         f"q_heads={hq} and be a multiple of 8 or all of them")
    if s == 0:
        return (jnp.zeros(q.shape, q.dtype),)
    cdt = q.dtype                 # matmul inputs in the caller's dtype; f32 accumulation
    q_lat = absorb_query(q, w_kc)
    cache = cache.astype(cdt)
    if b_q is not None:
        b_q, rope_cache = b_q.astype(cdt), rope_cache.astype(cdt)
    ctx = jnp.clip(ctx.astype(jnp.int32), 0, mb * ps)   # the kernel never reads past a table row
    tables = tables.astype(jnp.int32)
    scale = default_scale(d, dims["rope_dim"], softmax_scale)
    chunk = max(1, min(s, SMEM_TABLE_ENTRIES // mb))
    outs = []
    for lo in range(0, s, chunk):
        hi = min(s, lo + chunk)
        outs.append(_call(ctx[lo:hi], tables[lo:hi].reshape(-1), q_lat[lo:hi],
                          None if b_q is None else b_q[lo:hi], cache, rope_cache, ppcb=ppcb,
                          block_h=block_h, scale=scale, interpret=interpret_params(cfg.get("interpret"))))
    out_lat = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
    return (expand_output(out_lat, w_vc, q.dtype),)

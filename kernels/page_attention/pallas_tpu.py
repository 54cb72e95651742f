"""`page_attention` as a Pallas TPU (Mosaic) kernel.

Grid (kv_heads, num_seqs, page blocks); (num_seqs, kv_heads, page blocks) for
megacore_mode="batch". One kernel instance handles one kv head of one
sequence with all q heads of that kv group at once ([group, head_dim] query block), so
each K/V page is read from HBM once per group. block_tables and each sequence's token
range [start, end) (its context and sliding window, clamped to the table) arrive by scalar
prefetch (SMEM); the caches stay in HBM (memory_space ANY) and the kernel DMAs only the
pages the range needs into two VMEM slots: while one block of pages is computed on, the
next one is already in flight. A table entry out of range (< 0 or >= total_pages) is never
DMA'd and its tokens are masked out (tokens_ok: one compare and select per page of a
block), as in every backend. Softmax is online (running max, denominator and f32
accumulator in VMEM scratch) across page blocks.

inline_seq_dim=True loops over the needed page blocks inside one grid step (the page
grid axis has size 1); False makes page blocks a grid axis whose unneeded steps do
nothing.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .configs import tpu_heuristic

_NEG = float(jnp.finfo(jnp.float32).min)
_MODES = (None, "kv_head", "batch")
_LANES = 128   # softmax statistics kept lane-replicated: a full vreg row, no relayout


def page_ok(tables_ref, s, p, *, max_blocks, total_pages):
    """Whether column p of sequence s's block table names a page of the cache (a scalar
    read of the table in SMEM, the index clamped to the row: p may lie past it)."""
    page = tables_ref[s * max_blocks + jnp.minimum(p, max_blocks - 1)]
    return (page >= 0) & (page < total_pages)


def tokens_ok(shape, axis, ok_of_page, ppcb, page_size):
    """bool `shape`: along `axis`, token n of a block of ppcb pages lies on a page whose
    ok_of_page(i) (a scalar) holds: one compare and select per page of the block."""
    tok = lax.broadcasted_iota(jnp.int32, shape, axis)
    ok = jnp.zeros(shape, jnp.int32)
    for i in range(ppcb):                              # static
        ok = jnp.where((tok >= i * page_size) & (tok < (i + 1) * page_size),
                       ok_of_page(i).astype(jnp.int32), ok)
    return ok != 0


def _kernel(bounds_ref, tables_ref, q_ref, k_hbm, v_hbm, o_ref, k_buf, v_buf, sems, m_ref, l_ref,
            acc_ref, *, ppcb, page_size, max_blocks, total_pages, num_blocks, scale, soft_cap, inline,
            seq_major):
    h, s = (pl.program_id(1), pl.program_id(0)) if seq_major else (pl.program_id(0), pl.program_id(1))
    j = pl.program_id(2)
    block_tokens = ppcb * page_size
    # the tokens [lo, ctx) this sequence attends to, within [0, max_blocks*page_size]
    lo = bounds_ref[2 * s]
    ctx = bounds_ref[2 * s + 1]
    # lax.div/rem truncate; operands are >= 0, so that is floor division (jnp's // would
    # lower a sign correction that Mosaic cannot lower without a TPU generation)
    first = lax.div(lo, block_tokens)
    end = lax.div(ctx + block_tokens - 1, block_tokens)   # needed blocks: [first, end)

    def valid(p):
        return page_ok(tables_ref, s, p, max_blocks=max_blocks, total_pages=total_pages)

    def page_needed(p):
        # a page is fetched only if it holds a token in [lo, ctx) and names a page of the
        # cache: entries past the context may be garbage, and an out-of-range entry's
        # tokens are masked out (never read from another sequence's page)
        return (p * page_size < ctx) & ((p + 1) * page_size > lo) & valid(p)

    def copies(b, slot, i):
        page = tables_ref[s * max_blocks + b * ppcb + i]
        rows = pl.ds(i * page_size, page_size)
        return (pltpu.make_async_copy(k_hbm.at[h, page], k_buf.at[slot, rows], sems.at[0, slot]),
                pltpu.make_async_copy(v_hbm.at[h, page], v_buf.at[slot, rows], sems.at[1, slot]))

    def for_each_page(b, slot, action):
        for i in range(ppcb):                          # static: ppcb DMAs per block
            @pl.when(page_needed(b * ppcb + i))
            def _():
                for c in copies(b, slot, i):
                    action(c)

    def start(b, slot):
        for_each_page(b, slot, lambda c: c.start())

    def wait(b, slot):
        for_each_page(b, slot, lambda c: c.wait())

    def compute(b, slot):
        q = q_ref[...]                                 # [group, head_dim]
        k = k_buf[slot]                                # [block_tokens, head_dim]
        logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32) * scale
        if soft_cap is not None:
            logits = soft_cap * jnp.tanh(logits / soft_cap)
        pos = b * block_tokens + lax.broadcasted_iota(jnp.int32, logits.shape, 1)
        keep = (pos < ctx) & (pos >= lo) & tokens_ok(logits.shape, 1, lambda i: valid(b * ppcb + i), ppcb,
                                                     page_size)
        logits = jnp.where(keep, logits, _NEG)
        m_prev = m_ref[...]                            # [group, 128], lanes replicated
        m_new = jnp.maximum(m_prev, logits.max(axis=1, keepdims=True))
        alpha = jnp.exp(m_prev - m_new)
        p = jnp.where(keep, jnp.exp(logits - m_new[:, :1]), 0.0)
        l_ref[...] = alpha * l_ref[...] + p.sum(axis=1, keepdims=True)
        # rows of pages that were not fetched hold stale or uninitialized data: 0 * NaN
        # would poison the sum, so zero them
        v = v_buf[slot]
        vpos = b * block_tokens + lax.broadcasted_iota(jnp.int32, (block_tokens, 1), 0)
        vkeep = (vpos < ctx) & (vpos >= lo) & tokens_ok((block_tokens, 1), 0, lambda i: valid(b * ppcb + i),
                                                         ppcb, page_size)
        v = jnp.where(vkeep, v.astype(jnp.float32), 0.0).astype(v.dtype)
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        acc_ref[...] = alpha[:, :1] * acc_ref[...] + pv
        m_ref[...] = m_new

    def step(b):
        slot = lax.rem(b, 2)

        @pl.when(b + 1 < end)
        def _():
            start(b + 1, 1 - slot)                     # prefetch the next block first
        wait(b, slot)
        compute(b, slot)

    def init():
        m_ref[...] = jnp.full(m_ref.shape, _NEG, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def finish():
        l = l_ref[...][:, :1]
        o_ref[...] = (acc_ref[...] / jnp.where(l == 0, 1.0, l)).astype(o_ref.dtype)

    if inline:
        init()

        @pl.when(first < end)
        def _():
            start(first, lax.rem(first, 2))

        lax.fori_loop(first, end, lambda b, c: (step(b), c)[1], 0)
        finish()
    else:
        pl.when(j == 0)(init)

        @pl.when((j == first) & (j < end))
        def _():
            start(j, lax.rem(j, 2))

        @pl.when((j >= first) & (j < end))
        def _():
            step(j)

        pl.when(j == num_blocks - 1)(finish)


def interpret_params(flag):
    """config "interpret": True (or a dict of pltpu.InterpretParams fields) runs the
    kernel in TPU interpret mode on CPU, which simulates VMEM/HBM, DMAs (performed at
    the wait) and semaphores, fills uninitialized memory with NaN and raises on
    out-of-bounds reads: a missing wait or an unfetched row read shows up in tests."""
    if not flag:
        return False
    return pltpu.InterpretParams(**(flag if isinstance(flag, dict) else {}))


def page_attention_impl(inputs, valid_lens, *, config, attn_scale, attn_logits_soft_cap,
                        sliding_window):
    q, kc, vc = inputs["query"], inputs["key_cache"], inputs["value_cache"]
    tables = inputs["block_tables"]
    s, hq, d = q.shape
    hk, total_pages, ps, _ = kc.shape
    mb = tables.shape[1]
    g = hq // hk
    dims = dict(num_seqs=s, q_heads=hq, kv_heads=hk, head_dim=d, total_pages=total_pages,
                page_size=ps, max_blocks=mb)
    cfg = {**tpu_heuristic(dims, {}), **(config or {})}
    ppcb = max(1, min(int(cfg["pages_per_compute_block"]), mb))
    inline = bool(cfg["inline_seq_dim"])
    mode = cfg["megacore_mode"]
    if mode not in _MODES:
        raise ValueError(f"page_attention: megacore_mode must be one of {_MODES}, got {mode!r}")
    num_blocks = pl.cdiv(mb, ppcb)
    block_tokens = ppcb * ps
    scale = attn_scale if attn_scale is not None else d ** -0.5

    if s == 0:
        return (jnp.zeros(q.shape, q.dtype),)
    # The tokens [start, end) each sequence attends to (before the per-page check), computed
    # once here so the kernel never indexes past a sequence's row of the table: the window
    # counts back from the given context length, which is then clamped to the table.
    ctx = jnp.maximum(inputs["context_lens"].astype(jnp.int32), 0)
    end = jnp.minimum(ctx, mb * ps)
    start = jnp.zeros_like(end) if sliding_window is None else jnp.clip(ctx - sliding_window, 0, end)
    bounds = jnp.stack([start, end], axis=1)                      # [num_seqs, 2]
    tables = tables.astype(jnp.int32)
    qg = q.reshape(s, hk, g, d)
    # Scalar prefetch puts the whole block table in SMEM (1 MiB on current chips, shared
    # with everything else prefetched): large batches of long contexts run as several
    # calls over sequence chunks whose tables fit.
    chunk = max(1, min(s, SMEM_TABLE_ENTRIES // mb))
    outs = []
    for lo in range(0, s, chunk):
        hi = min(s, lo + chunk)
        outs.append(_call(bounds[lo:hi].reshape(-1), tables[lo:hi].reshape(-1), qg[lo:hi], kc, vc, cfg=cfg,
                          ppcb=ppcb, num_blocks=num_blocks, block_tokens=block_tokens, scale=scale,
                          soft_cap=attn_logits_soft_cap, inline=inline, mode=mode))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
    return (out.reshape(s, hq, d),)


SMEM_TABLE_ENTRIES = 64 * 1024        # 256 KiB of int32 block-table entries per call


def _call(bounds, flat_tables, qg, kc, vc, *, cfg, ppcb, num_blocks, block_tokens, scale, soft_cap,
          inline, mode):
    s, hk, g, d = qg.shape
    total_pages, ps, mb = kc.shape[1], kc.shape[2], flat_tables.shape[0] // s
    kv_dtype = kc.dtype

    kernel = functools.partial(
        _kernel, ppcb=ppcb, page_size=ps, max_blocks=mb, total_pages=total_pages,
        num_blocks=num_blocks, scale=float(scale), soft_cap=soft_cap, inline=inline,
        seq_major=mode == "batch")
    # Mosaic splits a leading "parallel" grid axis over a megacore's two TensorCores, so
    # megacore_mode picks which axis leads. (kv head, sequence) instances are independent
    # (nothing is carried or prefetched across them), so every order gives the same result.
    if mode == "batch":
        grid = (s, hk, 1 if inline else num_blocks)
        q_spec = pl.BlockSpec((None, None, g, d), lambda i, h, j, *_: (i, h, 0, 0))
    else:
        grid = (hk, s, 1 if inline else num_blocks)
        q_spec = pl.BlockSpec((None, None, g, d), lambda h, i, j, *_: (i, h, 0, 0))
    semantics = ("arbitrary" if mode is None else "parallel", "arbitrary", "arbitrary")
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((s, hk, g, d), qg.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=grid,
            in_specs=[q_spec, pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=q_spec,
            scratch_shapes=[
                pltpu.VMEM((2, block_tokens, d), kv_dtype),
                pltpu.VMEM((2, block_tokens, d), kv_dtype),
                pltpu.SemaphoreType.DMA((2, 2)),
                pltpu.VMEM((g, _LANES), jnp.float32),     # running max
                pltpu.VMEM((g, _LANES), jnp.float32),     # running denominator
                pltpu.VMEM((g, d), jnp.float32),
            ]),
        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
        interpret=interpret_params(cfg.get("interpret")),
        name="page_attention",
    )(bounds, flat_tables, qg, kc, vc)
    return out

"""`page_attention` in Triton (through jax-triton): paged grouped-query decode attention
for NVIDIA GPUs.

Decode attention is memory-bound: every K/V byte is used by the few query heads of one
group and never again, so the kernel is shaped to read each needed page exactly once,
in wide coalesced loads, with many loads in flight.

  * One program per (sequence, kv head, split). It holds the query rows of ALL the q
    heads of that kv head's group ([group padded to 16, head_dim]: the tensor-core dot's
    minimum height), so each K/V page is read once per group, not once per q head.
  * The cache layout [kv_heads, total_pages, page_size, head_dim] makes one page of one
    kv head page_size * head_dim contiguous elements: a row of a page is head_dim
    contiguous elements, loaded as 16-byte vectors, a warp covering whole rows.
  * Each loop step takes `pages_per_block` consecutive block-table entries (a tile of
    pages_per_block * page_size tokens), gathers those pages' K rows, does q·kᵀ on the
    tensor cores, an online-softmax update in float32 (log2 domain, exp2), then p·v.
    Triton software-pipelines the loop `num_stages` deep (the table entries one stage
    ahead of the pages they address), so several pages are in flight per program.
  * Only the pages holding tokens in [lo, hi) are visited (hi = the context length
    clamped to the table, lo = context - sliding_window when a window is set, else 0),
    and only those tokens are loaded (masked rows are never read: block-table entries
    past the context or before the window may hold anything, even indices out of
    range). A token whose table entry is out of range (< 0 or >= total_pages) is masked
    out too (page_in_range), never loaded: the module docstring's rule, as every backend.
    context_lens and block_tables are traced int32 arrays read by the kernel from
    device memory.
  * Split-KV (flash-decoding): with num_splits > 1 the needed pages of each sequence are
    cut into num_splits contiguous ranges (rounded to whole page blocks), one program
    each, so that few sequences x kv heads still fill every SM at long contexts. Each
    program writes its normalized partial output and its log-sum-exp (float32); a second
    small kernel combines the splits of every (sequence, q head). With num_splits = 1
    the first kernel writes the output directly.

Context length 0 (and splits with nothing to read) give l = 0: the output is zeros,
never NaN. Config keys: pages_per_block, num_splits, num_warps, num_stages,
compute_capability (see configs.py). Only importable where triton is installed; it
touches no device at import; jax_triton is imported on first call.
"""
from __future__ import annotations

import math

from ejaot_kernels.triton_support import LOG2E, jit as _jit, next_pow2, resolve_config, tanh as _tanh, tl

from .configs import triton_heuristic


# ----------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------


@_jit
def page_in_range(page_id, TOTAL_PAGES):
    """Whether a block-table entry names a page of the cache (0 <= page_id < TOTAL_PAGES):
    a token on an entry out of range is masked out, its K/V never loaded. Operators only:
    `page_in_range.fn` runs on NumPy arrays (tests)."""
    return (page_id >= 0) & (page_id < TOTAL_PAGES)


@_jit
def _decode_kernel(Q, K, V, Ctx, Tables, Out, Lse,
                   sm_scale: tl.constexpr, qk_scale: tl.constexpr, soft_cap: tl.constexpr,
                   HAS_CAP: tl.constexpr, WINDOW: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   HQ: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr,
                   D: tl.constexpr, BLOCK_D: tl.constexpr,
                   TOTAL_PAGES: tl.constexpr, PS: tl.constexpr, MB: tl.constexpr,
                   PPB: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
                   DOT_PREC: tl.constexpr):
    TOKENS: tl.constexpr = PPB * PS            # tokens per loop step (BLOCK_N: its power of 2)
    seq = tl.program_id(0)
    kh = tl.program_id(1)
    split = tl.program_id(2)
    seq64 = seq.to(tl.int64)

    # The tokens [lo, hi) the sequence attends to: the window counts back from the given
    # context length (negative: 0), then the range is clamped to what the table covers.
    ctx = tl.maximum(tl.load(Ctx + seq), 0)
    hi = tl.minimum(ctx, MB * PS)
    lo = hi * 0
    if HAS_WINDOW:
        lo = tl.minimum(tl.maximum(ctx - WINDOW, 0), hi)
    page_lo = lo // PS
    page_hi = (hi + (PS - 1)) // PS             # pages [page_lo, page_hi) hold [lo, hi)
    if NUM_SPLITS > 1:
        blocks = (page_hi - page_lo + (PPB - 1)) // PPB
        per = ((blocks + (NUM_SPLITS - 1)) // NUM_SPLITS) * PPB
        p_start = tl.minimum(page_lo + split * per, page_hi)
        p_end = tl.minimum(p_start + per, page_hi)
    else:
        p_start = page_lo
        p_end = page_hi

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok = offs_g < G
    d_ok = offs_d < D
    head = kh * G + offs_g                                        # q heads of this group
    q_off = seq64 * (HQ * D) + head[:, None] * D + offs_d[None, :]
    q = tl.load(Q + q_off, mask=g_ok[:, None] & d_ok[None, :], other=0.0)

    base = kh.to(tl.int64) * (TOTAL_PAGES * PS * D)
    k_head = K + base
    v_head = V + base
    table_row = Tables + seq64 * MB
    tok_in_page = offs_n % PS
    page_of_tok = offs_n // PS                                    # page within the block
    row_off = tok_in_page[:, None] * D + offs_d[None, :]          # within one page

    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    for p0 in range(p_start, p_end, PPB):
        page = p0 + page_of_tok                                   # block-table column
        pos = page * PS + tok_in_page                             # token position
        ok = (pos < hi) & (page < p_end)
        if HAS_WINDOW:
            ok = ok & (pos >= lo)
        if BLOCK_N != TOKENS:
            ok = ok & (offs_n < TOKENS)
        page_id = tl.load(table_row + page, mask=ok, other=0)
        # out-of-range entries: masked (their K/V are never loaded), as every backend
        ok = ok & page_in_range(page_id, TOTAL_PAGES)
        kv_off = page_id.to(tl.int64)[:, None] * (PS * D) + row_off
        if BLOCK_D != D:
            kv_mask = ok[:, None] & d_ok[None, :]
        else:
            kv_mask = ok[:, None]
        k = tl.load(k_head + kv_off, mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)    # [BLOCK_G, BLOCK_N]
        if HAS_CAP:
            s = _tanh(qk * (sm_scale / soft_cap)) * (soft_cap * 1.4426950408889634)
        else:
            s = qk * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)     # nothing seen yet
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_head + kv_off, mask=kv_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
        m_i = m_new

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    store_mask = g_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:   # Out: the output [num_seqs, q_heads, D]; Lse: unused
        tl.store(Out + q_off, out.to(Out.dtype.element_ty), mask=store_mask)
    else:   # Out: partials [num_seqs, q_heads, NUM_SPLITS, D] f32; Lse [.., NUM_SPLITS] f32
        row = (seq64 * HQ + head) * NUM_SPLITS + split
        tl.store(Out + row[:, None] * D + offs_d[None, :], out, mask=store_mask)
        lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(Lse + row, lse, mask=g_ok)


@_jit
def _combine_kernel(PartOut, PartLse, Out, HQ: tl.constexpr, D: tl.constexpr,
                    BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    """out = sum_i 2^(lse_i - M) out_i / sum_i 2^(lse_i - M): one (sequence, q head)."""
    row = tl.program_id(0).to(tl.int64)                          # seq * HQ + head
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    d_ok = offs_d < D
    lse = tl.load(PartLse + row * NUM_SPLITS + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m_use)                                # 0 for empty splits
    total = tl.sum(w, 0)
    part = tl.load(PartOut + (row * NUM_SPLITS + offs_s)[:, None] * D + offs_d[None, :],
                   mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(part * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(Out + row * D + offs_d, out.to(Out.dtype.element_ty), mask=d_ok)


# ----------------------------------------------------------------------------------------
# JAX wrapper
# ----------------------------------------------------------------------------------------




def _fit_smem(ppb, stages, ps, block_d, itemsize, cc):
    """Shrinks the pipeline depth, then the page block, until the staged K and V tiles fit
    the generation's shared memory (only large tiles of 4-byte elements need it)."""
    limit = (227 if cc >= 90 else (163 if cc in (80, 87) else 99)) * 1024

    def need(ppb, stages):
        return stages * 2 * next_pow2(ppb * ps) * block_d * itemsize

    while need(ppb, stages) > limit * 3 // 4:
        if stages > 2:
            stages -= 1
        elif ppb > 1:
            ppb = max(1, ppb // 2)
        elif stages > 1:
            stages -= 1
        else:
            break
    return ppb, stages


def page_attention_impl(inputs, valid_lens, *, config, attn_scale, attn_logits_soft_cap,
                        sliding_window):
    import jax
    import jax.numpy as jnp
    import jax_triton as jt

    q, kc, vc = inputs["query"], inputs["key_cache"], inputs["value_cache"]
    ctx = jnp.asarray(inputs["context_lens"], jnp.int32)
    tables = jnp.asarray(inputs["block_tables"], jnp.int32)
    if kc.dtype != q.dtype or vc.dtype != q.dtype:
        kc, vc = kc.astype(q.dtype), vc.astype(q.dtype)
    s, hq, d = q.shape
    hk, pages, ps, _ = kc.shape
    mb = tables.shape[1]
    if hq % hk:
        raise ValueError(f"page_attention: q_heads={hq} is not a multiple of kv_heads={hk}")
    if kc.shape != (hk, pages, ps, d) or vc.shape != kc.shape:
        raise ValueError(f"page_attention: caches {kc.shape}/{vc.shape} do not match query {q.shape}")
    if tables.shape[0] != s or ctx.shape != (s,):
        raise ValueError("page_attention: context_lens/block_tables do not match num_seqs")
    g = hq // hk
    dims = {"num_seqs": s, "q_heads": hq, "kv_heads": hk, "head_dim": d, "total_pages": pages,
            "page_size": ps, "max_blocks": mb}
    static = {"attn_scale": attn_scale, "attn_logits_soft_cap": attn_logits_soft_cap,
              "sliding_window": sliding_window}
    cfg = resolve_config("page_attention", config, triton_heuristic, dims, static)
    cc = cfg["compute_capability"]
    block_d = max(16, next_pow2(d))
    ppb = max(1, min(int(cfg["pages_per_block"]), mb))
    ppb, stages = _fit_smem(ppb, max(1, int(cfg["num_stages"])), ps, block_d, q.dtype.itemsize, cc)
    splits = max(1, min(int(cfg["num_splits"]), -(-mb // ppb)))
    warps = int(cfg["num_warps"])
    scale = float(attn_scale) if attn_scale is not None else 1.0 / math.sqrt(d)
    cap = None if attn_logits_soft_cap is None else float(attn_logits_soft_cap)
    window = None if sliding_window is None else int(sliding_window)

    if s == 0 or mb == 0:   # nothing to attend to (mb == 0: every context clamps to 0)
        return (jnp.zeros(q.shape, q.dtype),)
    out_t = jax.ShapeDtypeStruct(q.shape, q.dtype)
    if splits == 1:   # the kernel's second output is a placeholder it never writes
        out_types = (out_t, jax.ShapeDtypeStruct((1,), jnp.float32))
    else:
        out_types = (jax.ShapeDtypeStruct((s, hq, splits, d), jnp.float32),
                     jax.ShapeDtypeStruct((s, hq, splits), jnp.float32))
    first, lse = jt.triton_call(
        q, kc, vc, ctx, tables, kernel=_decode_kernel, out_type=out_types,
        grid=(s, hk, splits), num_warps=warps, num_stages=stages, compute_capability=cc,
        name="page_attention_decode" if splits == 1 else "page_attention_decode_split",
        sm_scale=scale, qk_scale=scale * LOG2E, soft_cap=cap if cap is not None else 1.0,
        HAS_CAP=cap is not None, WINDOW=window or 0, HAS_WINDOW=window is not None,
        HQ=hq, G=g, BLOCK_G=max(16, next_pow2(g)), D=d, BLOCK_D=block_d,
        TOTAL_PAGES=pages, PS=ps, MB=mb, PPB=ppb, BLOCK_N=max(16, next_pow2(ppb * ps)),
        NUM_SPLITS=splits, DOT_PREC="tf32x3" if q.dtype == jnp.float32 else "tf32")
    if splits == 1:
        return (first,)
    out = jt.triton_call(
        first, lse, kernel=_combine_kernel, out_type=out_t, grid=(s * hq,),
        num_warps=4 if block_d >= 128 else 2, num_stages=1, compute_capability=cc,
        name="page_attention_combine", HQ=hq, D=d, BLOCK_D=block_d, NUM_SPLITS=splits,
        BLOCK_S=next_pow2(splits))
    return (out,)

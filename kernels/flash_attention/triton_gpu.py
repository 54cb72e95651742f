"""`flash_attention` in Triton (through jax-triton): forward and backward for NVIDIA GPUs.

Layout [batch, seq, heads, head_dim] everywhere, read in place through strides (GQA
indexes the kv head h // (q_heads // kv_heads); K and V are never repeated). Scores are
kept in the log2 domain (softmax_scale * log2(e) folded into one multiply) so that the
softmax runs on exp2. Each program of the forward and of the dQ kernel owns a block of
queries and walks the key blocks in three phases: masked blocks at the left edge of a
sliding window, fully visible blocks (no mask arithmetic at all), and masked blocks at the
right edge (causal diagonal, window, the valid-length tail). Blocks no query of the
program can see are skipped by the loop bounds. The dK/dV kernel owns a block of keys and
walks the query blocks of every query head of its group the same way, so GQA gradients
are summed without atomics (deterministic), and it writes the bias gradient tile by tile.

The forward saves the row logsumexp (base 2; +inf for rows that see no key, which makes
their recomputed probabilities exactly zero). The backward is a `jax.custom_vjp`:
delta = rowsum(dO * O) (a small kernel), then dK/dV, then dQ. With `fused_dq` (sm90,
16-bit inputs) there is no dQ kernel: the dK/dV kernel also multiplies each step's dS by K
and adds that partial dQ into a float32 buffer by TMA reduction (cp.reduce.async.bulk),
which XLA then scales and casts. It saves the dQ kernel's second recomputation of the
scores and dP (five products per tile instead of seven), but measured slower on an H200
at every tiling tried (BENCHMARKS.md), so no heuristic picks it: a config asks for it.
The float32 sums arrive in any order, so dQ is not bit-for-bit repeatable.

On Hopper the forward of plain scores (no bias, soft cap, segment ids or window; head_dim
64, 128 or 256; 16-bit inputs) is the Gluon kernel of gluon_sm90.py instead, FlashAttention-3's
ping-pong schedule; it saves the same logsumexp, so either backward follows it. With
`gluon_bwd` the backward of plain scores at head_dim 64 or 128 is gluon_sm90_bwd.py's one
kernel (dK, dV, and dQ by TMA reductions: five products per tile), after the same delta
kernel.

The valid lengths (q_len, kv_len) are traced: the kernels read them from device memory.
Everything else (shapes, strides, flags, scale, window) is a compile-time constant.

Config keys (configs.triton_heuristic fills the missing ones; {} means: the heuristic for
this host's GPU): compute_capability; block_m, block_n, num_warps, num_stages (forward);
bwd_* (dK/dV: block_m queries per step, block_n keys per program) and dq_* (dQ); tma
(sm90: the forward's unmasked K/V loads go through host-made TMA descriptors) and
warp_specialize (sm90, with tma; experimental in Triton 3.7, off by default); gluon (sm90:
the Gluon forward where it applies, with block_n and num_stages its tile and K and V rings; the
heuristic's choice there, so a Triton config says gluon=False); fused_dq and gluon_bwd
(above; the heuristic asks for gluon_bwd where it measured faster: configs._gluon_bwd_ok). float32
inputs use tf32x3 dots and have their tiles shrunk to fit shared memory.

Imports without triton (the kernels then cannot lower) and touches no device at import;
jax_triton is imported on first call.
"""
from __future__ import annotations

import dataclasses
import functools
import math

from ejaot_kernels.cuda_arch import has_tma, has_wgmma, shared_memory_per_block
from ejaot_kernels._shared.gluon_pipeline import install_compile_hook, route_through_gluon_pipeline
from ejaot_kernels.triton_support import LOG2E, jit as _jit, resolve_config, tanh as _tanh, tl

from .configs import gluon_head_dim_ok, triton_heuristic

# ----------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------


@_jit
def _kv_bounds(m_first, kv_len, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, WL: tl.constexpr,
               WR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For a query block whose first row sits at key position m_first: the key range
    [lo, hi) any row can see, and [full_lo, full_hi), BLOCK_N-aligned, that every row
    sees whole (lo <= full_lo <= full_hi <= hi)."""
    m_last = m_first + (BLOCK_M - 1)
    hi = kv_len
    full_hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, m_last + 1)
        full_hi = tl.minimum(full_hi, m_first + 1)
    lo = hi * 0
    full_lo = hi * 0
    if WINDOW:
        hi = tl.minimum(hi, m_last + (WR + 1))
        full_hi = tl.minimum(full_hi, m_first + (WR + 1))
        lo = (tl.maximum(m_first - WL, 0) // BLOCK_N) * BLOCK_N
        full_lo = ((tl.maximum(m_last - WL, 0) + (BLOCK_N - 1)) // BLOCK_N) * BLOCK_N
    hi = tl.maximum(hi, lo)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = (tl.maximum(full_hi, 0) // BLOCK_N) * BLOCK_N
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@_jit
def _scores(qk, bias, sm_scale: tl.constexpr, soft_cap: tl.constexpr, HAS_CAP: tl.constexpr,
            HAS_BIAS: tl.constexpr):
    """Generic path: log2-domain logits ((qk * scale) -> soft cap -> + bias) * log2(e), and
    tanh of the capped argument (1 when no cap; the backward needs 1 - t^2)."""
    s = qk * sm_scale
    t = s
    if HAS_CAP:
        t = _tanh(s * (1.0 / soft_cap))
        s = t * soft_cap
    if HAS_BIAS:
        s = s + bias.to(tl.float32)
    return s * 1.4426950408889634, t


@_jit
def _bias_tile(bias_base, offs_m, offs_n, row_ok, kv_ok, KV_SEQ: tl.constexpr, MASKED: tl.constexpr,
               ALL_ROWS: tl.constexpr, KEYS_BY_ROW: tl.constexpr):
    """The bias of queries offs_m against keys offs_n: a [queries, keys] tile, or
    [keys, queries] with KEYS_BY_ROW (the dK/dV loop's transposed tiles). Rows past the
    sequence (row_ok; ALL_ROWS: every row is in it) and, MASKED, keys past kv_len read
    zeros."""
    if KEYS_BY_ROW:
        rows, keys, rows_ok, keys_ok = offs_m[None, :], offs_n[:, None], row_ok[None, :], kv_ok[:, None]
    else:
        rows, keys, rows_ok, keys_ok = offs_m[:, None], offs_n[None, :], row_ok[:, None], kv_ok[None, :]
    b_ptrs = bias_base + rows * KV_SEQ + keys
    if MASKED:
        bias = tl.load(b_ptrs, mask=rows_ok & keys_ok, other=0.0)
    elif ALL_ROWS:
        bias = tl.load(b_ptrs)
    else:
        bias = tl.load(b_ptrs, mask=rows_ok, other=0.0)
    return bias


@_jit
def _visible(s, q_pos, offs_n, kv_ok, own_seg, seg_ptrs, seg_ok, WL: tl.constexpr, WR: tl.constexpr,
             CAUSAL: tl.constexpr, WINDOW: tl.constexpr, HAS_SEG: tl.constexpr,
             MASKED: tl.constexpr, KEYS_BY_ROW: tl.constexpr):
    """s with -inf where a key may not be seen: past kv_len, after the query (causal),
    outside the window, or of another segment. Tiles are [queries, keys], or [keys,
    queries] with KEYS_BY_ROW. The program's own segment ids (own_seg: the queries', or the
    keys' with KEYS_BY_ROW) meet the other side's, loaded from seg_ptrs (seg_ok: in range).
    Unmasked blocks check segments only."""
    if MASKED:
        if KEYS_BY_ROW:
            keys, pos, keep = offs_n[:, None], q_pos[None, :], kv_ok[:, None]
        else:
            keys, pos, keep = offs_n[None, :], q_pos[:, None], kv_ok[None, :]
        if CAUSAL:
            keep = keep & (keys <= pos)
        if WINDOW:
            keep = keep & (keys >= pos - WL) & (keys <= pos + WR)
        if HAS_SEG:
            other_seg = tl.load(seg_ptrs, mask=seg_ok, other=-1)
            keep = keep & (own_seg[:, None] == other_seg[None, :])
        s = tl.where(keep, s, float("-inf"))
    elif HAS_SEG:
        other_seg = tl.load(seg_ptrs)
        s = tl.where(own_seg[:, None] == other_seg[None, :], s, float("-inf"))
    return s


@_jit
def _fwd_loop(acc, l_i, m_i, q, q_pos, qseg, kv_len, k_base, v_base, bias_base, kseg_base,
              desc_k, desc_v, tma_row, tma_col,
              offs_m, offs_d, lo, hi,
              USE_TMA: tl.constexpr, WS: tl.constexpr,
              KV_ROW: tl.constexpr, SEQ: tl.constexpr, KV_SEQ: tl.constexpr,
              sm_scale: tl.constexpr, qk_scale: tl.constexpr, soft_cap: tl.constexpr,
              WL: tl.constexpr, WR: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
              HAS_CAP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEG: tl.constexpr,
              FAST: tl.constexpr, MASKED: tl.constexpr, EVEN_M: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr):
    offs_nb = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_nb
        kv_off = offs_n[:, None] * KV_ROW + offs_d[None, :]
        kv_ok = offs_n < kv_len
        if MASKED:
            k = tl.load(k_base + kv_off, mask=kv_ok[:, None], other=0.0)
        elif USE_TMA:
            k = desc_k.load([tma_row + start_n, tma_col])
        else:
            k = tl.load(k_base + kv_off)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        if FAST:
            s = qk
        else:
            bias = qk
            if HAS_BIAS:
                bias = _bias_tile(bias_base, offs_m, offs_n, offs_m < SEQ, kv_ok, KV_SEQ, MASKED, EVEN_M,
                                  False)
            s, _t = _scores(qk, bias, sm_scale, soft_cap, HAS_CAP, HAS_BIAS)
        s = _visible(s, q_pos, offs_n, kv_ok, qseg, kseg_base + offs_n, kv_ok, WL, WR, CAUSAL, WINDOW,
                     HAS_SEG, MASKED, False)
        if FAST:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED or HAS_SEG or HAS_BIAS:
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # a row with nothing seen yet
        else:
            m_use = m_new
        if FAST:
            p = tl.math.exp2(s * qk_scale - m_use[:, None])
        else:
            p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED:
            v = tl.load(v_base + kv_off, mask=kv_ok[:, None], other=0.0)
        elif USE_TMA:
            v = desc_v.load([tma_row + start_n, tma_col])
        else:
            v = tl.load(v_base + kv_off)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@_jit
def _fwd_kernel(Q, K, V, DescK, DescV, Bias, QSeg, KSeg, VL, Out, Lse,
                sm_scale: tl.constexpr, qk_scale: tl.constexpr, soft_cap: tl.constexpr,
                SEQ: tl.constexpr, KV_SEQ: tl.constexpr, HQ: tl.constexpr, HK: tl.constexpr,
                D: tl.constexpr, WL: tl.constexpr, WR: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOW: tl.constexpr, HAS_CAP: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_SEG: tl.constexpr, FAST: tl.constexpr,
                DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                USE_TMA: tl.constexpr, WS: tl.constexpr):
    NUM_M: tl.constexpr = (SEQ + BLOCK_M - 1) // BLOCK_M
    EVEN_M: tl.constexpr = SEQ % BLOCK_M == 0
    Q_ROW: tl.constexpr = HQ * D
    KV_ROW: tl.constexpr = HK * D
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = (NUM_M - 1) - pid_m          # the longest rows first
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    kh = h // (HQ // HK)
    b64 = b.to(tl.int64)
    q_len = tl.load(VL)
    kv_len = tl.minimum(tl.load(VL + 1), KV_SEQ)
    off = kv_len - q_len

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q_off = b64 * (SEQ * Q_ROW) + h * D + offs_m[:, None] * Q_ROW + offs_d[None, :]
    if EVEN_M:
        q = tl.load(Q + q_off)
    else:
        q = tl.load(Q + q_off, mask=(offs_m < SEQ)[:, None], other=0.0)
    k_base = K + b64 * (KV_SEQ * KV_ROW) + kh * D
    v_base = V + b64 * (KV_SEQ * KV_ROW) + kh * D
    bias_base = Bias
    if HAS_BIAS:
        bias_base = Bias + (b64 * HQ + h) * (SEQ * KV_SEQ)
    kseg_base = KSeg + b64 * KV_SEQ
    qseg = offs_m
    if HAS_SEG:
        qseg = tl.load(QSeg + b64 * SEQ + offs_m, mask=offs_m < SEQ, other=-1)
    q_pos = offs_m + off
    tma_row = b * KV_SEQ
    desc_k = DescK   # USE_TMA: host-made descriptors (_kv_descriptors); else K and V, unread
    desc_v = DescV

    lo, full_lo, full_hi, hi = _kv_bounds(pid_m * BLOCK_M + off, kv_len, CAUSAL, WINDOW, WL, WR,
                                          BLOCK_M, BLOCK_N)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    if WINDOW:
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, q_pos, qseg, kv_len, k_base, v_base, bias_base,
                                  kseg_base, desc_k, desc_v, tma_row, kh * D, offs_m, offs_d, lo,
                                  full_lo, False, False, KV_ROW, SEQ, KV_SEQ,
                                  sm_scale, qk_scale, soft_cap, WL, WR, CAUSAL, WINDOW, HAS_CAP,
                                  HAS_BIAS, HAS_SEG, FAST, True, EVEN_M, BLOCK_N, DOT_PREC)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, q_pos, qseg, kv_len, k_base, v_base, bias_base,
                              kseg_base, desc_k, desc_v, tma_row, kh * D, offs_m, offs_d, full_lo,
                              full_hi, USE_TMA, WS, KV_ROW, SEQ, KV_SEQ,
                              sm_scale, qk_scale, soft_cap, WL, WR, CAUSAL, WINDOW, HAS_CAP,
                              HAS_BIAS, HAS_SEG, FAST, False, EVEN_M, BLOCK_N, DOT_PREC)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, q_pos, qseg, kv_len, k_base, v_base, bias_base,
                              kseg_base, desc_k, desc_v, tma_row, kh * D, offs_m, offs_d, full_hi,
                              hi, False, False, KV_ROW, SEQ, KV_SEQ,
                              sm_scale, qk_scale, soft_cap, WL, WR, CAUSAL, WINDOW, HAS_CAP,
                              HAS_BIAS, HAS_SEG, FAST, True, EVEN_M, BLOCK_N, DOT_PREC)

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
    lse_ptrs = Lse + bh.to(tl.int64) * SEQ + offs_m
    if EVEN_M:
        tl.store(Out + q_off, out.to(Out.dtype.element_ty))
        tl.store(lse_ptrs, lse)
    else:
        tl.store(Out + q_off, out.to(Out.dtype.element_ty), mask=(offs_m < SEQ)[:, None])
        tl.store(lse_ptrs, lse, mask=offs_m < SEQ)


@_jit
def _bwd_preprocess_kernel(O, DO, Delta, SEQ: tl.constexpr, HQ: tl.constexpr, D: tl.constexpr,
                           BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < SEQ
    off = b.to(tl.int64) * (SEQ * HQ * D) + h * D + offs_m[:, None] * (HQ * D) + offs_d[None, :]
    o = tl.load(O + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + bh.to(tl.int64) * SEQ + offs_m, tl.sum(o * do, 1), mask=row_ok)


@_jit
def _dq_loop(dq, q, do, lse, delta, q_pos, qseg, kv_len, k_base, v_base, bias_base, kseg_base,
             offs_m, offs_d, lo, hi,
             KV_ROW: tl.constexpr, SEQ: tl.constexpr, KV_SEQ: tl.constexpr,
             sm_scale: tl.constexpr, qk_scale: tl.constexpr, soft_cap: tl.constexpr,
             WL: tl.constexpr, WR: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
             HAS_CAP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEG: tl.constexpr,
             FAST: tl.constexpr, MASKED: tl.constexpr, EVEN_M: tl.constexpr,
             BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr):
    offs_nb = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_nb
        kv_off = offs_n[:, None] * KV_ROW + offs_d[None, :]
        kv_ok = offs_n < kv_len
        if MASKED:
            k = tl.load(k_base + kv_off, mask=kv_ok[:, None], other=0.0)
            v = tl.load(v_base + kv_off, mask=kv_ok[:, None], other=0.0)
        else:
            k = tl.load(k_base + kv_off)
            v = tl.load(v_base + kv_off)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        t = qk
        if FAST:
            s = qk * qk_scale
        else:
            bias = qk
            if HAS_BIAS:
                bias = _bias_tile(bias_base, offs_m, offs_n, offs_m < SEQ, kv_ok, KV_SEQ, MASKED, EVEN_M,
                                  False)
            s, t = _scores(qk, bias, sm_scale, soft_cap, HAS_CAP, HAS_BIAS)
        s = _visible(s, q_pos, offs_n, kv_ok, qseg, kseg_base + offs_n, kv_ok, WL, WR, CAUSAL, WINDOW,
                     HAS_SEG, MASKED, False)
        p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        if HAS_CAP:
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@_jit
def _bwd_dq_kernel(Q, K, V, Bias, QSeg, KSeg, VL, DO, Lse, Delta, DQ,
                   sm_scale: tl.constexpr, qk_scale: tl.constexpr, soft_cap: tl.constexpr,
                   SEQ: tl.constexpr, KV_SEQ: tl.constexpr, HQ: tl.constexpr, HK: tl.constexpr,
                   D: tl.constexpr, WL: tl.constexpr, WR: tl.constexpr,
                   CAUSAL: tl.constexpr, WINDOW: tl.constexpr, HAS_CAP: tl.constexpr,
                   HAS_BIAS: tl.constexpr, HAS_SEG: tl.constexpr, FAST: tl.constexpr,
                   DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    NUM_M: tl.constexpr = (SEQ + BLOCK_M - 1) // BLOCK_M
    EVEN_M: tl.constexpr = SEQ % BLOCK_M == 0
    Q_ROW: tl.constexpr = HQ * D
    KV_ROW: tl.constexpr = HK * D
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = (NUM_M - 1) - pid_m
    bh = tl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    kh = h // (HQ // HK)
    b64 = b.to(tl.int64)
    q_len = tl.load(VL)
    kv_len = tl.minimum(tl.load(VL + 1), KV_SEQ)
    off = kv_len - q_len

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q_off = b64 * (SEQ * Q_ROW) + h * D + offs_m[:, None] * Q_ROW + offs_d[None, :]
    lse_ptrs = Lse + bh.to(tl.int64) * SEQ + offs_m
    delta_ptrs = Delta + bh.to(tl.int64) * SEQ + offs_m
    if EVEN_M:
        q = tl.load(Q + q_off)
        do = tl.load(DO + q_off)
        lse = tl.load(lse_ptrs)
        delta = tl.load(delta_ptrs)
    else:
        row_ok = offs_m < SEQ
        q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + q_off, mask=row_ok[:, None], other=0.0)
        lse = tl.load(lse_ptrs, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_ptrs, mask=row_ok, other=0.0)
    k_base = K + b64 * (KV_SEQ * KV_ROW) + kh * D
    v_base = V + b64 * (KV_SEQ * KV_ROW) + kh * D
    bias_base = Bias
    if HAS_BIAS:
        bias_base = Bias + (b64 * HQ + h) * (SEQ * KV_SEQ)
    kseg_base = KSeg + b64 * KV_SEQ
    qseg = offs_m
    if HAS_SEG:
        qseg = tl.load(QSeg + b64 * SEQ + offs_m, mask=offs_m < SEQ, other=-1)
    q_pos = offs_m + off

    lo, full_lo, full_hi, hi = _kv_bounds(pid_m * BLOCK_M + off, kv_len, CAUSAL, WINDOW, WL, WR,
                                          BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    if WINDOW:
        dq = _dq_loop(dq, q, do, lse, delta, q_pos, qseg, kv_len, k_base, v_base, bias_base, kseg_base,
                      offs_m, offs_d, lo, full_lo, KV_ROW, SEQ, KV_SEQ, sm_scale, qk_scale, soft_cap,
                      WL, WR, CAUSAL, WINDOW, HAS_CAP, HAS_BIAS, HAS_SEG, FAST, True, EVEN_M,
                      BLOCK_N, DOT_PREC)
    dq = _dq_loop(dq, q, do, lse, delta, q_pos, qseg, kv_len, k_base, v_base, bias_base, kseg_base,
                  offs_m, offs_d, full_lo, full_hi, KV_ROW, SEQ, KV_SEQ, sm_scale, qk_scale, soft_cap,
                  WL, WR, CAUSAL, WINDOW, HAS_CAP, HAS_BIAS, HAS_SEG, FAST, False, EVEN_M,
                  BLOCK_N, DOT_PREC)
    dq = _dq_loop(dq, q, do, lse, delta, q_pos, qseg, kv_len, k_base, v_base, bias_base, kseg_base,
                  offs_m, offs_d, full_hi, hi, KV_ROW, SEQ, KV_SEQ, sm_scale, qk_scale, soft_cap,
                  WL, WR, CAUSAL, WINDOW, HAS_CAP, HAS_BIAS, HAS_SEG, FAST, True, EVEN_M,
                  BLOCK_N, DOT_PREC)
    dq = dq * sm_scale
    if EVEN_M:
        tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty))
    else:
        tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=(offs_m < SEQ)[:, None])


@_jit
def _dkdv_loop(dk, dv, k, v, offs_n, kv_ok, kseg, off, q_base, do_base, lse_base, delta_base,
               qseg_base, bias_base, dbias_base, offs_d, lo, hi, dq_acc, dq_b, dq_col,
               Q_ROW: tl.constexpr, SEQ: tl.constexpr, KV_SEQ: tl.constexpr,
               sm_scale: tl.constexpr, qk_scale: tl.constexpr, soft_cap: tl.constexpr,
               WL: tl.constexpr, WR: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
               HAS_CAP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEG: tl.constexpr,
               FAST: tl.constexpr, MASKED: tl.constexpr, FUSED_DQ: tl.constexpr,
               BLOCK_M: tl.constexpr, DOT_PREC: tl.constexpr):
    """Transposed tiles: rows are this program's keys, columns a block of queries. FUSED_DQ:
    each step's dQ partial (dS K over this program's keys) is added into the float32 buffer
    behind the descriptor dq_acc ([batch, seq, q_heads * head_dim]; box [1, BLOCK_M, D]) by a
    TMA reduction, which drops the rows past the sequence."""
    offs_mb = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_mb
        row_ok = offs_m < SEQ
        q_off = offs_m[:, None] * Q_ROW + offs_d[None, :]
        if MASKED:
            q = tl.load(q_base + q_off, mask=row_ok[:, None], other=0.0)
            lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
        else:
            q = tl.load(q_base + q_off)
            lse = tl.load(lse_base + offs_m)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
        tT = qkT
        if FAST:
            sT = qkT * qk_scale
        else:
            biasT = qkT
            if HAS_BIAS:     # unmasked steps cover whole query blocks within the sequence
                biasT = _bias_tile(bias_base, offs_m, offs_n, row_ok, kv_ok, KV_SEQ, MASKED, True, True)
            sT, tT = _scores(qkT, biasT, sm_scale, soft_cap, HAS_CAP, HAS_BIAS)
        sT = _visible(sT, offs_m + off, offs_n, kv_ok, kseg, qseg_base + offs_m, row_ok, WL, WR, CAUSAL,
                      WINDOW, HAS_SEG, MASKED, True)
        pT = tl.math.exp2(sT - lse[None, :])
        if MASKED:
            do = tl.load(do_base + q_off, mask=row_ok[:, None], other=0.0)
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        else:
            do = tl.load(do_base + q_off)
            delta = tl.load(delta_base + offs_m)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dsT = pT * (dpT - delta[None, :])
        if HAS_BIAS:
            db_ptrs = dbias_base + offs_m[None, :] * KV_SEQ + offs_n[:, None]
            if MASKED:
                tl.store(db_ptrs, dsT.to(dbias_base.dtype.element_ty),
                         mask=row_ok[None, :] & (offs_n < KV_SEQ)[:, None])
            else:
                tl.store(db_ptrs, dsT.to(dbias_base.dtype.element_ty))
        if HAS_CAP:
            dsT = dsT * (1.0 - tT * tT)
        ds16T = dsT.to(q.dtype)
        dk = tl.dot(ds16T, q, dk, input_precision=DOT_PREC)
        if FUSED_DQ:
            dq_part = tl.dot(tl.trans(ds16T), k, input_precision=DOT_PREC)
            dq_acc.atomic_add([dq_b, start_m, dq_col], dq_part.reshape([1, BLOCK_M, k.shape[1]]))
    return dk, dv


@_jit
def _zero_dbias_rows(dbias_base, offs_n, lo, hi, SEQ: tl.constexpr, KV_SEQ: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dbias = 0 for the query blocks [lo, hi) this key block never meets."""
    offs_mb = tl.arange(0, BLOCK_M)
    zeros = tl.zeros([BLOCK_N, BLOCK_M], dtype=dbias_base.dtype.element_ty)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_mb
        tl.store(dbias_base + offs_m[None, :] * KV_SEQ + offs_n[:, None], zeros,
                 mask=(offs_m < SEQ)[None, :] & (offs_n < KV_SEQ)[:, None])


@_jit
def _bwd_dkdv_kernel(Q, K, V, Bias, QSeg, KSeg, VL, DO, Lse, Delta, DQAcc, DK, DV, DBias,
                     sm_scale: tl.constexpr, qk_scale: tl.constexpr, soft_cap: tl.constexpr,
                     SEQ: tl.constexpr, KV_SEQ: tl.constexpr, HQ: tl.constexpr, HK: tl.constexpr,
                     D: tl.constexpr, WL: tl.constexpr, WR: tl.constexpr,
                     CAUSAL: tl.constexpr, WINDOW: tl.constexpr, HAS_CAP: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_SEG: tl.constexpr, FAST: tl.constexpr,
                     DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     FUSED_DQ: tl.constexpr):
    GROUP: tl.constexpr = HQ // HK
    Q_ROW: tl.constexpr = HQ * D
    KV_ROW: tl.constexpr = HK * D
    pid_n = tl.program_id(0)
    bkh = tl.program_id(1)
    b = bkh // HK
    kh = bkh % HK
    b64 = b.to(tl.int64)
    q_len = tl.load(VL)
    kv_len = tl.minimum(tl.load(VL + 1), KV_SEQ)
    off = kv_len - q_len

    n_first = pid_n * BLOCK_N
    offs_n = n_first + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    kv_ok = offs_n < kv_len
    kv_off = b64 * (KV_SEQ * KV_ROW) + kh * D + offs_n[:, None] * KV_ROW + offs_d[None, :]
    k = tl.load(K + kv_off, mask=kv_ok[:, None], other=0.0)
    v = tl.load(V + kv_off, mask=kv_ok[:, None], other=0.0)
    kseg = offs_n
    if HAS_SEG:
        kseg = tl.load(KSeg + b64 * KV_SEQ + offs_n, mask=kv_ok, other=-2)

    # Query rows i that can see some key of this block: i + off >= j (causal), and
    # j - WR <= i + off <= j + WL (window).
    n_last = n_first + (BLOCK_N - 1)
    m_start = n_first * 0
    m_end = m_start + SEQ
    full_lo = m_start
    full_hi = m_start + (SEQ // BLOCK_M) * BLOCK_M
    if CAUSAL:
        m_start = tl.maximum(m_start, n_first - off)
        full_lo = tl.maximum(full_lo, n_last - off)
    if WINDOW:
        m_start = tl.maximum(m_start, n_first - off - WR)
        full_lo = tl.maximum(full_lo, n_last - off - WR)
        m_end = tl.minimum(m_end, n_last - off + (WL + 1))
        full_hi = tl.minimum(full_hi, (tl.maximum(n_first - off + (WL + 1), 0) // BLOCK_M) * BLOCK_M)
    m_lo = (tl.minimum(m_start, SEQ) // BLOCK_M) * BLOCK_M
    m_hi = tl.where(n_first < kv_len, tl.maximum(m_end, m_lo), m_lo)
    full_lo = ((full_lo + (BLOCK_M - 1)) // BLOCK_M) * BLOCK_M
    full_lo = tl.minimum(tl.maximum(full_lo, m_lo), m_hi)
    full_hi = tl.where(n_last < kv_len, full_hi, full_lo)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), m_hi)
    visited_end = ((m_hi + (BLOCK_M - 1)) // BLOCK_M) * BLOCK_M

    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    qseg_base = QSeg + b64 * SEQ
    for g in range(GROUP):
        h = kh * GROUP + g
        bh64 = b64 * HQ + h
        q_base = Q + b64 * (SEQ * Q_ROW) + h * D
        do_base = DO + b64 * (SEQ * Q_ROW) + h * D
        lse_base = Lse + bh64 * SEQ
        delta_base = Delta + bh64 * SEQ
        bias_base = Bias
        dbias_base = DBias
        if HAS_BIAS:
            bias_base = Bias + bh64 * (SEQ * KV_SEQ)
            dbias_base = DBias + bh64 * (SEQ * KV_SEQ)
        dk, dv = _dkdv_loop(dk, dv, k, v, offs_n, kv_ok, kseg, off, q_base, do_base, lse_base,
                            delta_base, qseg_base, bias_base, dbias_base, offs_d, m_lo, full_lo,
                            DQAcc, b, h * D,
                            Q_ROW, SEQ, KV_SEQ, sm_scale, qk_scale, soft_cap, WL, WR, CAUSAL,
                            WINDOW, HAS_CAP, HAS_BIAS, HAS_SEG, FAST, True, FUSED_DQ, BLOCK_M, DOT_PREC)
        dk, dv = _dkdv_loop(dk, dv, k, v, offs_n, kv_ok, kseg, off, q_base, do_base, lse_base,
                            delta_base, qseg_base, bias_base, dbias_base, offs_d, full_lo, full_hi,
                            DQAcc, b, h * D,
                            Q_ROW, SEQ, KV_SEQ, sm_scale, qk_scale, soft_cap, WL, WR, CAUSAL,
                            WINDOW, HAS_CAP, HAS_BIAS, HAS_SEG, FAST, False, FUSED_DQ, BLOCK_M, DOT_PREC)
        dk, dv = _dkdv_loop(dk, dv, k, v, offs_n, kv_ok, kseg, off, q_base, do_base, lse_base,
                            delta_base, qseg_base, bias_base, dbias_base, offs_d, full_hi, m_hi,
                            DQAcc, b, h * D,
                            Q_ROW, SEQ, KV_SEQ, sm_scale, qk_scale, soft_cap, WL, WR, CAUSAL,
                            WINDOW, HAS_CAP, HAS_BIAS, HAS_SEG, FAST, True, FUSED_DQ, BLOCK_M, DOT_PREC)
        if HAS_BIAS:
            _zero_dbias_rows(dbias_base, offs_n, m_lo * 0, m_lo, SEQ, KV_SEQ, BLOCK_M, BLOCK_N)
            _zero_dbias_rows(dbias_base, offs_n, visited_end, m_lo * 0 + SEQ, SEQ, KV_SEQ, BLOCK_M, BLOCK_N)

    dk = dk * sm_scale
    out_off = b64 * (KV_SEQ * KV_ROW) + kh * D + offs_n[:, None] * KV_ROW + offs_d[None, :]
    store_ok = (offs_n < KV_SEQ)[:, None]
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=store_ok)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=store_ok)


# ----------------------------------------------------------------------------------------
# JAX side
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Static:
    causal: bool
    window: tuple[int, int] | None
    soft_cap: float | None
    scale: float
    cc: int
    fwd: tuple[int, int, int, int]        # block_m, block_n, num_warps, num_stages
    dkdv: tuple[int, int, int, int]       # block_m (queries), block_n (keys), warps, stages
    dq: tuple[int, int, int, int]         # block_m (queries), block_n (keys), warps, stages
    tma: bool = False                     # forward's main loop loads K/V through TMA (sm90+)
    ws: bool = False                      # forward's main loop warp-specialized (sm90+)
    gluon: bool = False                   # forward in Gluon where it can (gluon_sm90.py)
    fused_dq: bool = False                # dQ reduced by the dK/dV kernel (sm90+, 2-byte inputs)
    gluon_bwd: bool = False               # backward in Gluon where it can (gluon_sm90_bwd.py)


def _pow2_block(requested: int, n: int) -> int:
    """The requested block, shrunk toward the dimension (never below 16, tl.dot's minimum)."""
    b = max(16, int(requested))
    while b > 16 and b // 2 >= n:
        b //= 2
    return b



def _fit_2byte(kind, tiles, d, itemsize, cc, has_bias, fused_dq=False):
    """2-byte inputs: shrinks a kernel's tiles until its resident tiles and the pipeline
    stages of its streamed ones fit the shared memory of a block: stages down to 2, then the
    streamed block (to 16), then stages to 1, then the resident block. A config sized for
    the Gluon forward (which a bias or segment ids send to the Triton forward), or written
    by hand, may not fit as given, and the kernel would then compile but not launch.
      fwd   queries resident (Q), keys streamed (K, V, and a bias tile per stage)
      dkdv  keys resident (K, V), queries streamed (Q, dO, bias); fused_dq adds the dQ
            partial's float32 staging tile
      dq    queries resident (Q, dO), keys streamed (K, V, bias)
    float32 tiles are _fit_smem's and pass through."""
    m, n, warps, stages = tiles
    if itemsize > 2:
        return tiles
    blocks = {"m": m, "n": n}
    res, strm = ("n", "m") if kind == "dkdv" else ("m", "n")
    resident_tiles = 1 if kind == "fwd" else 2

    def need():
        bm, bn = blocks["m"], blocks["n"]
        per_stage = 2 * blocks[strm] * d + (bm * bn if has_bias else 0)
        staging = 4 * bm * d if kind == "dkdv" and fused_dq else 0
        return itemsize * (resident_tiles * blocks[res] * d + stages * per_stage) + staging
    while need() > shared_memory_per_block(cc):
        if stages > 2:
            stages -= 1
        elif blocks[strm] > 16:
            blocks[strm] //= 2
        elif stages > 1:
            stages -= 1
        elif blocks[res] > 16:
            blocks[res] //= 2
        else:
            break
    return blocks["m"], blocks["n"], warps, stages


def _fit_smem(kind, tiles, d, itemsize, cc):
    """Float32 inputs: shrinks the tiles (stages first, then the streamed block to 32, the
    resident block to 64, then both to 16) until an estimate of the kernel's shared memory
    fits the generation. tf32x3 dots keep two copies of a resident operand, hence the 2x.
    2-byte configs are fitted where the kernel is called (_fit_2byte), which knows the bias."""
    limit = int(shared_memory_per_block(cc) * 0.85)
    m, n, warps, stages = tiles
    if itemsize <= 2:
        return tiles

    def need(m, n, stages):
        if kind == "dkdv":      # keys (n) resident, queries (m) streamed
            return itemsize * (4 * n * d + stages * 2 * m * d + 2 * m * n)
        return itemsize * (4 * m * d + stages * 2 * n * d + 2 * m * n)   # fwd, dq: queries resident
    res, strm = ("n", "m") if kind == "dkdv" else ("m", "n")
    blocks = {"m": m, "n": n}
    while need(blocks["m"], blocks["n"], stages) > limit:
        if stages > 1:
            stages -= 1
        elif blocks[strm] > 32:
            blocks[strm] //= 2
        elif blocks[res] > 64:
            blocks[res] //= 2
        elif blocks[strm] > 16:
            blocks[strm] //= 2
        elif blocks[res] > 16:
            blocks[res] //= 2
        else:
            break
    if blocks["m"] * blocks["n"] < 64 * 64:
        warps = min(warps, 4)
    return blocks["m"], blocks["n"], warps, stages


def _make_static(q, k, config, causal, sliding_window, logits_soft_cap, softmax_scale) -> _Static:
    b, s, hq, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    dims = {"batch": b, "seq": s, "kv_seq": t, "q_heads": hq, "kv_heads": hk, "head_dim": d}
    static = {"causal": causal, "sliding_window": sliding_window,
              "logits_soft_cap": logits_soft_cap, "softmax_scale": softmax_scale}
    cfg = resolve_config("flash_attention", config, triton_heuristic, dims, static)
    cc = int(cfg["compute_capability"])
    itemsize = q.dtype.itemsize
    window = None if sliding_window is None else (int(sliding_window[0]), int(sliding_window[1]))
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)

    def tiles(kind, bm, bn, warps, stages):
        got = (_pow2_block(cfg[bm], s), _pow2_block(cfg[bn], t), int(cfg[warps]), int(cfg[stages]))
        return _fit_smem(kind, got, d, itemsize, cc)
    tma = bool(cfg.get("tma", False)) and has_tma(cc) and itemsize == 2
    fused_dq = bool(cfg.get("fused_dq", False)) and has_tma(cc) and itemsize == 2
    return _Static(
        causal=bool(causal), window=window,
        soft_cap=None if logits_soft_cap is None else float(logits_soft_cap),
        scale=scale, cc=cc,
        fwd=tiles("fwd", "block_m", "block_n", "num_warps", "num_stages"),
        dkdv=tiles("dkdv", "bwd_block_m", "bwd_block_n", "bwd_num_warps", "bwd_num_stages"),
        dq=tiles("dq", "dq_block_m", "dq_block_n", "dq_num_warps", "dq_num_stages"),
        tma=tma, ws=tma and bool(cfg.get("warp_specialize", False)),
        gluon=bool(cfg.get("gluon", False)) and has_wgmma(cc) and itemsize == 2 and gluon_head_dim_ok(d),
        fused_dq=fused_dq,
        # whole 64-row query tiles only: a TMA tile past the sequence would read (and its dQ
        # reduction add to) the next batch's rows, whose dO may be anything
        gluon_bwd=bool(cfg.get("gluon_bwd", False)) and has_wgmma(cc) and itemsize == 2 and d in (64, 128)
        and s % 64 == 0,
    )


def _constexprs(st: _Static, q, k, has_bias: bool, has_seg: bool) -> dict:
    import jax.numpy as jnp
    b, s, hq, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    if hq % hk:
        raise ValueError(f"flash_attention: q_heads={hq} is not a multiple of kv_heads={hk}")
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"flash_attention (triton): head_dim={d} must be a power of two in [16, 256]")
    has_cap = st.soft_cap is not None
    wl, wr = st.window if st.window is not None else (0, 0)
    return dict(
        sm_scale=st.scale, qk_scale=st.scale * LOG2E, soft_cap=st.soft_cap if has_cap else 1.0,
        SEQ=s, KV_SEQ=t, HQ=hq, HK=hk, D=d, WL=wl, WR=wr,
        CAUSAL=st.causal, WINDOW=st.window is not None, HAS_CAP=has_cap,
        HAS_BIAS=has_bias, HAS_SEG=has_seg,
        FAST=(not has_cap) and (not has_bias) and st.scale > 0,
        DOT_PREC="tf32x3" if q.dtype == jnp.float32 else "tf32",
    )


def _placeholders(q, bias, q_seg, kv_seg):
    """Absent optional inputs travel as one-element arrays the kernel never reads."""
    import jax.numpy as jnp
    has_seg = q_seg is not None and kv_seg is not None
    if (q_seg is None) != (kv_seg is None):
        raise ValueError("flash_attention: give both q_segment_ids and kv_segment_ids, or neither")
    bias_arg = bias if bias is not None else jnp.zeros((1,), q.dtype)
    qseg_arg = q_seg.astype(jnp.int32) if has_seg else jnp.zeros((1,), jnp.int32)
    kseg_arg = kv_seg.astype(jnp.int32) if has_seg else jnp.zeros((1,), jnp.int32)
    return bias_arg, qseg_arg, kseg_arg, has_seg


def _cdiv(a, b):
    return -(-a // b)


def _kv_descriptors(k, v, block_n: int, gluon: bool = False):
    """Host-made TMA descriptors over the 2-D views [batch * kv_seq, kv_heads * head_dim] of
    k and v; a box is one head's [block_n, head_dim] slice. jaxlib encodes them at launch.
    Made on the device instead (tl.make_tensor_descriptor), they need a global scratch
    buffer that jaxlib allocates and frees on the stream at every launch, which breaks the
    kernel inside XLA's command buffers (CUDA graphs; README, Serving). gluon: the
    descriptors carry the shared layout the Gluon kernel allocates its K/V slots with."""
    import jax_triton as jt
    install_compile_hook()       # completes the descriptors' metadata for jax-triton
    b, t, hk, d = k.shape
    extra = {}
    if gluon:
        import jax.numpy as jnp
        from .gluon_sm90 import gl
        elem = gl.bfloat16 if k.dtype == jnp.bfloat16 else gl.float16
        extra["layout"] = gl.NVMMASharedLayout.get_default_for([block_n, d], elem)
    return tuple(jt.TensorDescriptor.from_array(x.reshape(b * t, hk * d), block_shape=[block_n, d],
                                                **extra)
                 for x in (k, v))


def _forward(st: _Static, q, k, v, bias, q_seg, kv_seg, valid_lens):
    import jax
    import jax.numpy as jnp
    import jax_triton as jt
    b, s, hq, d = q.shape
    bias_arg, qseg_arg, kseg_arg, has_seg = _placeholders(q, bias, q_seg, kv_seg)
    ce = _constexprs(st, q, k, bias is not None, has_seg)
    bm, bn, warps, stages = st.fwd
    if st.gluon and ce["FAST"] and not has_seg and st.window is None and bm == 128:
        slots = gluon_ring_slots(d, bn)
        if slots >= 2:
            return _forward_gluon(q, k, v, valid_lens, ce, bn, max(2, min(stages, slots)), st.cc)
    bm, bn, warps, stages = _fit_2byte("fwd", st.fwd, d, q.dtype.itemsize, st.cc, bias is not None)
    desc_k, desc_v = _kv_descriptors(k, v, bn) if st.tma else (k, v)
    out, lse = jt.triton_call(
        q, k, v, desc_k, desc_v, bias_arg, qseg_arg, kseg_arg, valid_lens,
        kernel=_fwd_kernel,
        out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, s), jnp.float32)),
        grid=(_cdiv(s, bm), b * hq), num_warps=warps, num_stages=stages,
        compute_capability=st.cc, name="flash_attention_fwd",
        BLOCK_M=bm, BLOCK_N=bn, USE_TMA=st.tma, WS=st.ws, **ce)
    return out, lse


def gluon_ring_slots(head_dim: int, block_n: int) -> int:
    """How many slots each of the Gluon forward's K and V rings can have beside Q's 128
    rows in the 227 KB a Hopper block may use (2-byte inputs); below 2 the Gluon forward
    does not apply and the Triton one runs (e.g. head_dim 256 with 128-key blocks)."""
    from . import gluon_sm90
    return (227 * 1024 - 1024 - gluon_sm90.BLOCK_M * head_dim * 2) // (2 * block_n * head_dim * 2)


def _forward_gluon(q, k, v, valid_lens, ce, block_n, stages, cc):
    """The Gluon forward (gluon_sm90.py): BLOCK_M query rows per program, launched with the
    producer's 4 warps (_shared/gluon_pipeline.py adds the consumers' 8); stages: the K and V
    rings' slots each (gluon_ring_slots bounds them)."""
    import jax
    import jax.numpy as jnp
    import jax_triton as jt
    from . import gluon_sm90
    route_through_gluon_pipeline(gluon_sm90._fwd_sm90)     # compiled as Gluon, launched with 12 warps
    b, s, hq, d = q.shape
    desc_k, desc_v = _kv_descriptors(k, v, block_n, gluon=True)
    return jt.triton_call(
        q, desc_k, desc_v, valid_lens,
        kernel=gluon_sm90._fwd_sm90,
        out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, s), jnp.float32)),
        grid=(_cdiv(s, gluon_sm90.BLOCK_M), b * hq), num_warps=4, num_stages=1,
        compute_capability=cc, name="flash_attention_fwd",
        qk_scale=ce["qk_scale"], SEQ=s, KV_SEQ=ce["KV_SEQ"], HQ=hq, HK=ce["HK"], D=d,
        CAUSAL=ce["CAUSAL"], BLOCK_N=block_n, STAGES=stages)


def _backward(st: _Static, q, k, v, bias, q_seg, kv_seg, valid_lens, out, lse, dout):
    import jax
    import jax.numpy as jnp
    import jax_triton as jt
    b, s, hq, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    dout = dout.astype(q.dtype)
    bias_arg, qseg_arg, kseg_arg, has_seg = _placeholders(q, bias, q_seg, kv_seg)
    ce = _constexprs(st, q, k, bias is not None, has_seg)

    pre_bm = 64 if d <= 128 else 32
    delta = jt.triton_call(
        out, dout, kernel=_bwd_preprocess_kernel,
        out_type=jax.ShapeDtypeStruct((b, hq, s), jnp.float32),
        grid=(_cdiv(s, pre_bm), b * hq), num_warps=4, num_stages=1,
        compute_capability=st.cc, name="flash_attention_bwd_delta",
        SEQ=s, HQ=hq, D=d, BLOCK_M=pre_bm)
    if st.gluon_bwd and ce["FAST"] and not has_seg and st.window is None and bias is None:
        return _backward_gluon(st, q, k, v, valid_lens, dout, lse, delta, ce)

    bm, bn, warps, stages = _fit_2byte("dkdv", st.dkdv, d, q.dtype.itemsize, st.cc, bias is not None,
                                       st.fused_dq)
    dbias_type = jax.ShapeDtypeStruct(bias.shape if bias is not None else (1,), bias_arg.dtype)
    out_type = (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype), dbias_type)
    if st.fused_dq:
        # dQ summed over the key blocks in float32, in place: the zeroed buffer is the
        # kernel's 11th operand (flattened: a descriptor is its array) and its 4th output
        install_compile_hook()       # completes the descriptor's metadata for jax-triton
        acc = jnp.zeros((b, s, hq * d), jnp.float32)
        dq_arg = jt.TensorDescriptor.from_array(acc, block_shape=[1, bm, d])
        out_type += (jax.ShapeDtypeStruct(acc.shape, acc.dtype),)
        aliases = {10: 3}
    else:
        dq_arg, aliases = jnp.zeros((1,), jnp.float32), None     # unread
    res = jt.triton_call(
        q, k, v, bias_arg, qseg_arg, kseg_arg, valid_lens, dout, lse, delta, dq_arg,
        kernel=_bwd_dkdv_kernel, out_type=out_type, input_output_aliases=aliases,
        grid=(_cdiv(t, bn), b * hk), num_warps=warps, num_stages=stages,
        compute_capability=st.cc, name="flash_attention_bwd_dkdv" + ("_dq" if st.fused_dq else ""),
        BLOCK_M=bm, BLOCK_N=bn, FUSED_DQ=st.fused_dq, **ce)
    dk, dv, dbias = res[:3]
    if st.fused_dq:
        dq = (res[3] * st.scale).reshape(q.shape).astype(q.dtype)
        return dq, dk, dv, (dbias if bias is not None else None)

    bm, bn, warps, stages = _fit_2byte("dq", st.dq, d, q.dtype.itemsize, st.cc, bias is not None)
    dq = jt.triton_call(
        q, k, v, bias_arg, qseg_arg, kseg_arg, valid_lens, dout, lse, delta,
        kernel=_bwd_dq_kernel,
        out_type=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid=(_cdiv(s, bm), b * hq), num_warps=warps, num_stages=stages,
        compute_capability=st.cc, name="flash_attention_bwd_dq",
        BLOCK_M=bm, BLOCK_N=bn, **ce)
    return dq, dk, dv, (dbias if bias is not None else None)


def _backward_gluon(st: _Static, q, k, v, valid_lens, dout, lse, delta, ce):
    """The Gluon backward (gluon_sm90_bwd.py): dK and dV, and dQ added into a zeroed float32
    buffer (its 8th operand, a TMA descriptor flattened to its array, aliased to its 3rd
    output), scaled and cast here."""
    import jax
    import jax.numpy as jnp
    import jax_triton as jt
    from . import gluon_sm90_bwd as gb
    from .gluon_sm90 import gl
    route_through_gluon_pipeline(gb._bwd_sm90)     # compiled as Gluon, launched with 12 warps
    b, s, hq, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    elem = gl.bfloat16 if q.dtype == jnp.bfloat16 else gl.float16

    def desc(x, rows):
        layout = gl.NVMMASharedLayout.get_default_for([rows, d], elem)
        return jt.TensorDescriptor.from_array(x.reshape(-1, x.shape[2] * d), block_shape=[rows, d],
                                              layout=layout)
    acc = jnp.zeros((b * s, hq * d), jnp.float32)
    dq_desc = jt.TensorDescriptor.from_array(
        acc, block_shape=[gb.BLOCK_M, d // 2],
        layout=gl.NVMMASharedLayout.get_default_for([gb.BLOCK_M, d // 2], gl.float32))
    dk, dv, acc = jt.triton_call(
        desc(q, gb.BLOCK_M), desc(dout, gb.BLOCK_M), desc(k, gb.BLOCK_N), desc(v, gb.BLOCK_N),
        lse, delta, valid_lens, dq_desc,
        kernel=gb._bwd_sm90,
        out_type=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
                  jax.ShapeDtypeStruct(acc.shape, acc.dtype)),
        input_output_aliases={7: 2},
        grid=(b * hk, _cdiv(t, gb.BLOCK_N)), num_warps=4, num_stages=1,
        compute_capability=st.cc, name="flash_attention_bwd_gluon",
        sm_scale=st.scale, qk_scale=ce["qk_scale"], SEQ=s, KV_SEQ=t, HQ=hq, HK=hk, D=d,
        CAUSAL=st.causal, STAGES=2)
    dq = (acc * st.scale).reshape(q.shape).astype(q.dtype)
    return dq, dk, dv, None


@functools.cache
def _differentiable():
    import jax

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def flash(st, q, k, v, bias, q_seg, kv_seg, valid_lens):
        return _forward(st, q, k, v, bias, q_seg, kv_seg, valid_lens)[0]

    def flash_fwd(st, q, k, v, bias, q_seg, kv_seg, valid_lens):
        out, lse = _forward(st, q, k, v, bias, q_seg, kv_seg, valid_lens)
        return out, (q, k, v, bias, q_seg, kv_seg, valid_lens, out, lse)

    def flash_bwd(st, res, dout):
        q, k, v, bias, q_seg, kv_seg, valid_lens, out, lse = res
        dq, dk, dv, dbias = _backward(st, q, k, v, bias, q_seg, kv_seg, valid_lens, out, lse, dout)
        return dq, dk, dv, dbias, None, None, None

    flash.defvjp(flash_fwd, flash_bwd)
    return flash


def flash_attention_impl(inputs, valid_lens, *, config, causal, sliding_window, logits_soft_cap,
                         softmax_scale):
    import jax.numpy as jnp
    q, k, v = inputs["query"], inputs["key"], inputs["value"]
    bias = inputs.get("bias")
    q_seg, kv_seg = inputs.get("q_segment_ids"), inputs.get("kv_segment_ids")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    st = _make_static(q, k, config, causal, sliding_window, logits_soft_cap, softmax_scale)
    valid_lens = jnp.asarray(valid_lens, jnp.int32).reshape(2)
    out = _differentiable()(st, q, k, v, bias, q_seg, kv_seg, valid_lens)
    return (out,)

"""The Triton MLA decode library (through jax-triton): the absorbed (latent-space) decode
kernels for NVIDIA GPUs that mla_attention's Triton backend (kernels/mla_attention/
triton_gpu.py) and paged_mla_attention's (kernels/paged_mla_attention/triton_gpu.py) run.

A decode step in the absorbed form (mla_attention.configs.choose_form):

  1. XLA: q_lat[b, s, h] = q[b, s, h] @ w_kc[:, g(h)]^T      (a batched GEMM, f32 acc)
  2. Triton: for each (batch, block of BLOCK_H rows, kv split) one program streams the
     latent cache key_value[b] (rank-wide, 512 in DeepSeek-V3) and b_k[b] (rope_dim, 64)
     ONCE for all the rows of the block. Rows are (query position, head) pairs, so with
     128 heads and one query the 128 heads are two row blocks that read the same cache
     blocks at the same time (neighbouring program ids; the second read comes from L2).
     Per kv block: logits = q_lat . kv + b_q . b_k on the tensor cores (the kv tile is
     loaded once and serves as K^T for the logits and as V for p @ kv), online softmax
     in float32 (log2 domain, exp2), out_lat += p @ kv.
  3. Split-KV (flash-decoding): with `num_splits` > 1 every program covers one slice of
     the visible keys and writes its normalized partial out_lat (f32) and log-sum-exp; a
     small combine kernel merges the slices. It keeps the SMs busy when batch x row
     blocks alone would not (small batches); mla_attention.configs.triton_heuristic
     picks the count.
  4. XLA: out[b, s, h] = out_lat[b, s, h] @ w_vc[:, g(h)].

Steps 1 and 4 are mla_projections.py's; `latent_attention` here is steps 2 and 3, and
`make_static` turns a config into the kernel and tiles it runs.

Paged caches (the `paged_mla_attention` kernel): the same kernels with PAGE > 0 read the
latent cache and rope keys as pages of PAGE rows through a block table, one query per
sequence at the end of its own context length. The Gluon kernels look each block's
page(s) up one block ahead of its TMA (a block is one box when the page is a multiple of
it, one box per page when the page divides it: mla_attention.configs.gluon_tiles_page)
and zero the rows of a sequence's last block past its context in shared memory before
p @ kv: a page's unused rows may hold NaN. The tl.dot kernel (other page sizes) looks every key's page up
and masks its loads. A key whose block-table entry is out of range (< 0 or >= the cache's
pages) is masked out in every kernel and never reads another sequence's page: the tl.dot
kernel does not load it, the Gluon kernels point its TMA box past the cache's end (TMA
fills zeros) and drop its logits (paged_mla_attention's rule, as the XLA backend).
Measured on an H100 (BENCHMARKS.md), 64-token pages in shuffled order run as fast as the
contiguous cache, and 16- or 32-token pages within 5% of them.

Masks follow the XLA backend exactly: keys >= kv_len are padding (given zero weight; the
tl.dot kernel does not even load them, the TMA of the wgmma kernel may bring some of the
last block in), causal is bottom-right aligned (key j visible to query i when
j <= i + kv_len - q_len), and a row that sees no key returns zeros. Key blocks no row of
a program can see are skipped by the loop bounds. The valid lengths are traced (read by
the kernel); everything else is a compile-time constant.

Kernels: on Hopper (sm90, 2-byte dtypes) two Gluon kernels with explicit wgmma layouts
and a TMA ring: the warp-specialized `_mla_decode_sm90_ws` (the default: one warpgroup
computes logits and softmax while the other accumulates p @ kv; notes above it) and the
lockstep `_mla_decode_sm90` (both warpgroups on every phase; notes above it); elsewhere,
and for float32 (exact-f32 FMA dots), a portable tl.dot kernel (`_mla_decode_kernel`).
config["kernel"] picks ("wgmma_ws" | "wgmma" | "dot"); shapes the Gluon kernels do not
tile fall back to "dot".

Measured on an H100 (DeepSeek-V3 decode, 128 heads, rank 512, rope 64, 4096 keys, bf16;
BENCHMARKS.md): the warp-specialized kernel alone 162 us at batch 64 and 304 us at batch
128 (66% and 70% of the 3.0 TB/s copy bandwidth, counting cache + rope keys + q_lat +
out_lat), against 196 us and 370 us for the lockstep kernel, whose clock64 profile showed
the tensor cores idle during each block's softmax.

Only importable where triton is installed (build hosts and GPU hosts with jax-triton);
it touches no device at import. jax and jax_triton are imported on first call.
"""
from __future__ import annotations

import dataclasses

from ejaot_kernels._shared.gluon_pipeline import install_compile_hook, route_through_gluon_pipeline
from ejaot_kernels._shared.gluon_support import zero_tail as _gl_zero_tail
from ejaot_kernels.mla_attention.configs import QUARTER_MIN_RANK, WS_MIN_RANK, fit_triton_tiles, page_kernel
from ejaot_kernels.triton_support import LOG2E, jit as _jit, next_pow2, tl

try:  # Gluon (Triton's explicit-layout dialect): the Hopper kernel
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_init,
                                                                  warpgroup_mma_wait)
    _gluon_jit = gluon.jit
except ImportError:  # pragma: no cover - older triton, or none
    gluon = gl = None

    def _gluon_jit(fn):
        return fn

# ----------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------


@_jit
def _attend_blocks(acc, l_i, m_i, q, qpe, q_pos, kv_base, bk_base, bt_row, kv_len, lo, hi,
                   offs_r, offs_e, qk_scale: tl.constexpr, R: tl.constexpr, RP: tl.constexpr,
                   E: tl.constexpr, EP: tl.constexpr, HAS_ROPE: tl.constexpr,
                   CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
                   STAGES: tl.constexpr, DOT_PREC: tl.constexpr, PAGE: tl.constexpr,
                   KV_ROWS: tl.constexpr):
    """Online softmax over key blocks [lo, hi). MASKED: the kv_len edge and the causal
    diagonal are tested; otherwise every row sees every key of every block. PAGE > 0:
    key n lives in cache row bt_row[n // PAGE] * PAGE + n % PAGE, and a key whose page
    index is out of range (< 0 or >= the cache's pages) is masked out, never loaded
    (paged_mla_attention's rule, as the XLA backend), in every block."""
    offs_nb = tl.arange(0, BLOCK_N)
    r_ok = offs_r < R
    e_ok = offs_e < E
    for start_n in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_nb
        if PAGE > 0:
            if MASKED:
                page = tl.load(bt_row + offs_n // PAGE, mask=offs_n < kv_len, other=0)
            else:
                page = tl.load(bt_row + offs_n // PAGE)
            n_ok = (page >= 0) & (page < KV_ROWS // PAGE)           # one compare per key
            if MASKED:
                n_ok = n_ok & (offs_n < kv_len)
            rows = tl.where(n_ok, page, 0).to(tl.int64) * PAGE + offs_n % PAGE
        else:
            rows = offs_n.to(tl.int64)
            if MASKED:
                n_ok = offs_n < kv_len
        kv_ptrs = kv_base + rows[:, None] * R + offs_r[None, :]
        if MASKED or PAGE > 0:
            kv = tl.load(kv_ptrs, mask=n_ok[:, None] & r_ok[None, :], other=0.0)
        elif RP != R:
            kv = tl.load(kv_ptrs, mask=r_ok[None, :], other=0.0)
        else:
            kv = tl.load(kv_ptrs)
        s = tl.dot(q, tl.trans(kv), input_precision=DOT_PREC)
        if HAS_ROPE:
            bk_ptrs = bk_base + rows[:, None] * E + offs_e[None, :]
            if MASKED or PAGE > 0:
                bk = tl.load(bk_ptrs, mask=n_ok[:, None] & e_ok[None, :], other=0.0)
            elif EP != E:
                bk = tl.load(bk_ptrs, mask=e_ok[None, :], other=0.0)
            else:
                bk = tl.load(bk_ptrs)
            s = tl.dot(qpe, tl.trans(bk), s, input_precision=DOT_PREC)
        s = s * qk_scale
        if MASKED or PAGE > 0:
            keep = n_ok[None, :]
            if MASKED and CAUSAL:
                keep = keep & (offs_n[None, :] <= q_pos[:, None])
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED or PAGE > 0:
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # nothing seen yet
        else:
            m_use = m_new
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(kv.dtype), kv, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@_jit
def _mla_decode_kernel(QL, BQ, KV, BK, VL, BT, O, LSE,
                       qk_scale: tl.constexpr, SEQ: tl.constexpr, KV_SEQ: tl.constexpr,
                       HQ: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, E: tl.constexpr,
                       EP: tl.constexpr, HAS_ROPE: tl.constexpr, CAUSAL: tl.constexpr,
                       NUM_SPLITS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                       STAGES: tl.constexpr, DOT_PREC: tl.constexpr, PAGE: tl.constexpr,
                       KV_ROWS: tl.constexpr):
    """Grid (row blocks, splits, batch); row m of a batch is (query m // HQ, head m % HQ).
    QL [B, SEQ*HQ, R]; BQ [B, SEQ, E].
    PAGE == 0: KV [B, KV_SEQ, R]; BK [B, KV_SEQ, E]; VL int32[2] (q_len, kv_len); BT unused.
    PAGE > 0 (paged decode, SEQ == 1): KV [KV_ROWS, R] and BK [KV_ROWS, E], the caches'
    pages of PAGE rows end to end; VL int32[B] each sequence's context length (its query
    sits at the last position); BT int32[B, KV_SEQ // PAGE] the block tables.
    NUM_SPLITS == 1: O [B, SEQ*HQ, R] (normalized out_lat), LSE unused.
    NUM_SPLITS > 1:  O [B, NUM_SPLITS, SEQ*HQ, R] f32 partials, LSE [B, NUM_SPLITS, SEQ*HQ]
    (base 2, -inf for a slice that saw no key)."""
    M: tl.constexpr = SEQ * HQ
    EVEN_H: tl.constexpr = M % BLOCK_H == 0
    pid_h = tl.program_id(0)
    split = tl.program_id(1)
    b64 = tl.program_id(2).to(tl.int64)
    if PAGE > 0:
        kv_len = tl.minimum(tl.maximum(tl.load(VL + b64), 0), KV_SEQ)
        off = kv_len - 1
        kv_base = KV
        bk_base = BK
        bt_row = BT + b64 * (KV_SEQ // PAGE)
    else:
        kv_len = tl.minimum(tl.load(VL + 1), KV_SEQ)
        off = kv_len - tl.load(VL)
        kv_base = KV + b64 * (KV_SEQ * R)
        bk_base = BK + b64 * (KV_SEQ * E)
        bt_row = BT

    rows = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < M
    rows_c = tl.minimum(rows, M - 1)
    q_idx = rows_c // HQ                       # the query position of each row
    q_pos = q_idx + off                        # its key position (bottom-right aligned)
    offs_r = tl.arange(0, RP)
    offs_e = tl.arange(0, EP)

    q_ptrs = QL + b64 * (M * R) + rows_c[:, None] * R + offs_r[None, :]
    if RP != R:
        q = tl.load(q_ptrs, mask=(offs_r < R)[None, :], other=0.0)
    else:
        q = tl.load(q_ptrs)
    qpe = q
    if HAS_ROPE:
        qpe_ptrs = BQ + b64 * (SEQ * E) + q_idx[:, None] * E + offs_e[None, :]
        if EP != E:
            qpe = tl.load(qpe_ptrs, mask=(offs_e < E)[None, :], other=0.0)
        else:
            qpe = tl.load(qpe_ptrs)

    # Keys any row of the block may see: [0, hi); keys every row sees: [0, full_hi).
    first_q = (pid_h * BLOCK_H) // HQ
    last_q = tl.minimum(pid_h * BLOCK_H + (BLOCK_H - 1), M - 1) // HQ
    hi = kv_len
    full_hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, last_q + off + 1)
        full_hi = tl.minimum(full_hi, first_q + off + 1)
    hi = tl.maximum(hi, 0)
    full_hi = (tl.maximum(full_hi, 0) // BLOCK_N) * BLOCK_N
    # This program's slice of the visible key blocks (whole blocks; the last may be short).
    n_blocks = tl.cdiv(hi, BLOCK_N)
    per_split = tl.cdiv(n_blocks, NUM_SPLITS)
    lo = tl.minimum(split * per_split * BLOCK_N, hi)
    hi_s = tl.minimum(lo + per_split * BLOCK_N, hi)
    mid = tl.maximum(tl.minimum(hi_s, full_hi), lo)

    acc = tl.zeros([BLOCK_H, RP], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, qpe, q_pos, kv_base, bk_base, bt_row, kv_len,
                                   lo, mid, offs_r, offs_e, qk_scale, R, RP, E, EP, HAS_ROPE, CAUSAL,
                                   False, BLOCK_N, STAGES, DOT_PREC, PAGE, KV_ROWS)
    acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, qpe, q_pos, kv_base, bk_base, bt_row, kv_len,
                                   mid, hi_s, offs_r, offs_e, qk_scale, R, RP, E, EP, HAS_ROPE, CAUSAL,
                                   True, BLOCK_N, 1, DOT_PREC, PAGE, KV_ROWS)

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    st_mask = row_ok[:, None] & (offs_r < R)[None, :]
    if NUM_SPLITS == 1:
        o_ptrs = O + b64 * (M * R) + rows[:, None] * R + offs_r[None, :]
        if EVEN_H and RP == R:
            tl.store(o_ptrs, out.to(O.dtype.element_ty))
        else:
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=st_mask)
    else:
        part = b64 * NUM_SPLITS + split
        o_ptrs = O + part * (M * R) + rows[:, None] * R + offs_r[None, :]
        tl.store(o_ptrs, out, mask=st_mask)
        lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(LSE + part * M + rows, lse, mask=row_ok)


@_jit
def _combine_kernel(OP, LSE, O, M: tl.constexpr, R: tl.constexpr, NUM_SPLITS: tl.constexpr,
                    SP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merges the split partials: out = sum_k 2^(lse_k - max) o_k / sum_k 2^(lse_k - max);
    rows every slice of which saw no key give zeros. Grid (row blocks, column blocks,
    batch): a program loads every split's [BLOCK_M, BLOCK_C] tile in one [SP, BLOCK_M,
    BLOCK_C] load (SP: NUM_SPLITS rounded up to a power of two), so all the splits' reads
    are in flight at once and a few long contexts still spread over many programs."""
    b64 = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ks = tl.arange(0, SP)
    row_ok = rows < M
    k_ok = ks < NUM_SPLITS
    lse = tl.load(LSE + b64 * (NUM_SPLITS * M) + ks[:, None] * M + rows[None, :],
                  mask=k_ok[:, None] & row_ok[None, :], other=float("-inf"))
    m = tl.max(lse, axis=0)
    w = tl.math.exp2(lse - tl.where(m == float("-inf"), 0.0, m)[None, :])     # [SP, BLOCK_M]
    den = tl.sum(w, axis=0)
    ok3 = k_ok[:, None, None] & row_ok[None, :, None] & (cols < R)[None, None, :]
    o = tl.load(OP + (b64 * NUM_SPLITS + ks[:, None, None]) * (M * R) + rows[None, :, None] * R
                + cols[None, None, :], mask=ok3, other=0.0)
    out = tl.sum(w[:, :, None] * o, axis=0) / tl.where(den == 0.0, 1.0, den)[:, None]
    tl.store(O + b64 * (M * R) + rows[:, None] * R + cols[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (cols < R)[None, :])


COMBINE_TILE = 4096     # f32 elements a combine program loads: 32 per thread of its 4 warps


def combine_tiles(num_splits: int, m: int, r: int) -> tuple[int, int, int]:
    """(SP, BLOCK_M, BLOCK_C) of _combine_kernel: up to 128 columns, then as many rows as keep
    the [SP, BLOCK_M, BLOCK_C] tile within COMBINE_TILE elements; with many splits the tile
    narrows to 2 rows x 32 columns (128-byte row segments), and is larger only past 64
    splits."""
    sp = next_pow2(num_splits)
    block_c = min(next_pow2(r), 128)
    block_m = max(2, min(next_pow2(m), COMBINE_TILE // (sp * block_c)))
    while sp * block_m * block_c > COMBINE_TILE and block_c > 32:
        block_c //= 2
    return sp, block_m, block_c


# ----------------------------------------------------------------------------------------
# Hopper (sm90) kernel in Gluon
# ----------------------------------------------------------------------------------------
# Why not tl.dot here: with two dependent dots (logits, then p @ kv) Triton lays the logits
# tile out with all 8 warps along its 64 rows, so both warpgroups compute the same
# 64 x 64 x 576 product (the second copy is wasted tensor-core time), and it pipelines the
# kv stream with per-thread cp.async addresses. Gluon states the layouts: the logits
# tile is split between the two warpgroups by columns (each computes 64 heads x 32 keys),
# out_lat (64 x 512, f32) by columns too (each owns 256 of the 512 latent dims), the row
# max crosses warpgroups through shared memory, and p reaches both warpgroups through a
# small shared tile. kv / b_k blocks arrive by TMA into a two-stage ring on mbarriers.
#
# Per kv block j (all 256 threads):
#   wait TMA(j); wait own p@kv(j-1); CTA barrier (now every warpgroup is done with
#   stage j-1 and with the p tile) -> issue TMA(j+1) into stage j-1's slot;
#   logits = q_lat @ kv_j^T (+ b_q @ b_k_j^T), wgmma from shared memory; mask; online
#   softmax (row max across warpgroups); p -> shared; barrier; out_lat += p @ kv_j, async
#   (it overlaps the next block's TMA wait).
# Shared memory (bf16, 64 heads, 64 keys, rank 512, rope 64): q_lat 64 KB + b_q 8 KB +
# 2 x (kv 64 KB + b_k 8 KB) + p 8 KB = 224 KB of the 227 KB a block may use.


@_gluon_jit
def _gl_key_ok(bt_row, first, offs_n, kv_len, PAGE: gl.constexpr, KV_ROWS: gl.constexpr,
               BLOCK_N: gl.constexpr):
    """Which keys offs_n of the block starting at key `first` count: those before kv_len
    and, paged, on a page of the cache (block-table entry in [0, KV_ROWS // PAGE);
    _gl_block_row sends an entry out of range past the cache's end, so its TMA box reads
    zeros, and this masks its keys out). The block's pages are read as scalars (one, or
    BLOCK_N // PAGE: a page never straddles a block) into a bit per page, then one shift
    per key: no per-key load on the softmax warps. The loops call it before waiting for
    the block's TMA, so the table reads (cached) overlap that wait."""
    ok = offs_n < kv_len
    if PAGE >= BLOCK_N:
        page = gl.load(bt_row + first // PAGE, mask=first < kv_len, other=0)
        ok = ok & (page >= 0) & (page < KV_ROWS // PAGE)
    elif PAGE > 0:
        bits = (first * 0).to(gl.int32)
        for c in gl.static_range(BLOCK_N // PAGE):
            page = gl.load(bt_row + first // PAGE + c, mask=first + c * PAGE < kv_len, other=0)
            bits = bits | (((page >= 0) & (page < KV_ROWS // PAGE)).to(gl.int32) << c)
        ok = ok & (((bits >> ((offs_n - first) // PAGE)) & 1) != 0)
    return ok


@_gluon_jit
def _gl_online_softmax(s, m_i, key_ok, offs_n, q_pos, qk_scale: gl.constexpr, CAUSAL: gl.constexpr):
    """One block of the online softmax (base 2): the block's logits s [rows, keys] scaled
    and masked (keys not key_ok: past kv_len, or on an out-of-range page; causal: keys past
    each row's query position), the new running row max, p = exp2(s - max) and the factor
    alpha that rescales what was summed before. A row that has seen no key keeps max -inf,
    p 0 and alpha 1 (no NaN)."""
    s = s * qk_scale
    keep = key_ok[None, :]
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= q_pos[:, None])
    s = gl.where(keep, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    return gl.exp2(s - m_use[:, None]), gl.exp2(m_i - m_use), m_new


@_gluon_jit
def _gl_block_row(first, j, bt_row, pred, BLOCK_N: gl.constexpr, PAGE: gl.constexpr,
                  KV_ROWS: gl.constexpr, KV_SEQ: gl.constexpr, RL: gl.constexpr):
    """The first cache row of the program's block j (first: the program's first TMA row).
    Paged (PAGE > 0; first: the program's first key): a page a multiple of the block
    gives the row from the block table, and a page that divides the block the first row
    of each of its BLOCK_N // PAGE pages (a tensor in layout RL). A page index out of
    range (< 0 or >= the cache's pages) gives row KV_ROWS, past the cache's end: that box's
    TMA reads zeros (nothing of another sequence's page), and _gl_key_ok masks its keys
    out. The loops look a block's rows up one block before its TMA, so the table read's
    latency stays off the copy's critical path."""
    row = first + j * BLOCK_N
    if PAGE >= BLOCK_N:
        page = gl.load(bt_row + row // PAGE, mask=pred, other=0)
        ok = (page >= 0) & (page < KV_ROWS // PAGE)
        row = gl.where(ok, page * PAGE + row % PAGE, KV_ROWS)
    elif PAGE > 0:
        blk = row // PAGE + gl.arange(0, BLOCK_N // PAGE, layout=RL)
        page = gl.load(bt_row + blk, mask=pred & (blk < KV_SEQ // PAGE), other=0)
        ok = (page >= 0) & (page < KV_ROWS // PAGE)
        row = gl.where(ok, page * PAGE, KV_ROWS)
    return row


@_gluon_jit
def _gl_issue(kv_desc, bk_desc, kv_smem, bk_smem, bars, j, row, pred,
              HAS_ROPE: gl.constexpr, STAGES: gl.constexpr, BOXES: gl.constexpr = 1):
    """TMA of block j (from cache row `row`) into stage j % STAGES, when pred. BOXES > 1:
    `row` holds the first rows of the block's BOXES pages, one box each."""
    slot = j % STAGES
    bar = bars.index(slot)
    if BOXES > 1:
        nbytes: gl.constexpr = kv_desc.block_type.nbytes + (bk_desc.block_type.nbytes if HAS_ROPE else 0)
        mbarrier.expect(bar, BOXES * nbytes, pred=pred)
        box: gl.constexpr = kv_desc.block_type.shape[0]
        which = gl.arange(0, BOXES, layout=row.type.layout)
        for c in gl.static_range(BOXES):
            r = gl.sum(gl.where(which == c, row, 0), axis=0)
            tma.async_copy_global_to_shared(kv_desc, [r, 0], bar, kv_smem.index(slot).slice(c * box, box),
                                            pred=pred)
            if HAS_ROPE:
                tma.async_copy_global_to_shared(bk_desc, [r, 0], bar,
                                                bk_smem.index(slot).slice(c * box, box), pred=pred)
    elif HAS_ROPE:
        mbarrier.expect(bar, kv_desc.block_type.nbytes + bk_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(kv_desc, [row, 0], bar, kv_smem.index(slot), pred=pred)
        tma.async_copy_global_to_shared(bk_desc, [row, 0], bar, bk_smem.index(slot), pred=pred)
    else:
        mbarrier.expect(bar, kv_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(kv_desc, [row, 0], bar, kv_smem.index(slot), pred=pred)


@_gluon_jit
def _gl_program(VL, BT, KV_SEQ: gl.constexpr, PAGE: gl.constexpr):
    """(row block, kv split, batch, batch as int64, kv_len, kv_len - q_len, block-table
    row) of this program; the lengths are read from device memory (paged: the sequence's
    context length, its one query at the last position)."""
    b = gl.program_id(2)
    b64 = b.to(gl.int64)
    if PAGE > 0:
        kv_len = gl.minimum(gl.maximum(gl.load(VL + b64), 0), KV_SEQ)
        off = kv_len - 1
        bt_row = BT + b64 * (KV_SEQ // PAGE)
    else:
        kv_len = gl.minimum(gl.load(VL + 1), KV_SEQ)
        off = kv_len - gl.load(VL)
        bt_row = BT
    return gl.program_id(0), gl.program_id(1), b, b64, kv_len, off, bt_row


@_gluon_jit
def _gl_stage_q(QL, BQ, b64, pid_h, SEQ: gl.constexpr, HQ: gl.constexpr, R: gl.constexpr,
                E: gl.constexpr, HAS_ROPE: gl.constexpr, BLOCK_H: gl.constexpr, LD_L: gl.constexpr):
    """The program's q_lat rows (and their b_q rows) in shared memory, loaded once."""
    M: gl.constexpr = SEQ * HQ
    dtype: gl.constexpr = QL.dtype.element_ty
    q_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, R], dtype)
    qpe_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, E], dtype)
    rows_ld = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, LD_L))
    rows_ld = gl.minimum(rows_ld, M - 1)
    cols_r = gl.arange(0, R, layout=gl.SliceLayout(0, LD_L))
    q = gl.load(QL + b64 * (M * R) + rows_ld[:, None] * R + cols_r[None, :])
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, R], q_sl, q)
    qpe_smem = q_smem
    if HAS_ROPE:
        cols_e = gl.arange(0, E, layout=gl.SliceLayout(0, LD_L))
        qpe = gl.load(BQ + b64 * (SEQ * E) + (rows_ld // HQ)[:, None] * E + cols_e[None, :])
        qpe_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, E], qpe_sl, qpe)
    return q_smem, qpe_smem


@_gluon_jit
def _gl_key_range(pid_h, split, b, kv_len, off, M: gl.constexpr, HQ: gl.constexpr,
                  KV_SEQ: gl.constexpr, CAUSAL: gl.constexpr, NUM_SPLITS: gl.constexpr,
                  BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, PAGE: gl.constexpr):
    """This program's slice of the key blocks any of its rows may see: its first key, its
    number of blocks (whole blocks; the last may be short) and its first TMA row (paged:
    its first key; _gl_block_row looks the rows up)."""
    last_q = gl.minimum(pid_h * BLOCK_H + (BLOCK_H - 1), M - 1) // HQ
    hi = kv_len
    if CAUSAL:
        hi = gl.minimum(hi, last_q + off + 1)
    hi = gl.maximum(hi, 0)
    n_blocks = gl.cdiv(hi, BLOCK_N)
    per_split = gl.cdiv(n_blocks, NUM_SPLITS)
    lo = gl.minimum(split * per_split * BLOCK_N, hi)
    hi_s = gl.minimum(lo + per_split * BLOCK_N, hi)
    n_iter = gl.cdiv(hi_s - lo, BLOCK_N)
    if PAGE > 0:
        first = lo
    else:
        first = b * KV_SEQ + lo
    return lo, n_iter, first


@_gluon_jit
def _mla_decode_sm90(QL, BQ, kv_desc, bk_desc, VL, BT, O, LSE,
                     qk_scale: gl.constexpr, SEQ: gl.constexpr, KV_SEQ: gl.constexpr,
                     HQ: gl.constexpr, R: gl.constexpr, E: gl.constexpr,
                     HAS_ROPE: gl.constexpr, CAUSAL: gl.constexpr, NUM_SPLITS: gl.constexpr,
                     BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                     PAGE: gl.constexpr, KV_ROWS: gl.constexpr, BOX: gl.constexpr):
    """Same contract as _mla_decode_kernel (8 warps, BLOCK_H == 64; paged: PAGE a multiple
    of BLOCK_N, or BOX == PAGE dividing it). The latent cache and the rope keys are read by
    TMA through host-made descriptors (tma_descriptors) over their 2-D views [KV_ROWS, R]
    and [KV_ROWS, E], boxes of BOX rows; rows past the end read as zeros."""
    M: gl.constexpr = SEQ * HQ
    dtype: gl.constexpr = kv_desc.block_type.element_ty
    kv_sl: gl.constexpr = kv_desc.layout
    bk_sl: gl.constexpr = bk_desc.layout
    BOXES: gl.constexpr = BLOCK_N // BOX
    RL: gl.constexpr = gl.BlockedLayout([1], [32], [8], [0])     # a block's page rows
    # logits: [64 heads, BLOCK_N keys], warpgroup g owns keys [g * BLOCK_N/2, (g+1) * BLOCK_N/2)
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                  instr_shape=[16, BLOCK_N // 2, 16])
    # out_lat: [64 heads, R], warpgroup g owns latent dims [g * R/2, (g+1) * R/2)
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                  instr_shape=[16, R // 2 if R <= 512 else 256, 16])
    LD_L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [8, 1], [1, 0])
    ROW_S: gl.constexpr = gl.SliceLayout(1, S_L)
    ROW_O: gl.constexpr = gl.SliceLayout(1, O_L)
    p_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)

    pid_h, split, b, b64, kv_len, off, bt_row = _gl_program(VL, BT, KV_SEQ, PAGE)

    # q_lat rows (and their b_q rows) -> shared memory, once
    q_smem, qpe_smem = _gl_stage_q(QL, BQ, b64, pid_h, SEQ, HQ, R, E, HAS_ROPE, BLOCK_H, LD_L)
    kv_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, R], kv_sl)
    bk_smem = kv_smem
    if HAS_ROPE:
        bk_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, E], bk_sl)
    p_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_sl)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    fence_async_shared()
    gl.barrier()

    # key range: as _mla_decode_kernel (the tail mask is applied to every block: cheap)
    lo, n_iter, tma_row = _gl_key_range(pid_h, split, b, kv_len, off, M, HQ, KV_SEQ, CAUSAL, NUM_SPLITS,
                                        BLOCK_H, BLOCK_N, PAGE)

    rows_s = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=ROW_S)
    q_pos = gl.minimum(rows_s, M - 1) // HQ + off
    cols_s = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))

    acc = warpgroup_mma_init(gl.zeros([BLOCK_H, R], gl.float32, O_L))
    l2 = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, S_L)       # per-column partial row sums
    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, ROW_S)
    s_zero = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, S_L)

    for i in gl.static_range(STAGES - 1):      # prologue: the first STAGES - 1 blocks
        _gl_issue(kv_desc, bk_desc, kv_smem, bk_smem, bars, i,
                  _gl_block_row(tma_row, i, bt_row, i < n_iter, BLOCK_N, PAGE, KV_ROWS, KV_SEQ, RL),
                  i < n_iter, HAS_ROPE, STAGES, BOXES)
    row_nxt = _gl_block_row(tma_row, STAGES - 1, bt_row, STAGES - 1 < n_iter, BLOCK_N, PAGE, KV_ROWS,
                            KV_SEQ, RL)
    for j in range(n_iter):
        slot = j % STAGES
        key_ok = _gl_key_ok(bt_row, lo + j * BLOCK_N, lo + j * BLOCK_N + cols_s, kv_len, PAGE, KV_ROWS,
                            BLOCK_N)
        mbarrier.wait(bars.index(slot), (j // STAGES) & 1)
        if PAGE > 0:
            n_valid = kv_len - (lo + j * BLOCK_N)
            if n_valid < BLOCK_N:
                _gl_zero_tail(kv_smem.index(slot), n_valid, BLOCK_N, R, LD_L)
                fence_async_shared()
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        gl.barrier()
        # every warpgroup is done with block j - 1: its slot takes block j + STAGES - 1
        nxt = j + (STAGES - 1)
        _gl_issue(kv_desc, bk_desc, kv_smem, bk_smem, bars, nxt, row_nxt, nxt < n_iter, HAS_ROPE, STAGES,
                  BOXES)
        row_nxt = _gl_block_row(tma_row, nxt + 1, bt_row, nxt + 1 < n_iter, BLOCK_N, PAGE, KV_ROWS, KV_SEQ,
                                RL)
        kv = kv_smem.index(slot)
        # the rope part first: the compiler puts a CTA barrier before the first wgmma that
        # reads a TMA-written tile and a wgmma wait between the two chained products;
        # this order keeps the barrier off the long (rank-wide) product
        if HAS_ROPE:
            s = warpgroup_mma(qpe_smem, bk_smem.index(slot).permute((1, 0)), s_zero, use_acc=False,
                              is_async=True)
            s = warpgroup_mma(q_smem, kv.permute((1, 0)), s, is_async=True)
        else:
            s = warpgroup_mma(q_smem, kv.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        p, alpha, m_new = _gl_online_softmax(s, m_i, key_ok, lo + j * BLOCK_N + cols_s, q_pos,
                                             qk_scale, CAUSAL)
        l2 = l2 * alpha[:, None] + p
        acc = acc * gl.convert_layout(alpha, ROW_O)[:, None]
        m_i = m_new
        p_smem.store(p.to(dtype))
        fence_async_shared()
        gl.barrier()
        acc = warpgroup_mma(p_smem, kv, acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))

    l_i = gl.sum(l2, axis=1)
    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    _gl_store_cols(acc, gl.convert_layout(l_safe, ROW_O), O, b64, split, pid_h, 0, M, R, NUM_SPLITS,
                   BLOCK_H, O_L)
    if NUM_SPLITS > 1:
        lse = gl.where(empty, float("-inf"), m_i + gl.log2(l_safe))
        gl.store(LSE + (b64 * NUM_SPLITS + split) * M + rows_s, lse, mask=rows_s < M)


# ----------------------------------------------------------------------------------------
# Hopper (sm90) kernel, warp-specialized: FlashMLA's division of labour, in Gluon
# ----------------------------------------------------------------------------------------
# The kernel above runs logits -> softmax -> p @ kv of a block one after the other on both
# warpgroups; a clock64 profile on an H100 (BENCHMARKS.md) found the tensor cores idle
# during the softmax and the logits product at ~56% of their rate (32-key tiles per
# warpgroup). Here the two warpgroups take different roles:
#   * the softmax warpgroup (the default partition) computes a block's whole 64 x 64
#     logits tile (64-key tiles: one long wgmma chain), its softmax (row max and sums stay
#     inside the warpgroup), hands p and the rescale factors to the other warpgroup
#     through shared memory, then accumulates its share of out_lat += p @ kv (the first
#     R/2 latent dims, or R/4 with softmax_share 4: less work on the busier warpgroup);
#   * the output warpgroup (a 4-warp worker partition) rescales and accumulates the rest
#     of out_lat and refills the kv stage both are done with.
# So the softmax warpgroup's logits and softmax of block j + 1 overlap the output
# warpgroup's product of block j. Shared memory is the kernel above's (q_lat, b_q, two kv
# + b_k stages, p) plus 512 bytes of row factors. It is compiled with Triton's Gluon
# pipeline and launched with its 8 warps (gluon_pipeline.py says why).
# Barriers: kv_ready[s] (TMA bytes landed), kv_free[s] (the softmax warpgroup is done with
# stage s), p_ready / p_free (the p tile and factors of a block: written / read), fin (the
# softmax warpgroup's final row sums are in shared memory).


@_gluon_jit
def _ws_softmax_partition(q_smem, qpe_smem, kv_smem, bk_smem, p_smem, alpha_smem, l_smem,
                          kv_ready, kv_free, p_ready, p_free, fin, O, LSE, b64, split, pid_h,
                          lo, kv_len, off, n_iter, bt_row,
                          qk_scale: gl.constexpr, HQ: gl.constexpr, M: gl.constexpr,
                          R: gl.constexpr, HAS_ROPE: gl.constexpr, CAUSAL: gl.constexpr,
                          NUM_SPLITS: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                          RA: gl.constexpr, S_L: gl.constexpr, O_L: gl.constexpr,
                          PAGE: gl.constexpr, LD_L: gl.constexpr, KV_ROWS: gl.constexpr):
    ROW_S: gl.constexpr = gl.SliceLayout(1, S_L)
    ROW_O: gl.constexpr = gl.SliceLayout(1, O_L)
    dtype: gl.constexpr = kv_smem.dtype
    rows_s = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=ROW_S)
    q_pos = gl.minimum(rows_s, M - 1) // HQ + off
    cols_s = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))
    acc = gl.zeros([BLOCK_H, RA], gl.float32, O_L)
    s_zero = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, S_L)
    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, ROW_S)
    l_i = gl.zeros([BLOCK_H], gl.float32, ROW_S)
    for j in range(n_iter):
        slot = j % 2
        key_ok = _gl_key_ok(bt_row, lo + j * BLOCK_N, lo + j * BLOCK_N + cols_s, kv_len, PAGE, KV_ROWS,
                            BLOCK_N)
        mbarrier.wait(kv_ready.index(slot), (j // 2) & 1)
        kv = kv_smem.index(slot)
        if PAGE > 0:
            # the output warpgroup reads this tile only after p_ready, below
            n_valid = kv_len - (lo + j * BLOCK_N)
            if n_valid < BLOCK_N:
                _gl_zero_tail(kv, n_valid, BLOCK_N, R, LD_L)
                fence_async_shared()
                gl.barrier()
        if HAS_ROPE:
            s = warpgroup_mma(qpe_smem, bk_smem.index(slot).permute((1, 0)), s_zero, use_acc=False)
            s = warpgroup_mma(q_smem, kv.permute((1, 0)), s)
        else:
            s = warpgroup_mma(q_smem, kv.permute((1, 0)), s_zero, use_acc=False)
        p, alpha, m_new = _gl_online_softmax(s, m_i, key_ok, lo + j * BLOCK_N + cols_s, q_pos,
                                             qk_scale, CAUSAL)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        m_i = m_new
        # hand p and alpha over once the output warpgroup has used the previous block's
        mbarrier.wait(p_free, (j & 1) ^ 1)
        p_smem.store(p.to(dtype))
        alpha_smem.store(alpha)
        fence_async_shared()
        gl.barrier()
        mbarrier.arrive(p_ready)
        acc = acc * gl.convert_layout(alpha, ROW_O)[:, None]
        acc = warpgroup_mma(p_smem, kv.slice(0, RA, dim=1), acc)
        gl.barrier()
        mbarrier.arrive(kv_free.index(slot))
    # final row sums for the output warpgroup, then this warpgroup's share of out_lat
    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    l_smem.store(l_safe)
    gl.barrier()
    mbarrier.arrive(fin)
    _gl_store_cols(acc, gl.convert_layout(l_safe, ROW_O), O, b64, split, pid_h, 0, M, R, NUM_SPLITS,
                   BLOCK_H, O_L)
    if NUM_SPLITS > 1:
        lse = gl.where(empty, float("-inf"), m_i + gl.log2(l_safe))
        gl.store(LSE + (b64 * NUM_SPLITS + split) * M + rows_s, lse, mask=rows_s < M)


@_gluon_jit
def _gl_store_cols(acc, l_safe, O, b64, split, pid_h, C0: gl.constexpr, M: gl.constexpr,
                   R: gl.constexpr, NUM_SPLITS: gl.constexpr, BLOCK_H: gl.constexpr,
                   L: gl.constexpr):
    """out_lat[rows, C0:C0 + width] = acc / l (f32 partials when the kv range is split)."""
    width: gl.constexpr = acc.shape[1]
    out = acc / l_safe[:, None]
    rows_o = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, L))
    cols_o = C0 + gl.arange(0, width, layout=gl.SliceLayout(0, L))
    row_ok = (rows_o < M)[:, None]
    if NUM_SPLITS == 1:
        gl.store(O + b64 * (M * R) + rows_o[:, None] * R + cols_o[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok)
    else:
        part = b64 * NUM_SPLITS + split
        gl.store(O + part * (M * R) + rows_o[:, None] * R + cols_o[None, :], out, mask=row_ok)


@_gluon_jit
def _ws_output_partition(kv_smem, bk_smem, p_smem, alpha_smem, l_smem, kv_ready, kv_free, p_ready,
                         p_free, fin, kv_desc, bk_desc, O, b64, split, pid_h, tma_row, n_iter, bt_row,
                         M: gl.constexpr, R: gl.constexpr, HAS_ROPE: gl.constexpr,
                         NUM_SPLITS: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                         RA: gl.constexpr, OB1_L: gl.constexpr, OB2_L: gl.constexpr,
                         PAGE: gl.constexpr, KV_ROWS: gl.constexpr, KV_SEQ: gl.constexpr,
                         BOXES: gl.constexpr, RL: gl.constexpr):
    """out_lat[:, RA:] in one or two power-of-two column blocks (shared-memory slices must
    start at a multiple of their width): [R/2, R) and, when the softmax warpgroup takes a
    quarter, [RA, R/2)."""
    RB1: gl.constexpr = R // 2
    RB2: gl.constexpr = R - RA - RB1
    acc1 = gl.zeros([BLOCK_H, RB1], gl.float32, OB1_L)
    acc2 = acc1
    if RB2 > 0:
        acc2 = gl.zeros([BLOCK_H, RB2], gl.float32, OB2_L)
    row_nxt = _gl_block_row(tma_row, 2, bt_row, 2 < n_iter, BLOCK_N, PAGE, KV_ROWS, KV_SEQ, RL)
    for j in range(n_iter):
        slot = j % 2
        mbarrier.wait(p_ready, j & 1)
        kv = kv_smem.index(slot)
        alpha = alpha_smem.load(gl.SliceLayout(1, OB1_L))
        acc1 = acc1 * alpha[:, None]
        acc1 = warpgroup_mma(p_smem, kv.slice(RB1, RB1, dim=1), acc1)
        if RB2 > 0:
            acc2 = acc2 * gl.convert_layout(alpha, gl.SliceLayout(1, OB2_L))[:, None]
            acc2 = warpgroup_mma(p_smem, kv.slice(RA, RB2, dim=1), acc2)
        gl.barrier()
        mbarrier.arrive(p_free)
        # both warpgroups are done with this stage: it takes block j + 2
        mbarrier.wait(kv_free.index(slot), (j // 2) & 1)
        _gl_issue(kv_desc, bk_desc, kv_smem, bk_smem, kv_ready, j + 2, row_nxt, j + 2 < n_iter, HAS_ROPE, 2,
                  BOXES)
        row_nxt = _gl_block_row(tma_row, j + 3, bt_row, j + 3 < n_iter, BLOCK_N, PAGE, KV_ROWS, KV_SEQ, RL)
    mbarrier.wait(fin, 0)
    l_safe = l_smem.load(gl.SliceLayout(1, OB1_L))
    _gl_store_cols(acc1, l_safe, O, b64, split, pid_h, RB1, M, R, NUM_SPLITS, BLOCK_H, OB1_L)
    if RB2 > 0:
        _gl_store_cols(acc2, gl.convert_layout(l_safe, gl.SliceLayout(1, OB2_L)), O, b64, split, pid_h,
                       RA, M, R, NUM_SPLITS, BLOCK_H, OB2_L)


@_gluon_jit
def _mla_decode_sm90_ws(QL, BQ, kv_desc, bk_desc, VL, BT, O, LSE,
                        qk_scale: gl.constexpr, SEQ: gl.constexpr, KV_SEQ: gl.constexpr,
                        HQ: gl.constexpr, R: gl.constexpr, E: gl.constexpr,
                        HAS_ROPE: gl.constexpr, CAUSAL: gl.constexpr, NUM_SPLITS: gl.constexpr,
                        BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                        PAGE: gl.constexpr, KV_ROWS: gl.constexpr, BOX: gl.constexpr,
                        RA: gl.constexpr, RB2_N: gl.constexpr):
    """Same contract as _mla_decode_sm90 (compiled with num_warps=4, the softmax warpgroup;
    the output warpgroup is a 4-warp worker partition, and the launch runs all 8 warps:
    gluon_pipeline.py; BLOCK_H == BLOCK_N == 64, 2 stages). The softmax warpgroup
    accumulates out_lat[:, :RA], the output warpgroup the rest."""
    M: gl.constexpr = SEQ * HQ
    dtype: gl.constexpr = kv_desc.block_type.element_ty
    kv_sl: gl.constexpr = kv_desc.layout
    bk_sl: gl.constexpr = bk_desc.layout
    BOXES: gl.constexpr = BLOCK_N // BOX
    RL: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])     # a block's page rows
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    OA_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                   instr_shape=[16, RA, 16])
    OB1_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, R // 2, 16])
    OB2_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, RB2_N, 16])
    LD_L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    VEC_SL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    p_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)

    pid_h, split, b, b64, kv_len, off, bt_row = _gl_program(VL, BT, KV_SEQ, PAGE)

    q_smem, qpe_smem = _gl_stage_q(QL, BQ, b64, pid_h, SEQ, HQ, R, E, HAS_ROPE, BLOCK_H, LD_L)
    kv_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, R], kv_sl)
    bk_smem = kv_smem
    if HAS_ROPE:
        bk_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, E], bk_sl)
    p_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_sl)
    alpha_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_H], VEC_SL)
    l_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_H], VEC_SL)
    kv_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    kv_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    p_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    fin = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(kv_ready.index(i), count=1)
        mbarrier.init(kv_free.index(i), count=1)
    mbarrier.init(p_ready, count=1)
    mbarrier.init(p_free, count=1)
    mbarrier.init(fin, count=1)
    fence_async_shared()
    gl.barrier()

    lo, n_iter, tma_row = _gl_key_range(pid_h, split, b, kv_len, off, M, HQ, KV_SEQ, CAUSAL, NUM_SPLITS,
                                        BLOCK_H, BLOCK_N, PAGE)
    for i in gl.static_range(2):
        _gl_issue(kv_desc, bk_desc, kv_smem, bk_smem, kv_ready, i,
                  _gl_block_row(tma_row, i, bt_row, i < n_iter, BLOCK_N, PAGE, KV_ROWS, KV_SEQ, RL),
                  i < n_iter, HAS_ROPE, 2, BOXES)

    gl.warp_specialize([
        (_ws_softmax_partition, (q_smem, qpe_smem, kv_smem, bk_smem, p_smem, alpha_smem, l_smem,
                                 kv_ready, kv_free, p_ready, p_free, fin, O, LSE, b64, split, pid_h,
                                 lo, kv_len, off, n_iter, bt_row, qk_scale, HQ, M, R, HAS_ROPE, CAUSAL,
                                 NUM_SPLITS, BLOCK_H, BLOCK_N, RA, S_L, OA_L, PAGE, LD_L, KV_ROWS)),
        (_ws_output_partition, (kv_smem, bk_smem, p_smem, alpha_smem, l_smem, kv_ready, kv_free,
                                p_ready, p_free, fin, kv_desc, bk_desc, O, b64, split, pid_h, tma_row,
                                n_iter, bt_row, M, R, HAS_ROPE, NUM_SPLITS, BLOCK_H, BLOCK_N, RA, OB1_L,
                                OB2_L, PAGE, KV_ROWS, KV_SEQ, BOXES, RL)),
    ], [4])


# ----------------------------------------------------------------------------------------
# JAX side
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
    cc: int
    kernel: str           # "wgmma_ws" / "wgmma": the Gluon sm90 kernels; "dot": the tl.dot kernel
    block_h: int
    block_n: int
    num_splits: int
    num_warps: int
    num_stages: int
    softmax_share: int = 2   # wgmma_ws: the softmax warpgroup accumulates 1/share of out_lat




def _wgmma_ok(cc, itemsize, r, e) -> bool:
    """Shapes the Gluon sm90 kernels take: 2-byte inputs, a power-of-two rank in [32, 512]
    (out_lat columns split in two warpgroup halves of at most 256), rope_dim 0 or a power
    of two in [8, 256] (a TMA row of at least 16 bytes)."""
    pow2 = lambda n: n > 0 and n & (n - 1) == 0
    return (cc // 10 == 9 and gluon is not None and itemsize == 2 and pow2(r) and 32 <= r <= 512
            and (e == 0 or (pow2(e) and 8 <= e <= 256)))


def make_static(cfg, dims, itemsize, page_size=0) -> _Static:
    """The kernel and tiles a config asks for, within what the shape allows (page_size > 0,
    paged decode: configs.page_kernel)."""
    cc = int(cfg["compute_capability"])
    r, e = dims["kv_lora_rank"], dims["rope_dim"]
    kernel = cfg.get("kernel") or "dot"
    if kernel not in ("wgmma", "wgmma_ws", "dot"):
        raise ValueError("mla_attention (triton): config kernel must be 'wgmma', 'wgmma_ws' or 'dot', "
                         f"got {kernel!r}")
    if kernel in ("wgmma", "wgmma_ws") and not _wgmma_ok(cc, itemsize, r, e):
        kernel = "dot"     # e.g. float32 inputs, or a rank the Gluon kernels do not tile
    if kernel == "wgmma_ws" and r < WS_MIN_RANK:
        kernel = "wgmma"
    kernel = page_kernel(kernel, page_size)
    n_tokens = dims["kv_seq"]
    share = 2
    if kernel == "wgmma_ws":
        bh, bn, stages, warps = 64, 64, 2, 4
        share = 4 if int(cfg.get("softmax_share", 2)) >= 4 and r >= QUARTER_MIN_RANK else 2
    elif kernel == "wgmma":
        # 64 rows (one wgmma M per warpgroup, 8 warps); 64 keys x 2 TMA stages, or 32 x 3-4
        bh, warps = 64, 8
        bn = 32 if int(cfg.get("block_n", 64)) <= 32 else 64
        stages = max(2, min(int(cfg.get("num_stages", 2)), 2 if bn == 64 else 4))
    else:
        m = dims["seq"] * dims["q_heads"]
        bh = max(16, min(next_pow2(int(cfg["block_h"])), next_pow2(m)))
        bn = max(16, min(next_pow2(int(cfg["block_n"])), next_pow2(n_tokens)))
        bh, bn, stages = fit_triton_tiles(bh, bn, int(cfg["num_stages"]), max(16, next_pow2(r)),
                                          max(16, next_pow2(e)) if e else 0, itemsize, cc)
        warps = int(cfg["num_warps"])
        if itemsize == 4:
            # float32 runs exact-f32 dots ("ieee": FMA, not tensor cores) on small tiles:
            # tf32x3 keeps split copies of the resident q_lat in registers and spills
            # heavily. Decode is served in bf16/fp16; this path is for exactness.
            bh, bn, stages, warps = 16, 16, 1, 4
    n_blocks = -(-n_tokens // bn)
    splits = max(1, min(int(cfg.get("num_splits", 1)), n_blocks))
    return _Static(cc=cc, kernel=kernel, block_h=bh, block_n=bn, num_splits=splits,
                   num_warps=warps, num_stages=stages, softmax_share=share)


def _cdiv(a, b):
    return -(-a // b)


def tma_descriptors(kv, b_k, box: int, block_n: int):
    """Host-made TMA descriptors for the Gluon kernels: the latent cache kv [rows, R] and
    the rope keys b_k [rows, E] (None: kv's stands in, unread), boxes of `box` rows, in the
    shared layouts of the kernels' [block_n, width] stages. jaxlib encodes them at launch and
    passes them by value. Descriptors made on the device instead (tma.make_tensor_descriptor)
    need a global scratch buffer, which jaxlib allocates and frees on the stream at every
    launch: inside an XLA command buffer (CUDA graph) those allocation nodes make the
    custom call's child graph fail (CUDA_ERROR_NOT_SUPPORTED; README, Serving)."""
    import jax.numpy as jnp
    import jax_triton as jt
    elem = gl.bfloat16 if kv.dtype == jnp.bfloat16 else gl.float16

    def desc(x):
        width = x.shape[1]
        layout = gl.NVMMASharedLayout.get_default_for([block_n, width], elem)
        return jt.TensorDescriptor.from_array(x, block_shape=[box, width], layout=layout)
    kv_desc = desc(kv)
    return kv_desc, (desc(b_k) if b_k is not None else kv_desc)


def latent_attention(st: _Static, q_lat, b_q, kv, b_k, valid_lens, *, scale, causal, out_dtype,
                     block_tables=None):
    """The Triton part: q_lat [B, S, HQ, R] against the latent cache kv [B, T, R] (and the
    rope parts b_q [B, S, E], b_k [B, T, E], or None), valid_lens (q_len, kv_len).
    Paged (block_tables int32 [B, max_blocks] given; S == 1): kv [pages, page_size, R] and
    b_k [pages, page_size, E] are the caches, valid_lens each sequence's context length,
    T = max_blocks * page_size. Returns out_lat [B, S, HQ, R]."""
    import jax
    import jax.numpy as jnp
    import jax_triton as jt
    b, s, hq, r = q_lat.shape
    m = s * hq
    has_rope = b_q is not None
    e = b_q.shape[-1] if has_rope else 0
    dt = q_lat.dtype
    if block_tables is None:
        page, t, kv_rows = 0, kv.shape[1], b * kv.shape[1]
        vl = jnp.asarray(valid_lens, jnp.int32).reshape(2)
        bt = jnp.zeros((1,), jnp.int32)      # unused
    else:
        page = kv.shape[1]
        t, kv_rows = block_tables.shape[1] * page, kv.shape[0] * page
        vl = jnp.asarray(valid_lens, jnp.int32).reshape(b)
        bt = block_tables.astype(jnp.int32)
    kv = kv.astype(dt).reshape(kv_rows, r)
    if has_rope:
        bq_arg, bk_arg = b_q.astype(dt), b_k.astype(dt).reshape(kv_rows, e)
    else:   # absent rope parts travel as one-element arrays the kernel never reads
        bq_arg = bk_arg = jnp.zeros((1,), dt)
    grid = (_cdiv(m, st.block_h), st.num_splits, b)
    ql = q_lat.reshape(b, m, r)
    if st.num_splits == 1:
        out_type = (jax.ShapeDtypeStruct((b, m, r), out_dtype), jax.ShapeDtypeStruct((1,), jnp.float32))
    else:
        out_type = (jax.ShapeDtypeStruct((b, st.num_splits, m, r), jnp.float32),
                    jax.ShapeDtypeStruct((b, st.num_splits, m), jnp.float32))
    common = dict(qk_scale=float(scale) * LOG2E, SEQ=s, KV_SEQ=t, HQ=hq, R=r, HAS_ROPE=has_rope,
                  CAUSAL=bool(causal), NUM_SPLITS=st.num_splits, BLOCK_H=st.block_h,
                  BLOCK_N=st.block_n, STAGES=st.num_stages, PAGE=page, KV_ROWS=kv_rows)
    name = ("mla_decode" if st.num_splits == 1 else "mla_decode_split") + ("_paged" if page else "")
    box = page if 0 < page < st.block_n else st.block_n     # Gluon TMA box rows: a block, or a page
    if st.kernel in ("wgmma", "wgmma_ws"):
        install_compile_hook()       # completes the descriptors' metadata
        if st.kernel == "wgmma_ws":  # compiled as Gluon, launched with its partitions' warps
            route_through_gluon_pipeline(_mla_decode_sm90_ws)
        kv_desc, bk_desc = tma_descriptors(kv, bk_arg if has_rope else None, box, st.block_n)
    if st.kernel == "wgmma":
        res = jt.triton_call(
            ql, bq_arg, kv_desc, bk_desc, vl, bt, kernel=_mla_decode_sm90, out_type=out_type, grid=grid,
            num_warps=8, num_stages=1, compute_capability=st.cc, name=name + "_sm90",
            E=max(e, 16), BOX=box, **common)
    elif st.kernel == "wgmma_ws":
        res = jt.triton_call(
            ql, bq_arg, kv_desc, bk_desc, vl, bt, kernel=_mla_decode_sm90_ws, out_type=out_type, grid=grid,
            num_warps=4, num_stages=1, compute_capability=st.cc, name=name + "_sm90_ws",
            E=max(e, 16), BOX=box, RA=r // st.softmax_share, RB2_N=max(r // 4, 8),
            **common)
    else:
        rp = max(16, next_pow2(r))
        ep = max(16, next_pow2(e)) if has_rope else 16
        res = jt.triton_call(
            ql, bq_arg, kv, bk_arg, vl, bt, kernel=_mla_decode_kernel, out_type=out_type, grid=grid,
            num_warps=st.num_warps, num_stages=st.num_stages, compute_capability=st.cc, name=name,
            RP=rp, E=max(e, 1), EP=ep, DOT_PREC="ieee" if dt == jnp.float32 else "tf32", **common)
    if st.num_splits == 1:
        return res[0].reshape(b, s, hq, r)
    part, lse = res
    sp, block_m, block_c = combine_tiles(st.num_splits, m, r)
    out = jt.triton_call(
        part, lse, kernel=_combine_kernel,
        out_type=jax.ShapeDtypeStruct((b, m, r), out_dtype),
        grid=(_cdiv(m, block_m), _cdiv(r, block_c), b), num_warps=4, num_stages=1,
        compute_capability=st.cc, name="mla_decode_combine",
        M=m, R=r, NUM_SPLITS=st.num_splits, SP=sp, BLOCK_M=block_m, BLOCK_C=block_c)
    return out.reshape(b, s, hq, r)


def latent_dtype(dtype):
    """out_lat's dtype: f32 for f32 callers; else the caller's (out_lat is an average of
    cache rows, so its rounding is that of one cache entry; halves its write + read)."""
    import jax.numpy as jnp
    return jnp.float32 if dtype == jnp.float32 else dtype

"""`flash_attention` forward for Hopper (sm90) in Gluon, FlashAttention-3's schedule: the
plain-scores path (no bias, soft cap, segments or window; causal or not; traced valid
lengths), head_dim 64, 128 or 256, 16-bit inputs. triton_gpu.py routes there when the config
says `gluon`; every other case runs the Triton forward.

Why not Triton: the Triton forward's compiled code waits for each Q K^T as soon as it is
issued and runs the softmax between the products, and no config of it (its own warp
specialization included) got past 0.81-0.87x cuDNN at S=8192 on an H100 (BENCHMARKS.md).
Here each program of 128 query rows has three partitions:

  * a producer (the default partition, 4 warps, few registers) streams K and V blocks by
    TMA into two rings of STAGES slots each (host-made descriptors:
    triton_gpu._kv_descriptors);
  * two consumer warpgroups own 64 query rows each. A consumer's step on block j, with
    P[j] from its previous softmax:
        wait its turn; S = Q K[j+1]^T and O = O * alpha + P[j] V[j], both issued async;
        hand the turn over; wait for S (K[j+1]'s slot is free again); softmax of S ->
        P[j+1]; wait for O (V[j]'s slot is free again).
    The turn barriers make the two warpgroups issue their products alternately ("ping-
    pong"), so one warpgroup's softmax runs while the other's products keep the tensor
    cores busy.

Blocks that need a mask (causal diagonal, kv_len tail) come last, one product at a time,
still in turn. In the compiled code ptxas moves the wait for O up to the wait for S and
interleaves the softmax's bf16 conversion, which writes the registers the in-flight P V
reads, with its exp2: within one warpgroup the softmax does not overlap its own P V; the
overlap is across the two warpgroups.

Why two rings: block j's K is done with once S[j] is computed, a step before its V (P[j]
V[j] runs with S[j + 1]). With one slot for both, a slot is held a step longer than its K
needs and the ring needs 3 slots; separate K and V rings free each tile as soon as it is
used, so 2 slots of each suffice, which is what lets head_dim 256 (Q 64 KB, a 64-key K or V
tile 32 KB) fit the 227 KB a block may use.

Barriers: k_ready[s] / v_ready[s] (a block's K / V landed in slot s), k_free[s] / v_free[s]
(both consumers are done with it: count 2), turn[w] (warpgroup w may issue), tail (the
producer zeroed the rows of the last V tile past kv_len: a zero weight times a NaN there
would still be NaN).

Compiled with Triton's Gluon pipeline and launched with all 12 warps (triton_gpu.py routes
it there: _shared/gluon_pipeline.py). Only importable where triton with Gluon is installed;
touches no device at import."""
from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    _gluon_jit = gluon.jit
except ImportError:  # pragma: no cover - older triton, or none
    gluon = gl = None

    def _gluon_jit(fn):
        return fn

from ejaot_kernels._shared.gluon_support import zero_tail as _zero_tail  # noqa: E402

CONSUMER_REGS = gl.constexpr(232) if gl is not None else 232   # per thread, each consumer warpgroup
BLOCK_M = 128        # query rows per program: two consumer warpgroups of 64
_BLOCK_M = gl.constexpr(BLOCK_M) if gl is not None else BLOCK_M   # the same, inside kernels


@_gluon_jit
def _softmax(s, m_i, l_i, kv_len, q_pos, qk_scale: gl.constexpr, MASKED: gl.constexpr,
             CAUSAL: gl.constexpr, BLOCK_N: gl.constexpr, S_L: gl.constexpr, j):
    """One online-softmax step (base 2) on block j's scores: P (float32, in the scores'
    registers), the factor alpha for O, the new row sums and maxima. MASKED: keys past
    kv_len (and, causal, past each row's position) get no weight."""
    if MASKED:
        cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))
        keep = (cols < kv_len)[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= q_pos[:, None])
        s = gl.where(keep, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)     # a row that has seen no key yet
    p = gl.exp2(s * qk_scale - m_use[:, None])
    alpha = gl.exp2(m_i - m_use)
    return p, alpha, l_i * alpha + gl.sum(p, axis=1), m_new


@_gluon_jit
def _pp_issue(desc, smem, ready, free, j, row0, col, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """TMA of block j's tile (K or V) into slot j % STAGES of its ring, once both consumers
    freed the slot's previous block."""
    slot = j % STAGES
    if j >= STAGES:
        mbarrier.wait(free.index(slot), ((j // STAGES) - 1) & 1)
    bar = ready.index(slot)
    mbarrier.expect(bar, desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row0 + j * BLOCK_N, col], bar, smem.index(slot))


@_gluon_jit
def _pp_producer(desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, k_free, v_free, tail, row0, col,
                 n_iter, kv_len, BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
    """Every block in order, K then V; then the rows of the last V tile past kv_len are
    zeroed (only the last block can reach past it)."""
    for j in range(n_iter):
        _pp_issue(desc_k, k_smem, k_ready, k_free, j, row0, col, BLOCK_N, STAGES)
        _pp_issue(desc_v, v_smem, v_ready, v_free, j, row0, col, BLOCK_N, STAGES)
    n_valid = kv_len - (n_iter - 1) * BLOCK_N
    if (n_iter > 0) & (n_valid < BLOCK_N):
        last = n_iter - 1
        mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
        _zero_tail(v_smem.index(last % STAGES), n_valid, BLOCK_N, D,
                   gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0]))
        fence_async_shared()
        mbarrier.arrive(tail)


@_gluon_jit
def _pp_turn(turn, t, W: gl.constexpr):
    """Waits until warpgroup W may issue its t-th bundle of products (W = 0 goes first)."""
    mbarrier.wait(turn.index(W), (t & 1) ^ (1 - W))


@_gluon_jit
def _pp_consumer(q_smem, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, tail, Out, Lse, b64,
                 h, bh, pid_m, off,
                 kv_len, n_iter, n_full, qk_scale: gl.constexpr, SEQ: gl.constexpr,
                 HQ: gl.constexpr, D: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_N: gl.constexpr,
                 STAGES: gl.constexpr, W: gl.constexpr):
    """Consumer warpgroup W: query rows [W * 64, W * 64 + 64) of the program's BLOCK_M."""
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, D, 16])
    ROW_S: gl.constexpr = gl.SliceLayout(1, S_L)
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    dtype: gl.constexpr = k_smem.dtype
    OTHER: gl.constexpr = 1 - W
    first = pid_m * _BLOCK_M + W * 64
    q_pos = first + gl.arange(0, 64, layout=ROW_S) + off
    s_zero = gl.zeros([64, BLOCK_N], gl.float32, S_L)
    acc = gl.zeros([64, D], gl.float32, O_L)
    m_i = gl.full([64], float("-inf"), gl.float32, ROW_S)
    l_i = gl.zeros([64], gl.float32, ROW_S)
    t = 0
    if n_full > 0:
        mbarrier.wait(k_ready.index(0), 0)
        _pp_turn(turn, t, W)
        s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.arrive(turn.index(OTHER))
        t += 1
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        mbarrier.arrive(k_free.index(0))
        p, alpha, l_i, m_i = _softmax(s, m_i, l_i, kv_len, q_pos, qk_scale, False, False, BLOCK_N, S_L, 0)
        p_op = gl.convert_layout(p.to(dtype), P_L)
        for j in range(n_full - 1):
            nxt = j + 1
            mbarrier.wait(k_ready.index(nxt % STAGES), (nxt // STAGES) & 1)
            mbarrier.wait(v_ready.index(j % STAGES), (j // STAGES) & 1)
            _pp_turn(turn, t, W)
            s = warpgroup_mma(q_smem, k_smem.index(nxt % STAGES).permute((1, 0)), s_zero, use_acc=False,
                              is_async=True)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
            acc = warpgroup_mma(p_op, v_smem.index(j % STAGES), acc, is_async=True)
            mbarrier.arrive(turn.index(OTHER))
            t += 1
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
            mbarrier.arrive(k_free.index(nxt % STAGES))
            p, alpha, l_i, m_i = _softmax(s, m_i, l_i, kv_len, q_pos, qk_scale, False, False, BLOCK_N,
                                          S_L, 0)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(v_free.index(j % STAGES))
            p_op = gl.convert_layout(p.to(dtype), P_L)
        last = n_full - 1
        mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
        _pp_turn(turn, t, W)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        acc = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
        mbarrier.arrive(turn.index(OTHER))
        t += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(v_free.index(last % STAGES))
    for j in range(n_full, n_iter):
        slot = j % STAGES
        mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
        _pp_turn(turn, t, W)
        s = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.arrive(turn.index(OTHER))
        t += 1
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        mbarrier.arrive(k_free.index(slot))
        p, alpha, l_i, m_i = _softmax(s, m_i, l_i, kv_len, q_pos, qk_scale, True, CAUSAL, BLOCK_N, S_L, j)
        mbarrier.wait(v_ready.index(slot), (j // STAGES) & 1)
        if (j == n_iter - 1) & (kv_len - j * BLOCK_N < BLOCK_N):
            mbarrier.wait(tail, 0)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), P_L), v_smem.index(slot), acc)
        mbarrier.arrive(v_free.index(slot))

    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    out = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, O_L))[:, None]
    rows_o = first + gl.arange(0, 64, layout=gl.SliceLayout(1, O_L))
    cols_o = gl.arange(0, D, layout=gl.SliceLayout(0, O_L))
    o_off = b64 * (SEQ * HQ * D) + h * D + rows_o[:, None] * (HQ * D) + cols_o[None, :]
    gl.store(Out + o_off, out.to(Out.dtype.element_ty), mask=(rows_o < SEQ)[:, None])
    rows_s = first + gl.arange(0, 64, layout=ROW_S)
    lse = gl.where(empty, float("inf"), m_i + gl.log2(l_safe))
    gl.store(Lse + bh.to(gl.int64) * SEQ + rows_s, lse, mask=rows_s < SEQ)


@_gluon_jit
def _fwd_sm90(Q, desc_k, desc_v, VL, Out, Lse,
              qk_scale: gl.constexpr, SEQ: gl.constexpr, KV_SEQ: gl.constexpr, HQ: gl.constexpr,
              HK: gl.constexpr, D: gl.constexpr, CAUSAL: gl.constexpr,
              BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """triton_gpu._fwd_kernel's contract on its FAST path: Out [B, S, HQ, D]; Lse [B, HQ, S],
    base 2, +inf for a row that sees no key. BLOCK_M query rows per program; compiled with
    num_warps=4 (the producer), 12 warps in all."""
    gl.static_assert(STAGES >= 2)
    NUM_M: gl.constexpr = (SEQ + _BLOCK_M - 1) // _BLOCK_M
    Q_ROW: gl.constexpr = HQ * D
    dtype: gl.constexpr = desc_k.block_type.element_ty
    LD_L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])

    pid_m = gl.program_id(0)
    if CAUSAL:
        pid_m = (NUM_M - 1) - pid_m          # the longest rows first
    bh = gl.program_id(1)
    b = bh // HQ
    h = bh % HQ
    kh = h // (HQ // HK)
    b64 = b.to(gl.int64)
    q_len = gl.load(VL)
    kv_len = gl.minimum(gl.load(VL + 1), KV_SEQ)
    off = kv_len - q_len
    m_first = pid_m * _BLOCK_M + off
    hi = kv_len
    full_hi = kv_len
    if CAUSAL:
        hi = gl.minimum(hi, m_first + _BLOCK_M)
        full_hi = gl.minimum(full_hi, m_first + 1)
    hi = gl.maximum(hi, 0)
    n_iter = gl.cdiv(hi, BLOCK_N)
    n_full = gl.minimum(gl.maximum(full_hi, 0) // BLOCK_N, n_iter)

    q_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, D], dtype)
    cols_ld = gl.arange(0, D, layout=gl.SliceLayout(0, LD_L))
    rows0 = pid_m * _BLOCK_M + gl.arange(0, 64, layout=gl.SliceLayout(1, LD_L))
    q_base = Q + b64 * (SEQ * Q_ROW) + h * D + cols_ld[None, :]
    q0 = gl.load(q_base + rows0[:, None] * Q_ROW, mask=(rows0 < SEQ)[:, None], other=0.0)
    q0_smem = gl.allocate_shared_memory(dtype, [64, D], q_sl, q0)
    rows1 = rows0 + 64
    q1 = gl.load(q_base + rows1[:, None] * Q_ROW, mask=(rows1 < SEQ)[:, None], other=0.0)
    q1_smem = gl.allocate_shared_memory(dtype, [64, D], q_sl, q1)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], desc_v.layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    tail = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=2)
        mbarrier.init(v_free.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    mbarrier.init(tail, count=1)
    fence_async_shared()
    gl.barrier()

    gl.warp_specialize([
        (_pp_producer, (desc_k, desc_v, k_smem, v_smem, k_ready, v_ready, k_free, v_free, tail, b * KV_SEQ,
                        kh * D, n_iter, kv_len, BLOCK_N, D, STAGES)),
        (_pp_consumer, (q0_smem, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, tail, Out, Lse, b64,
                        h, bh, pid_m, off, kv_len, n_iter, n_full, qk_scale, SEQ, HQ, D, CAUSAL, BLOCK_N,
                        STAGES, 0)),
        (_pp_consumer, (q1_smem, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, tail, Out, Lse, b64,
                        h, bh, pid_m, off, kv_len, n_iter, n_full, qk_scale, SEQ, HQ, D, CAUSAL, BLOCK_N,
                        STAGES, 1)),
    ], [4, 4], [CONSUMER_REGS, CONSUMER_REGS])

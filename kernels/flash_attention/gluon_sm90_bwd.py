"""`flash_attention` backward for Hopper (sm90) in Gluon: dK, dV and dQ in one kernel, the
plain-scores path (no bias, soft cap, segments or window; causal or not; traced valid
lengths), head_dim 64 or 128, 16-bit inputs, a query length that is a multiple of 64.
triton_gpu.py routes there when the config says `gluon_bwd`; every other case runs the
Triton backward.

Why: the Triton backward's dQ kernel recomputes the scores and dP a second time (seven
products per tile instead of five), and a Triton dK/dV kernel that also reduces dQ
(`fused_dq`) ran at its register limit, its tensor pipe busy 38% of its cycles
(BENCHMARKS.md). Here each program owns BLOCK_N = 128 keys of one kv head and walks
the query blocks (64 rows) of every query head of its group, with three partitions:

  * a producer (the default partition, 4 warps) loads the K and V block once, then streams
    each step's Q and dO tiles by TMA into a ring of STAGES slots, and copies the step's
    lse and delta into shared memory beside them (consumers read them where used, which
    keeps their registers for dK and dV);
  * two consumer warpgroups own 64 keys each and per step compute
        S^T = K_w Q^T and dP^T = V_w dO^T (issued together, async),
        P^T = exp2(S^T * qk_scale - lse), then dV_w += P^T dO (async, while dS is computed),
        dS^T = P^T * (dP^T - delta), then dK_w += dS^T Q (async),
    write dS (queries x their 64 keys) into one of two shared tiles, and then compute the
    PREVIOUS step's dQ columns (half each, dS [64 x 128] K[:, half]) from the other tile,
    which both halves reached a step ago. A warpgroup thus waits for its partner's dS one
    step late rather than at every step, so the two drift apart and their products and
    exponentials interleave on the SM (the lock-step order, dQ of the same step, was
    measurably slower on an H200 at S >= 8192: BENCHMARKS.md). Each dQ is staged in one of
    two shared buffers and added into a float32 buffer by a TMA reduction that runs on while
    the next step computes (per-element float32 atomics were slower when this kernel was
    measured on an H200; the figures are in the commit that added it). XLA zeroes that buffer
    before and scales and casts it after. The sums arrive in any order: dQ is not
    bit-for-bit repeatable.

Masks are computed only on the steps the causal diagonal or kv_len crosses. The grid puts
the kv heads first, so under a causal mask every head's first key blocks, which walk the
most query blocks, are launched in the first wave.

dK and dV stay in registers across the whole walk and are written once; GQA sums a kv head's
query heads in the same registers, so dK/dV are deterministic.

Barriers: kv_ready (the K and V block landed), kv_done (and its rows past kv_len zeroed),
q_ready[s] (a step's Q and dO landed in slot s, and its lse and delta written: count 2),
q_free[s] (both consumers done with slot s: count 2), ds_ready[j] / ds_free[j] (both
halves of dS tile j written / both consumers' dQ products done reading it: count 2).

Compiled with Triton's Gluon pipeline and launched with all 12 warps (_shared/gluon_pipeline.py).
Only importable where triton with Gluon is installed; touches no device at import."""
from __future__ import annotations

from .gluon_sm90 import _gluon_jit, gl   # Gluon where this triton has it (guarded there)

if gl is not None:
    from triton._C.libtriton import ir as _ir
    from triton.language.core import builtin as _builtin

    from .gluon_sm90 import fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
else:  # pragma: no cover - older triton, or none
    def _builtin(fn):
        return fn

from ejaot_kernels._shared.gluon_support import zero_tail as _zero_tail  # noqa: E402

CONSUMER_REGS = gl.constexpr(240) if gl is not None else 240   # per thread, each consumer warpgroup
BLOCK_N = 128        # keys per program: two consumer warpgroups of 64
BLOCK_M = 64         # query rows per step
_BLOCK_N = gl.constexpr(BLOCK_N) if gl is not None else BLOCK_N
_BLOCK_M = gl.constexpr(BLOCK_M) if gl is not None else BLOCK_M


@_builtin
def _tma_reduce_add(desc, offsets, src, _semantic=None):
    """The shared-memory tile `src` added into the tile of `desc` at `offsets` by a TMA
    reduction (cp.reduce.async.bulk.tensor), committed as a bulk group (tma.store_wait
    waits for it). Gluon's Hopper TMA module has no reduction of its own."""
    offsets = _semantic._convert_to_ir_values(offsets, require_i64=False)
    _semantic.builder.create_async_tma_reduce(_ir.DESCRIPTOR_REDUCE_KIND.ADD, desc.handle, offsets, src.handle)


@_gluon_jit
def _dq_step(ds_smem, ds_ready, ds_free, k_half, q_zero, dq_smem, desc_dq, row, col, t, W: gl.constexpr):
    """Step t - 1's dQ columns of warpgroup W, dS [64 x 128] K[:, half], once both halves of
    that dS are in its buffer; staged in one of W's two float32 buffers and added into
    desc_dq's tile at (row, col) by a TMA reduction that runs on while the next step computes."""
    pb = (t - 1) % 2
    mbarrier.wait(ds_ready.index(pb), ((t - 1) // 2) & 1)
    dq = warpgroup_mma(ds_smem.index(pb), k_half, q_zero, use_acc=False, is_async=True)
    dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
    mbarrier.arrive(ds_free.index(pb))
    tma.store_wait(1)          # the reduction that read this buffer two steps ago
    gl.barrier()
    buf = dq_smem.index(W * 2 + t % 2)
    buf.store(dq)
    fence_async_shared()
    gl.barrier()
    _tma_reduce_add(desc_dq, [row, col], buf)


@_gluon_jit
def _producer(desc_q, desc_do, desc_k, desc_v, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
              Lse, Delta, kv_ready, kv_done, q_ready, q_free, b, kh, n_first, kv_len, m_lo, n_steps,
              SEQ: gl.constexpr, KV_SEQ: gl.constexpr, HQ: gl.constexpr, HK: gl.constexpr,
              D: gl.constexpr, STAGES: gl.constexpr):
    mbarrier.expect(kv_ready, 2 * desc_k.block_type.nbytes)
    tma.async_copy_global_to_shared(desc_k, [b * KV_SEQ + n_first, kh * D], kv_ready, k_smem)
    tma.async_copy_global_to_shared(desc_v, [b * KV_SEQ + n_first, kh * D], kv_ready, v_smem)
    # K and V rows past kv_len may hold anything (0 * NaN is NaN in dS K and P^T dO)
    mbarrier.wait(kv_ready, 0)
    n_valid = kv_len - n_first
    if n_valid < _BLOCK_N:
        LD_L: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        _zero_tail(k_smem, n_valid, _BLOCK_N, D, LD_L)
        _zero_tail(v_smem, n_valid, _BLOCK_N, D, LD_L)
        fence_async_shared()
    mbarrier.arrive(kv_done)
    GROUP: gl.constexpr = HQ // HK
    VEC_L: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    t = 0
    for g in range(GROUP):
        h = kh * GROUP + g
        for i in range(n_steps):
            slot = t % STAGES
            if t >= STAGES:
                mbarrier.wait(q_free.index(slot), ((t // STAGES) - 1) & 1)
            bar = q_ready.index(slot)
            mbarrier.expect(bar, 2 * desc_q.block_type.nbytes)
            row = b * SEQ + m_lo + i * _BLOCK_M
            tma.async_copy_global_to_shared(desc_q, [row, h * D], bar, q_smem.index(slot))
            tma.async_copy_global_to_shared(desc_do, [row, h * D], bar, do_smem.index(slot))
            # the step's lse and delta, beside its tiles (the barrier's second arrival)
            rows = m_lo + i * _BLOCK_M + gl.arange(0, _BLOCK_M, layout=VEC_L)
            row_ok = rows < SEQ
            bh = b.to(gl.int64) * HQ + h
            lse_smem.index(slot).store(gl.load(Lse + bh * SEQ + rows, mask=row_ok, other=float("inf")))
            delta_smem.index(slot).store(gl.load(Delta + bh * SEQ + rows, mask=row_ok, other=0.0))
            gl.barrier()
            mbarrier.arrive(bar)
            t += 1


@_gluon_jit
def _consumer(k_smem, v_smem, q_smem, do_smem, ds_smem, lse_smem, delta_smem, dq_smem, kv_done, q_ready,
              q_free, ds_ready, ds_free, desc_dq, DK, DV, b, kh, n_first, kv_len, off, m_lo, n_steps,
              sm_scale: gl.constexpr, qk_scale: gl.constexpr, SEQ: gl.constexpr,
              KV_SEQ: gl.constexpr, HQ: gl.constexpr, HK: gl.constexpr, D: gl.constexpr,
              CAUSAL: gl.constexpr, STAGES: gl.constexpr, W: gl.constexpr):
    """Consumer warpgroup W: keys [n_first + W * 64, n_first + W * 64 + 64)."""
    b64 = b.to(gl.int64)
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, _BLOCK_M, 16])
    A_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, D, 16])
    HALF: gl.constexpr = D // 2
    Q_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, HALF, 16])
    OP_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=A_L, k_width=2)
    dtype: gl.constexpr = k_smem.dtype
    GROUP: gl.constexpr = HQ // HK
    KV_ROW: gl.constexpr = HK * D

    k_w = k_smem.slice(W * 64, 64)
    v_w = v_smem.slice(W * 64, 64)
    k_half = k_smem.slice(W * HALF, HALF, dim=1)
    first_key = n_first + W * 64
    last_key = first_key + 63
    s_zero = gl.zeros([64, _BLOCK_M], gl.float32, S_L)
    q_zero = gl.zeros([_BLOCK_M, HALF], gl.float32, Q_L)
    dk = gl.zeros([64, D], gl.float32, A_L)
    dv = gl.zeros([64, D], gl.float32, A_L)
    ROW_L: gl.constexpr = gl.SliceLayout(0, S_L)
    mbarrier.wait(kv_done, 0)
    t = 0
    prev_row = b * 0
    prev_col = b * 0
    for g in range(GROUP):
        h = kh * GROUP + g
        for i in range(n_steps):
            slot = t % STAGES
            m0 = m_lo + i * _BLOCK_M
            mbarrier.wait(q_ready.index(slot), (t // STAGES) & 1)
            qs = q_smem.index(slot)
            dos = do_smem.index(slot)
            s_t = warpgroup_mma(k_w, qs.permute((1, 0)), s_zero, use_acc=False, is_async=True)
            dp_t = warpgroup_mma(v_w, dos.permute((1, 0)), s_zero, use_acc=False, is_async=True)
            # lse and delta read from shared memory where used: fewer registers live
            s_t = warpgroup_mma_wait(num_outstanding=1, deps=(s_t,))
            lse = lse_smem.index(slot).load(ROW_L)
            p_t = gl.exp2(s_t * qk_scale - lse[None, :])
            # a mask only where the diagonal or kv_len crosses the tile
            if (CAUSAL and (m0 + off < last_key)) or (last_key >= kv_len):
                keys = first_key + gl.arange(0, 64, layout=gl.SliceLayout(1, S_L))
                keep = (keys < kv_len)[:, None]
                if CAUSAL:
                    keep = keep & (keys[:, None] <= (m0 + off + gl.arange(0, _BLOCK_M, layout=ROW_L))[None, :])
                p_t = gl.where(keep, p_t, 0.0)
            # dV's product runs while dS is computed
            dv = warpgroup_mma(gl.convert_layout(p_t.to(dtype), OP_L), dos, dv, is_async=True)
            dp_t = warpgroup_mma_wait(num_outstanding=1, deps=(dp_t,))
            delta = delta_smem.index(slot).load(ROW_L)
            ds_t = (p_t * (dp_t - delta[None, :])).to(dtype)
            # this step's dS (queries x this warpgroup's 64 keys) in buffer t % 2, beside the other's
            if t >= 2:
                mbarrier.wait(ds_free.index(t % 2), ((t // 2) - 1) & 1)
            ds_smem.index(t % 2).slice(W * 64, 64, dim=1).store(gl.permute(ds_t, (1, 0)))
            fence_async_shared()
            mbarrier.arrive(ds_ready.index(t % 2))
            dk = warpgroup_mma(gl.convert_layout(ds_t, OP_L), qs, dk, is_async=True)
            dv, dk = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk))
            mbarrier.arrive(q_free.index(slot))
            # the previous step's dQ: the other warpgroup wrote its half of that dS a step ago
            if t > 0:
                _dq_step(ds_smem, ds_ready, ds_free, k_half, q_zero, dq_smem, desc_dq, prev_row, prev_col, t, W)
            prev_row = b * SEQ + m0
            prev_col = h * D + W * HALF
            t += 1

    if t > 0:
        _dq_step(ds_smem, ds_ready, ds_free, k_half, q_zero, dq_smem, desc_dq, prev_row, prev_col, t, W)
    tma.store_wait(0)
    rows_o = n_first + W * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, A_L))
    cols_o = gl.arange(0, D, layout=gl.SliceLayout(0, A_L))
    o_off = b64 * (KV_SEQ * KV_ROW) + kh * D + rows_o[:, None] * KV_ROW + cols_o[None, :]
    store_ok = (rows_o < KV_SEQ)[:, None]
    gl.store(DK + o_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=store_ok)
    gl.store(DV + o_off, dv.to(DV.dtype.element_ty), mask=store_ok)


@_gluon_jit
def _bwd_sm90(desc_q, desc_do, desc_k, desc_v, Lse, Delta, VL, desc_dq, DK, DV,
              sm_scale: gl.constexpr, qk_scale: gl.constexpr, SEQ: gl.constexpr, KV_SEQ: gl.constexpr,
              HQ: gl.constexpr, HK: gl.constexpr, D: gl.constexpr, CAUSAL: gl.constexpr,
              STAGES: gl.constexpr):
    """dK, dV [B, KV_SEQ, HK, D] and dQ (unscaled, added into the float32 [B * SEQ, HQ * D]
    behind desc_dq, box [BLOCK_M, D / 2])
    from Lse (base 2, triton_gpu's forward) and Delta = rowsum(dO * O), both [B, HQ, SEQ].
    BLOCK_N keys per program; compiled with num_warps=4 (the producer), 12 warps in all."""
    gl.static_assert(STAGES >= 2)
    dtype: gl.constexpr = desc_k.block_type.element_ty
    bkh = gl.program_id(0)         # kv heads vary fastest: under a causal mask the first key
    pid_n = gl.program_id(1)       # blocks walk the most query blocks, and they start first
    b = bkh // HK
    kh = bkh % HK
    b64 = b.to(gl.int64)
    q_len = gl.load(VL)
    kv_len = gl.minimum(gl.load(VL + 1), KV_SEQ)
    off = kv_len - q_len
    n_first = pid_n * _BLOCK_N
    # the query rows that see some key of this block: row + off >= n_first (causal)
    m_start = n_first * 0
    if CAUSAL:
        m_start = gl.maximum(m_start, n_first - off)
    m_lo = (gl.minimum(m_start, SEQ) // _BLOCK_M) * _BLOCK_M
    m_hi = gl.where(n_first < kv_len, SEQ, m_lo)
    n_steps = gl.cdiv(m_hi - m_lo, _BLOCK_M)

    k_smem = gl.allocate_shared_memory(dtype, [_BLOCK_N, D], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [_BLOCK_N, D], desc_v.layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, _BLOCK_M, D], desc_q.layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, _BLOCK_M, D], desc_do.layout)
    ds_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([_BLOCK_M, _BLOCK_N], dtype)
    ds_smem = gl.allocate_shared_memory(dtype, [2, _BLOCK_M, _BLOCK_N], ds_sl)
    vec_sl: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, _BLOCK_M], vec_sl)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, _BLOCK_M], vec_sl)
    dq_smem = gl.allocate_shared_memory(gl.float32, [4, _BLOCK_M, D // 2], desc_dq.layout)
    kv_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    ds_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_ready, count=1)
    mbarrier.init(kv_done, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=2)
        mbarrier.init(q_free.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(ds_ready.index(i), count=2)
        mbarrier.init(ds_free.index(i), count=2)
    fence_async_shared()
    gl.barrier()

    gl.warp_specialize([
        (_producer, (desc_q, desc_do, desc_k, desc_v, k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem,
                     Lse, Delta, kv_ready, kv_done, q_ready, q_free, b, kh, n_first, kv_len, m_lo, n_steps,
                     SEQ, KV_SEQ, HQ, HK, D,
                     STAGES)),
        (_consumer, (k_smem, v_smem, q_smem, do_smem, ds_smem, lse_smem, delta_smem, dq_smem, kv_done,
                     q_ready, q_free, ds_ready, ds_free, desc_dq, DK, DV, b, kh, n_first, kv_len, off, m_lo, n_steps, sm_scale,
                     qk_scale, SEQ, KV_SEQ, HQ, HK, D, CAUSAL, STAGES, 0)),
        (_consumer, (k_smem, v_smem, q_smem, do_smem, ds_smem, lse_smem, delta_smem, dq_smem, kv_done,
                     q_ready, q_free, ds_ready, ds_free, desc_dq, DK, DV, b, kh, n_first, kv_len, off, m_lo, n_steps, sm_scale,
                     qk_scale, SEQ, KV_SEQ, HQ, HK, D, CAUSAL, STAGES, 1)),
    ], [4, 4], [CONSUMER_REGS, CONSUMER_REGS])

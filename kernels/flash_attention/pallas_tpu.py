"""`flash_attention` for TPU: Pallas kernels lowered through Mosaic, forward and backward.

Three kernels share one masking model (see `_keep`):
  forward  grid (batch, q_head, q_block, kv_block): online softmax over kv tiles in float32,
           writing the output and the row logsumexp (the backward's residual);
  dq       grid (batch, q_head, q_block, kv_block): recomputes probabilities from the
           logsumexp, accumulates dq and writes dbias tiles when a bias is given;
  dk/dv    grid (batch, kv_head, kv_block, group, q_block): accumulates dk and dv over the
           query heads of a GQA group and every query tile.
The kernels work heads-first ([batch, heads, seq, head_dim]); the wrapper transposes from
and to the public layout and pads sequences to whole tiles (padded keys sit past kv_len,
so they are masked; padded query rows are cut off).

valid_lens arrive by scalar prefetch (SMEM). They steer masking, skip tiles that no query
can see (causal, sliding window, kv padding), and clamp the block index of skipped tiles
so the pipeline does not fetch their data.

Per-row statistics (running max, sum, logsumexp, delta) live lane-replicated as
[rows, 128] float32 tiles, the layout Mosaic broadcasts against [rows, k] tiles cheaply.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .tpu_blocks import BlockSizes, SegmentIds

__all__ = ["BlockSizes", "SegmentIds", "flash_attention_impl"]

LANES = 128
SUBLANES = 8
# Finite, so max/exp arithmetic on masked entries never produces inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_NT = (((1,), (1,)), ((), ()))   # contract the last dims: a @ b.T
F32 = jnp.float32


# ---------------------------------------------------------------------------------------
# Static plan
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Tiles:
    """Block sizes after clamping to the arrays, and the padded sequence lengths."""
    bb: int
    bq: int
    bk_major: int
    bk: int
    bq_dq: int
    bk_major_dq: int
    bk_dq: int
    bq_major_dkv: int
    bq_dkv: int
    bk_major_dkv: int
    bk_dkv: int
    seq: int      # padded query length
    kv_seq: int   # padded key length


@dataclasses.dataclass(frozen=True)
class _Static:
    tiles: _Tiles
    causal: bool
    window: tuple[int, int] | None
    cap: float | None
    scale: float
    group: int          # query heads per kv head
    interpret: bool


def _agreeing_majors(blocks, n):
    """Tiles of one axis (forward, dq, dkv) clamped to n; one padded length must be a
    multiple of all of them, so tiles that do not nest collapse to the smallest."""
    blocks = [max(1, min(b, n)) for b in blocks]
    if math.lcm(*blocks) != max(blocks):
        blocks = [min(blocks)] * len(blocks)
    return blocks, -(-n // max(blocks)) * max(blocks)


def _sub_block(block, major):
    block = min(block, major)
    return block if major % block == 0 else math.gcd(block, major)


def _plan(config, b, hq, s, t, d) -> _Tiles:
    bs = BlockSizes.from_config(config, b, hq, s, t, d)
    (bq, bq_dq, bq_dkv_major), seq = _agreeing_majors(
        [bs.block_q, bs.block_q_dq, bs.block_q_major_dkv], s)
    (bk_major, bk_major_dq, bk_major_dkv), kv_seq = _agreeing_majors(
        [bs.block_k_major, bs.block_k_major_dq, bs.block_k_major_dkv], t)
    bb = max(x for x in range(1, min(bs.block_b, b) + 1) if b % x == 0)
    return _Tiles(bb=bb, bq=bq, bk_major=bk_major, bk=_sub_block(bs.block_k, bk_major),
                  bq_dq=bq_dq, bk_major_dq=bk_major_dq, bk_dq=_sub_block(bs.block_k_dq, bk_major_dq),
                  bq_major_dkv=bq_dkv_major, bq_dkv=_sub_block(bs.block_q_dkv, bq_dkv_major),
                  bk_major_dkv=bk_major_dkv, bk_dkv=_sub_block(bs.block_k_dkv, bk_major_dkv),
                  seq=seq, kv_seq=kv_seq)


# ---------------------------------------------------------------------------------------
# Masking and tile visibility (shared by kernels and index maps)
# ---------------------------------------------------------------------------------------

def _i32(x):
    return jnp.asarray(x, jnp.int32)


def _kv_span(st, lens, q0, bq):
    """Key positions [lo, hi) that some query of rows [q0, q0 + bq) may see."""
    q_len, kv_len = lens
    first = q0 + kv_len - q_len          # bottom-right aligned position of row q0
    last = first + bq - 1
    lo, hi = _i32(0), _i32(kv_len)
    if st.causal:
        hi = jnp.minimum(hi, last + 1)
    if st.window is not None:
        left, right = st.window
        lo = jnp.maximum(lo, first - left)
        hi = jnp.minimum(hi, last + right + 1)
    return lo, hi


def _q_span(st, lens, k0, bk, n_rows):
    """Query rows [lo, hi) that may see some key of [k0, k0 + bk) (a superset is fine:
    it only bounds which q tile a skipped step keeps resident)."""
    q_len, kv_len = lens
    off = kv_len - q_len
    lo, hi = _i32(0), _i32(n_rows)
    if st.causal:
        lo = jnp.maximum(lo, k0 - off)
    if st.window is not None:
        left, right = st.window
        lo = jnp.maximum(lo, k0 - off - right)
        hi = jnp.minimum(hi, jnp.minimum(k0 + bk, kv_len) - off + left)
    return lo, hi


def _visible(st, lens, q0, bq, k0, bk):
    lo, hi = _kv_span(st, lens, q0, bq)
    return (k0 < hi) & (k0 + bk > lo)


def _clamp_block(j, lo, hi, block, n_blocks):
    """Block index j clamped to the blocks overlapping [lo, hi): steps outside are
    skipped by the kernel, and a repeated index makes the pipeline skip the copy."""
    size = n_blocks * block
    lo = jnp.clip(lo, 0, size)
    hi = jnp.clip(hi, 0, size)
    first = jnp.minimum(lax.div(lo, _i32(block)), n_blocks - 1)
    last = jnp.maximum(lax.div(jnp.maximum(hi - 1, 0), _i32(block)), first)
    return jnp.minimum(jnp.maximum(j, first), last)


def _keep(st, lens, q0, k0, shape, q_ids, kv_ids):
    """[bq, bk] bool: key k0 + c is visible to query row q0 + r."""
    q_len, kv_len = lens
    rows = lax.broadcasted_iota(jnp.int32, shape, 0) + (q0 + kv_len - q_len)
    cols = lax.broadcasted_iota(jnp.int32, shape, 1) + k0
    keep = cols < kv_len
    if st.causal:
        keep &= cols <= rows
    if st.window is not None:
        left, right = st.window
        keep &= (cols >= rows - left) & (cols <= rows + right)
    if q_ids is not None:
        keep &= _lanes(q_ids, shape[1]) == kv_ids[:1]
    return keep


def _lanes(x, n):
    """A lane-replicated [..., 128] tile as [..., n]."""
    if n == LANES:
        return x
    if n < LANES:
        return x[..., :n]
    reps, rem = divmod(n, LANES)
    y = jnp.tile(x, (1,) * (x.ndim - 1) + (reps,))
    return y if rem == 0 else jnp.concatenate([y, x[..., :rem]], axis=-1)


def _logits(st, q, k, bias):
    """Scaled, soft-capped, biased logits of one tile in float32, and the tanh of the
    soft cap (its derivative) or None."""
    s = lax.dot_general(q, k, _NT, preferred_element_type=F32) * st.scale
    tanh = None
    if st.cap is not None:
        tanh = jnp.tanh(s * (1.0 / st.cap))
        s = st.cap * tanh
    if bias is not None:
        s = s + bias.astype(F32)
    return s, tanh


def _loop(n, body):
    if n == 1:
        body(0, None)
    else:
        lax.fori_loop(0, n, body, None)


def _aligned(x, m):
    return x if isinstance(x, int) else pl.multiple_of(x, m)


def _read_lens(lens_ref):
    return lens_ref[0], lens_ref[1]


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------

def _fwd_kernel(st, names, lens_ref, *refs):
    r = dict(zip(names, refs))
    tl = st.tiles
    qi, kj, nk = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
    lens = _read_lens(lens_ref)
    q0, k0 = qi * tl.bq, kj * tl.bk_major

    @pl.when(kj == 0)
    def _init():
        r["m"][...] = jnp.full(r["m"].shape, MASK_VALUE, F32)
        r["l"][...] = jnp.zeros(r["l"].shape, F32)
        r["acc"][...] = jnp.zeros(r["acc"].shape, F32)

    @pl.when(_visible(st, lens, q0, tl.bq, k0, tl.bk_major))
    def _compute():
        for bi in range(tl.bb):
            _fwd_rows(st, r, bi, lens, q0, k0)

    @pl.when(kj == nk - 1)
    def _finish():
        l = r["l"][...]
        l_safe = jnp.where(l == 0.0, 1.0, l)        # rows that see no key output zeros
        acc = r["acc"][...]
        r["o"][...] = (acc / _lanes(l_safe, acc.shape[-1])).astype(r["o"].dtype)
        r["lse"][...] = r["m"][...] + jnp.log(l_safe)


def _fwd_rows(st, r, bi, lens, q0, k0):
    """One batch row of a visible (q tile, kv major tile): walk its kv sub-tiles."""
    bk = st.tiles.bk
    q = r["q"][bi]
    q_ids = r["q_ids"][bi] if "q_ids" in r else None

    def body(c, carry):
        start = _aligned(c * bk, bk)
        cols = pl.ds(start, bk)
        v = r["v"][bi, cols, :]
        bias = r["bias"][bi, :, cols] if "bias" in r else None
        kv_ids = r["kv_ids"][bi, :, cols] if q_ids is not None else None
        s, _ = _logits(st, q, r["k"][bi, cols, :], bias)
        keep = _keep(st, lens, q0, k0 + start, s.shape, q_ids, kv_ids)
        s = jnp.where(keep, s, MASK_VALUE)
        m_prev = r["m"][bi]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1)[:, None])
        # the where also zeroes rows whose running max is still the mask value
        p = jnp.where(keep, jnp.exp(s - _lanes(m_new, bk)), 0.0)
        alpha = jnp.exp(m_prev - m_new)
        r["l"][bi] = alpha * r["l"][bi] + jnp.sum(p, axis=1)[:, None]
        pv = lax.dot(p.astype(v.dtype), v, preferred_element_type=F32)
        r["acc"][bi] = r["acc"][bi] * _lanes(alpha, pv.shape[-1]) + pv
        r["m"][bi] = m_new
        return carry

    _loop(st.tiles.bk_major // bk, body)


def _probs_and_dlogits(st, lens, q0, k0, q, k, v, do, lse, di, bias, q_ids, kv_ids):
    """Recomputed probabilities p, d(loss)/d(logits) (= dbias), and d(loss)/d(q.k)
    without the softmax scale, for one [bq, bk] tile."""
    s, tanh = _logits(st, q, k, bias)
    keep = _keep(st, lens, q0, k0, s.shape, q_ids, kv_ids)
    p = jnp.where(keep, jnp.exp(s - _lanes(lse, s.shape[1])), 0.0)
    dp = lax.dot_general(do, v, _NT, preferred_element_type=F32)
    dlogits = p * (dp - _lanes(di, s.shape[1]))
    dqk = dlogits if tanh is None else dlogits * (1.0 - tanh * tanh)
    return p, dlogits, dqk


def _dq_kernel(st, names, lens_ref, *refs):
    r = dict(zip(names, refs))
    tl = st.tiles
    qi, kj, nk = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
    lens = _read_lens(lens_ref)
    q0, k0 = qi * tl.bq_dq, kj * tl.bk_major_dq
    visible = _visible(st, lens, q0, tl.bq_dq, k0, tl.bk_major_dq)

    @pl.when(kj == 0)
    def _init():
        r["dq_acc"][...] = jnp.zeros(r["dq_acc"].shape, F32)

    @pl.when(visible)
    def _compute():
        for bi in range(tl.bb):
            _dq_rows(st, r, bi, lens, q0, k0)

    if "dbias" in r:
        @pl.when(jnp.logical_not(visible))
        def _zero_dbias():
            r["dbias"][...] = jnp.zeros(r["dbias"].shape, r["dbias"].dtype)

    @pl.when(kj == nk - 1)
    def _finish():
        r["dq"][...] = (r["dq_acc"][...] * st.scale).astype(r["dq"].dtype)


def _dq_rows(st, r, bi, lens, q0, k0):
    bk = st.tiles.bk_dq
    q, do, lse, di = r["q"][bi], r["do"][bi], r["lse"][bi], r["di"][bi]
    q_ids = r["q_ids"][bi] if "q_ids" in r else None

    def body(c, carry):
        start = _aligned(c * bk, bk)
        cols = pl.ds(start, bk)
        k = r["k"][bi, cols, :]
        bias = r["bias"][bi, :, cols] if "bias" in r else None
        kv_ids = r["kv_ids"][bi, :, cols] if q_ids is not None else None
        _, dlogits, dqk = _probs_and_dlogits(st, lens, q0, k0 + start, q, k, r["v"][bi, cols, :],
                                             do, lse, di, bias, q_ids, kv_ids)
        if "dbias" in r:
            r["dbias"][bi, :, cols] = dlogits.astype(r["dbias"].dtype)
        r["dq_acc"][bi] += lax.dot(dqk.astype(k.dtype), k, preferred_element_type=F32)
        return carry

    _loop(st.tiles.bk_major_dq // bk, body)


def _dkv_kernel(st, names, lens_ref, *refs):
    r = dict(zip(names, refs))
    tl = st.tiles
    kj, gi, qi = pl.program_id(2), pl.program_id(3), pl.program_id(4)
    ng, nq = pl.num_programs(3), pl.num_programs(4)
    lens = _read_lens(lens_ref)
    k0, q0 = kj * tl.bk_major_dkv, qi * tl.bq_major_dkv

    @pl.when((gi == 0) & (qi == 0))
    def _init():
        r["dk_acc"][...] = jnp.zeros(r["dk_acc"].shape, F32)
        r["dv_acc"][...] = jnp.zeros(r["dv_acc"].shape, F32)

    @pl.when(_visible(st, lens, q0, tl.bq_major_dkv, k0, tl.bk_major_dkv))
    def _compute():
        for bi in range(tl.bb):
            _dkv_rows(st, r, bi, lens, q0, k0)

    @pl.when((gi == ng - 1) & (qi == nq - 1))
    def _finish():
        r["dk"][...] = (r["dk_acc"][...] * st.scale).astype(r["dk"].dtype)
        r["dv"][...] = r["dv_acc"][...].astype(r["dv"].dtype)


def _dkv_rows(st, r, bi, lens, q0, k0):
    tl = st.tiles
    bq, bk = tl.bq_dkv, tl.bk_dkv
    has_ids = "q_ids" in r

    def key_body(kc, carry):
        kstart = _aligned(kc * bk, bk)
        cols = pl.ds(kstart, bk)
        k, v = r["k"][bi, cols, :], r["v"][bi, cols, :]
        kv_ids = r["kv_ids"][bi, :, cols] if has_ids else None

        def query_body(qc, carry):
            qstart = _aligned(qc * bq, bq)
            rows = pl.ds(qstart, bq)
            q, do = r["q"][bi, rows, :], r["do"][bi, rows, :]
            bias = r["bias"][bi, rows, cols] if "bias" in r else None
            q_ids = r["q_ids"][bi, rows, :] if has_ids else None
            p, _, dqk = _probs_and_dlogits(st, lens, q0 + qstart, k0 + kstart, q, k, v, do,
                                           r["lse"][bi, rows, :], r["di"][bi, rows, :],
                                           bias, q_ids, kv_ids)
            r["dv_acc"][bi, cols, :] += lax.dot(p.T.astype(do.dtype), do, preferred_element_type=F32)
            r["dk_acc"][bi, cols, :] += lax.dot(dqk.T.astype(q.dtype), q, preferred_element_type=F32)
            return carry

        _loop(tl.bq_major_dkv // bq, query_body)
        return carry

    _loop(tl.bk_major_dkv // bk, key_body)


# ---------------------------------------------------------------------------------------
# pallas_call wiring
# ---------------------------------------------------------------------------------------

def _lane_rows(x):
    """[..., n] -> [..., n, 128]: per-row values replicated across lanes."""
    return jnp.broadcast_to(x[..., None], x.shape + (LANES,))


def _sublane_rows(x):
    """[b, n] -> [b, 8, n]: per-column values replicated across sublanes."""
    return jnp.broadcast_to(x[:, None, :], (x.shape[0], SUBLANES, x.shape[1]))


def _kv_head(h, group):
    return h if group == 1 else lax.div(h, _i32(group))


def _call(st, kernel, grid, named_inputs, outputs, scratch, semantics, lens):
    """named_inputs / outputs: lists of (name, array or ShapeDtypeStruct, BlockSpec)."""
    names = [n for n, _, _ in named_inputs] + [n for n, _, _ in outputs] + [n for n, _ in scratch]
    call = pl.pallas_call(
        functools.partial(kernel, st, names),
        out_shape=[shape for _, shape, _ in outputs],
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=grid,
            in_specs=[spec for _, _, spec in named_inputs],
            out_specs=[spec for _, _, spec in outputs],
            scratch_shapes=[shape for _, shape in scratch]),
        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
        interpret=st.interpret,
    )
    return call(lens, *[x for _, x, _ in named_inputs])


def _forward(st, q, k, v, bias, q_ids, kv_ids, lens):
    """q [b, hq, S, d], k/v [b, hk, T, d] -> out [b, hq, S, d], lse [b, hq, S] float32."""
    tl, g = st.tiles, st.group
    b, hq, n_q, d = q.shape
    n_k = k.shape[2]
    bb, bq, bkm = tl.bb, tl.bq, tl.bk_major
    grid = (b // bb, hq, n_q // bq, n_k // bkm)

    def kvb(i, j, lens_ref):
        lo, hi = _kv_span(st, _read_lens(lens_ref), i * bq, bq)
        return _clamp_block(j, lo, hi, bkm, n_k // bkm)

    row_map = lambda bi, h, i, j, ln: (bi, h, i, 0)
    kv_map = lambda bi, h, i, j, ln: (bi, _kv_head(h, g), kvb(i, j, ln), 0)
    inputs = [("q", q, pl.BlockSpec((bb, None, bq, d), row_map)),
              ("k", k, pl.BlockSpec((bb, None, bkm, d), kv_map)),
              ("v", v, pl.BlockSpec((bb, None, bkm, d), kv_map))]
    if bias is not None:
        inputs.append(("bias", bias, pl.BlockSpec(
            (bb, None, bq, bkm), lambda bi, h, i, j, ln: (bi, h, i, kvb(i, j, ln)))))
    if q_ids is not None:
        inputs += [("q_ids", _lane_rows(q_ids), pl.BlockSpec((bb, bq, LANES), lambda bi, h, i, j, ln: (bi, i, 0))),
                   ("kv_ids", _sublane_rows(kv_ids), pl.BlockSpec(
                       (bb, SUBLANES, bkm), lambda bi, h, i, j, ln: (bi, 0, kvb(i, j, ln))))]
    outputs = [("o", jax.ShapeDtypeStruct(q.shape, q.dtype), pl.BlockSpec((bb, None, bq, d), row_map)),
               ("lse", jax.ShapeDtypeStruct((b, hq, n_q, LANES), F32),
                pl.BlockSpec((bb, None, bq, LANES), row_map))]
    scratch = [("m", pltpu.VMEM((bb, bq, LANES), F32)), ("l", pltpu.VMEM((bb, bq, LANES), F32)),
               ("acc", pltpu.VMEM((bb, bq, d), F32))]
    o, lse = _call(st, _fwd_kernel, grid, inputs, outputs, scratch,
                   ("parallel", "parallel", "parallel", "arbitrary"), lens)
    return o, lse[..., 0]


def _backward_dq(st, q, k, v, bias, q_ids, kv_ids, lens, do, lse, di):
    tl, g = st.tiles, st.group
    b, hq, n_q, d = q.shape
    n_k = k.shape[2]
    bb, bq, bkm = tl.bb, tl.bq_dq, tl.bk_major_dq
    grid = (b // bb, hq, n_q // bq, n_k // bkm)

    def kvb(i, j, lens_ref):
        lo, hi = _kv_span(st, _read_lens(lens_ref), i * bq, bq)
        return _clamp_block(j, lo, hi, bkm, n_k // bkm)

    row_map = lambda bi, h, i, j, ln: (bi, h, i, 0)
    kv_map = lambda bi, h, i, j, ln: (bi, _kv_head(h, g), kvb(i, j, ln), 0)
    inputs = [("q", q, pl.BlockSpec((bb, None, bq, d), row_map)),
              ("k", k, pl.BlockSpec((bb, None, bkm, d), kv_map)),
              ("v", v, pl.BlockSpec((bb, None, bkm, d), kv_map)),
              ("do", do, pl.BlockSpec((bb, None, bq, d), row_map)),
              ("lse", _lane_rows(lse), pl.BlockSpec((bb, None, bq, LANES), row_map)),
              ("di", _lane_rows(di), pl.BlockSpec((bb, None, bq, LANES), row_map))]
    outputs = [("dq", jax.ShapeDtypeStruct(q.shape, q.dtype), pl.BlockSpec((bb, None, bq, d), row_map))]
    if bias is not None:
        inputs.append(("bias", bias, pl.BlockSpec(
            (bb, None, bq, bkm), lambda bi, h, i, j, ln: (bi, h, i, kvb(i, j, ln)))))
        # every (q tile, kv tile) is visited once, so dbias is written tile by tile
        outputs.append(("dbias", jax.ShapeDtypeStruct(bias.shape, bias.dtype),
                        pl.BlockSpec((bb, None, bq, bkm), lambda bi, h, i, j, ln: (bi, h, i, j))))
    if q_ids is not None:
        inputs += [("q_ids", _lane_rows(q_ids), pl.BlockSpec((bb, bq, LANES), lambda bi, h, i, j, ln: (bi, i, 0))),
                   ("kv_ids", _sublane_rows(kv_ids), pl.BlockSpec(
                       (bb, SUBLANES, bkm), lambda bi, h, i, j, ln: (bi, 0, kvb(i, j, ln))))]
    scratch = [("dq_acc", pltpu.VMEM((bb, bq, d), F32))]
    outs = _call(st, _dq_kernel, grid, inputs, outputs, scratch,
                 ("parallel", "parallel", "parallel", "arbitrary"), lens)
    return outs[0], (outs[1] if bias is not None else None)


def _backward_dkv(st, q, k, v, bias, q_ids, kv_ids, lens, do, lse, di):
    tl, g = st.tiles, st.group
    b, hq, n_q, d = q.shape
    hk, n_k = k.shape[1], k.shape[2]
    bb, bqm, bkm = tl.bb, tl.bq_major_dkv, tl.bk_major_dkv
    grid = (b // bb, hk, n_k // bkm, g, n_q // bqm)

    def qb(j, i, lens_ref):
        lo, hi = _q_span(st, _read_lens(lens_ref), j * bkm, bkm, n_q)
        return _clamp_block(i, lo, hi, bqm, n_q // bqm)

    row_map = lambda bi, h, j, gi, i, ln: (bi, h * g + gi, qb(j, i, ln), 0)
    kv_map = lambda bi, h, j, gi, i, ln: (bi, h, j, 0)
    inputs = [("q", q, pl.BlockSpec((bb, None, bqm, d), row_map)),
              ("k", k, pl.BlockSpec((bb, None, bkm, d), kv_map)),
              ("v", v, pl.BlockSpec((bb, None, bkm, d), kv_map)),
              ("do", do, pl.BlockSpec((bb, None, bqm, d), row_map)),
              ("lse", _lane_rows(lse), pl.BlockSpec((bb, None, bqm, LANES), row_map)),
              ("di", _lane_rows(di), pl.BlockSpec((bb, None, bqm, LANES), row_map))]
    if bias is not None:
        inputs.append(("bias", bias, pl.BlockSpec(
            (bb, None, bqm, bkm), lambda bi, h, j, gi, i, ln: (bi, h * g + gi, qb(j, i, ln), j))))
    if q_ids is not None:
        inputs += [("q_ids", _lane_rows(q_ids), pl.BlockSpec(
                        (bb, bqm, LANES), lambda bi, h, j, gi, i, ln: (bi, qb(j, i, ln), 0))),
                   ("kv_ids", _sublane_rows(kv_ids), pl.BlockSpec(
                       (bb, SUBLANES, bkm), lambda bi, h, j, gi, i, ln: (bi, 0, j)))]
    outputs = [("dk", jax.ShapeDtypeStruct(k.shape, k.dtype), pl.BlockSpec((bb, None, bkm, d), kv_map)),
               ("dv", jax.ShapeDtypeStruct(v.shape, v.dtype), pl.BlockSpec((bb, None, bkm, d), kv_map))]
    scratch = [("dk_acc", pltpu.VMEM((bb, bkm, d), F32)), ("dv_acc", pltpu.VMEM((bb, bkm, d), F32))]
    dk, dv = _call(st, _dkv_kernel, grid, inputs, outputs, scratch,
                   ("parallel", "parallel", "parallel", "arbitrary", "arbitrary"), lens)
    return dk, dv


# ---------------------------------------------------------------------------------------
# Differentiable core (heads-first, padded) and the public implementation
# ---------------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, bias, q_ids, kv_ids, lens):
    return _forward(st, q, k, v, bias, q_ids, kv_ids, lens)[0]


def _flash_fwd(st, q, k, v, bias, q_ids, kv_ids, lens):
    o, lse = _forward(st, q, k, v, bias, q_ids, kv_ids, lens)
    return o, (q, k, v, bias, q_ids, kv_ids, lens, o, lse)


def _flash_bwd(st, res, do):
    q, k, v, bias, q_ids, kv_ids, lens, o, lse = res
    di = jnp.sum(o.astype(F32) * do.astype(F32), axis=-1)   # rowsum(dO * O) = rowsum(P * dP)
    do = do.astype(q.dtype)
    dq, dbias = _backward_dq(st, q, k, v, bias, q_ids, kv_ids, lens, do, lse, di)
    dk, dv = _backward_dkv(st, q, k, v, bias, q_ids, kv_ids, lens, do, lse, di)
    return dq, dk, dv, dbias, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_axis(x, axis, size, value=0):
    if x is None or x.shape[axis] == size:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pads, constant_values=value)


def flash_attention_impl(inputs, valid_lens, *, config, causal, sliding_window, logits_soft_cap,
                         softmax_scale):
    q, k, v = inputs["query"], inputs["key"], inputs["value"]
    bias = inputs.get("bias")
    q_ids, kv_ids = inputs.get("q_segment_ids"), inputs.get("kv_segment_ids")
    if (q_ids is None) != (kv_ids is None):
        raise ValueError("flash_attention: give both q_segment_ids and kv_segment_ids, or neither")
    b, s, hq, d = q.shape
    t, hk = k.shape[1], k.shape[2]
    if hq % hk:
        raise ValueError(f"q_heads={hq} is not a multiple of kv_heads={hk}")
    config = dict(config or {})
    tiles = _plan(config, b, hq, s, t, d)
    st = _Static(tiles=tiles, causal=bool(causal),
                 window=None if sliding_window is None else tuple(int(x) for x in sliding_window),
                 cap=None if logits_soft_cap is None else float(logits_soft_cap),
                 scale=float(d ** -0.5 if softmax_scale is None else softmax_scale),
                 group=hq // hk, interpret=bool(config.get("interpret", False)))
    lens = jnp.asarray(valid_lens, jnp.int32).reshape(2)

    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    qh = _pad_axis(heads_first(q), 2, tiles.seq)
    kh = _pad_axis(heads_first(k), 2, tiles.kv_seq)
    vh = _pad_axis(heads_first(v), 2, tiles.kv_seq)
    if bias is not None:
        bias = _pad_axis(_pad_axis(bias, 2, tiles.seq), 3, tiles.kv_seq)
    if q_ids is not None:
        # padded rows are cut off and padded keys sit past kv_len, so the ids are moot
        q_ids = _pad_axis(q_ids.astype(jnp.int32), 1, tiles.seq, -1)
        kv_ids = _pad_axis(kv_ids.astype(jnp.int32), 1, tiles.kv_seq, -2)
    out = _flash(st, qh, kh, vh, bias, q_ids, kv_ids, lens)
    return (heads_first(out[:, :, :s]),)

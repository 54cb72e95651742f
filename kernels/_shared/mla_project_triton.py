"""The absorbed MLA decode's last step as one Triton kernel: merge the key splits' partial
out_lat (when the decode kernel split the keys) and project it through w_vc,

  out[i, h] = (sum_k c_k[i, h] o_k[i, h]) @ w_vc[:, g(h)]      c_k = 2^(lse_k - max) / sum

i a (batch, query) row, h a query head, g(h) its kv head (GQA groups). It stands in for
mla_triton's combine kernel followed by mla_projections.expand_output: with few heads XLA
runs that batched GEMM ([rows, rank] @ [rank, head_dim] per head) as a split-K GEMM and a
reduction kernel, so the call ends in three kernels; here it ends in one. With more than
MERGE_MAX_SPLITS splits one program's registers cannot hold the partials: the combine
kernel merges first and this kernel projects its out_lat.

A program owns one query head, BLOCK_B rows and BLOCK_D output columns. It walks the rank
in BLOCK_R chunks, statically unrolled so that every chunk's loads can be in flight at
once: per chunk, all splits' [SP, BLOCK_B, BLOCK_R] partials in one load, merged in
float32 and rounded to w_vc's dtype (as the decode kernel rounds out_lat when it writes it
itself), then one tl.dot with the [BLOCK_R, BLOCK_D] slice of w_vc into a float32
accumulator.

Only importable where triton is installed; it touches no device at import. jax and
jax_triton are imported on first call."""
from __future__ import annotations

from ejaot_kernels.triton_support import jit as _jit, next_pow2, tl

# Splits merged here; more are merged by the combine kernel first.
MERGE_MAX_SPLITS = 4
# Partial (f32) elements a program loads per rank chunk: 64 per thread of its 4 warps.
CHUNK_ELEMS = 8192
# Programs a launch aims for: about one per SM of an H100 or H200.
TARGET_PROGRAMS = 128


@_jit
def _project_kernel(OP, LSE, W, O, ROWS: tl.constexpr, SEQ: tl.constexpr, HQ: tl.constexpr,
                    HK: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, D: tl.constexpr,
                    NUM_SPLITS: tl.constexpr, SP: tl.constexpr, BLOCK_B: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    """OP: out_lat [ROWS, HQ, R] (NUM_SPLITS 1; LSE unread) or the decode kernel's partials
    [B, NUM_SPLITS, SEQ * HQ, R] (f32) with their log2-sum-exps LSE [B, NUM_SPLITS, SEQ * HQ];
    ROWS = B * SEQ, row i is batch i // SEQ, query i % SEQ. W: w_vc [R, HK, D]. O: out
    [ROWS, HQ, D]. RP: R rounded up to a multiple of BLOCK_R. Grid (HQ, row blocks, column
    blocks). A row no split saw gives zeros."""
    h = tl.program_id(0)
    rows = (tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < ROWS
    col_ok = cols < D
    w_head = W + (h // (HQ // HK)) * D
    if NUM_SPLITS > 1:
        ks = tl.arange(0, SP)
        # split k of row i = (b, s), head h: (b * NUM_SPLITS + k) * SEQ * HQ + s * HQ + h
        at = ((rows // SEQ) * (NUM_SPLITS * SEQ * HQ) + (rows % SEQ) * HQ + h)[None, :] \
            + ks[:, None] * (SEQ * HQ)                                       # [SP, BLOCK_B]
        ok = (ks < NUM_SPLITS)[:, None] & row_ok[None, :]
        lse = tl.load(LSE + at, mask=ok, other=float("-inf"))
        mx = tl.max(lse, axis=0)
        c = tl.math.exp2(lse - tl.where(mx == float("-inf"), 0.0, mx)[None, :])
        den = tl.sum(c, axis=0)
        c = c / tl.where(den == 0.0, 1.0, den)[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_D), tl.float32)
    for chunk in tl.static_range(RP // BLOCK_R):
        rk = chunk * BLOCK_R + tl.arange(0, BLOCK_R)
        rk_ok = rk < R
        if NUM_SPLITS == 1:
            o = tl.load(OP + (rows * HQ + h)[:, None] * R + rk[None, :],
                        mask=row_ok[:, None] & rk_ok[None, :], other=0.0)
        else:
            part = tl.load(OP + at[:, :, None] * R + rk[None, None, :],
                           mask=ok[:, :, None] & rk_ok[None, None, :], other=0.0)
            o = tl.sum(c[:, :, None] * part, axis=0)
        w = tl.load(w_head + rk[:, None] * (HK * D) + cols[None, :], mask=rk_ok[:, None] & col_ok[None, :],
                    other=0.0)
        acc = tl.dot(o.to(w.dtype), w, acc, input_precision=DOT_PREC)
    tl.store(O + (rows * HQ + h)[:, None] * D + cols[None, :], acc.to(O.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def project_tiles(q_heads: int, rows: int, head_dim: int, rank: int, num_splits: int) -> dict:
    """_project_kernel's tiles. Row blocks of 16 to 64 rows, as tall as still leaves
    TARGET_PROGRAMS programs (each program reads its head's w_vc columns once, so taller
    blocks read w_vc fewer times), then column blocks narrowed from 128 towards 32 until
    there are that many; rank chunks within CHUNK_ELEMS for all splits' partials and for
    the w_vc slice."""
    cdiv = lambda a, b: -(-a // b)
    block_d = min(128, max(16, next_pow2(head_dim)))
    block_b = 16
    while block_b < min(64, next_pow2(rows)) and \
            q_heads * cdiv(rows, 2 * block_b) * cdiv(head_dim, block_d) >= TARGET_PROGRAMS:
        block_b *= 2
    while block_d > 32 and q_heads * cdiv(rows, block_b) * cdiv(head_dim, block_d) < TARGET_PROGRAMS:
        block_d //= 2
    sp = next_pow2(num_splits)
    block_r = max(16, min(next_pow2(rank), CHUNK_ELEMS // (sp * block_b), CHUNK_ELEMS // block_d))
    return {"SP": sp, "BLOCK_B": block_b, "BLOCK_R": block_r, "BLOCK_D": block_d,
            "RP": cdiv(rank, block_r) * block_r,
            "grid": (q_heads, cdiv(rows, block_b), cdiv(head_dim, block_d))}


def project_output(res, w_vc, *, batch: int, seq: int, q_heads: int, num_splits: int, cc: int, out_dtype):
    """out [batch, seq, q_heads, head_dim] in out_dtype (the caller's) from the decode
    kernel's results `res`: (out_lat [batch, seq * q_heads, rank], unused) with one split,
    else (partials, lse)."""
    import jax
    import jax.numpy as jnp
    import jax_triton as jt
    src, lse = res
    r, hk, d = w_vc.shape
    rows = batch * seq
    t = project_tiles(q_heads, rows, d, r, num_splits)
    w = w_vc.astype(out_dtype)       # the dot's inputs: out_lat's dtype (mla_triton.latent_dtype)
    out = jt.triton_call(
        src, lse, w, kernel=_project_kernel, out_type=jax.ShapeDtypeStruct((rows, q_heads, d), out_dtype),
        grid=t["grid"], num_warps=4, num_stages=1, compute_capability=cc, name="mla_decode_project",
        ROWS=rows, SEQ=seq, HQ=q_heads, HK=hk, R=r, RP=t["RP"], D=d, NUM_SPLITS=num_splits, SP=t["SP"],
        BLOCK_B=t["BLOCK_B"], BLOCK_R=t["BLOCK_R"], BLOCK_D=t["BLOCK_D"],
        DOT_PREC="ieee" if w.dtype == jnp.float32 else "tf32")
    return out.reshape(batch, seq, q_heads, d)

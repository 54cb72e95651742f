"""Configs for `flash_attention` per backend: heuristics and autotuning candidates.
Pure Python: the planner reads these without importing jax."""
from __future__ import annotations

from ejaot_kernels.cuda_arch import has_tensor_memory, has_tma, has_wgmma, shared_memory_per_block


def check_dims(dims, static):
    if dims["q_heads"] % dims["kv_heads"]:
        raise ValueError(f"q_heads={dims['q_heads']} is not a multiple of kv_heads={dims['kv_heads']}")
    if dims["head_dim"] not in (32, 64, 128, 256):
        raise ValueError(f"head_dim={dims['head_dim']} is not supported (32, 64, 128 or 256)")


def _compute_capability(target) -> int:
    facts = getattr(target, "facts", None) or {}
    return int(facts.get("compute_capability", 90))


# Per (generation, head_dim): forward (block_m, block_n, num_warps, num_stages), dK/dV
# (queries per step, keys per program, warps, stages), dQ (queries per program, keys per step,
# warps, stages). Shared memory per block: ejaot_kernels.cuda_arch.
_TRITON_TABLE = {   # sm90 rows timed on an H100 (bf16, S 4096-8192); sm80 rows sized, not timed
    90: {32: ((128, 64, 4, 3), (64, 64, 4, 3), (64, 64, 4, 3)),
         64: ((128, 64, 4, 3), (64, 64, 4, 3), (64, 64, 4, 3)),
         128: ((128, 128, 8, 3), (64, 64, 4, 2), (64, 64, 4, 2)),
         256: ((128, 64, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2))},
    80: {32: ((128, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 2)),
         64: ((128, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 2)),
         128: ((128, 64, 8, 3), (64, 64, 4, 2), (64, 64, 4, 2)),
         256: ((64, 64, 4, 2), (32, 64, 4, 1), (64, 32, 4, 1))},
}
# Generations lowered, not timed, each from a timed or sized table with the head_dim 256
# dK/dV tile (queries per step, keys per program) changed where the lowering showed it must:
# sm100 (datacenter Blackwell): sm90's; Triton keeps tensor-core accumulators in tensor
# memory (512 columns), which dK, dV and the score tile overflow at 64 keys per program.
# 99 KB generations (sm86, sm89, sm12x): sm80's; beside 64 resident keys, what Triton
# stages does not fit.
_TRITON_TABLE[100] = {**_TRITON_TABLE[90], 256: (_TRITON_TABLE[90][256][0], (64, 32, 8, 2), _TRITON_TABLE[90][256][2])}
_TRITON_TABLE[86] = {**_TRITON_TABLE[80], 256: (_TRITON_TABLE[80][256][0], (32, 32, 4, 2), _TRITON_TABLE[80][256][2])}


def _table_row(cc) -> int:
    """The rows a generation starts from (triton_gpu shrinks them to its shared memory)."""
    if has_wgmma(cc):
        return 90
    if has_tensor_memory(cc):
        return 100
    return 80 if shared_memory_per_block(cc) >= shared_memory_per_block(80) else 86


def _shrink(block, n):
    """A power-of-two block no larger than needed for a dimension of n (at least 16)."""
    while block > 16 and block // 2 >= n:
        block //= 2
    return block


def _triton_config(dims, cc, fwd, dkdv, dq):
    s, t = dims["seq"], dims["kv_seq"]
    return {"compute_capability": cc,
            "block_m": _shrink(fwd[0], s), "block_n": _shrink(fwd[1], t),
            "num_warps": fwd[2], "num_stages": fwd[3],
            "bwd_block_m": _shrink(dkdv[0], s), "bwd_block_n": _shrink(dkdv[1], t),
            "bwd_num_warps": dkdv[2], "bwd_num_stages": dkdv[3],
            "dq_block_m": _shrink(dq[0], s), "dq_block_n": _shrink(dq[1], t),
            "dq_num_warps": dq[2], "dq_num_stages": dq[3]}


def gluon_head_dim_ok(head_dim) -> bool:
    """The head dims the Gluon forward (gluon_sm90.py) tiles: 64, 128 and 256. The heuristic
    (_gluon_ok) and triton_gpu._make_static, which honours a config's `gluon`, both ask."""
    return head_dim in (64, 128, 256)


def _gluon_ok(dims, static, cc) -> bool:
    """Where the Gluon forward applies (gluon_sm90.py): Hopper, head_dim 64, 128 or 256, plain
    scores (no soft cap, no window; a bias or segment ids at call time fall back to the
    Triton forward), and 128-row query blocks."""
    return (has_wgmma(cc) and gluon_head_dim_ok(dims["head_dim"]) and static.get("logits_soft_cap") is None
            and static.get("sliding_window") is None and dims["seq"] > 64)


def triton_heuristic(dims, static, target):
    cfg = _triton_kernel_heuristic(dims, static, target)
    if _gluon_ok(dims, static, cfg["compute_capability"]):
        # the Gluon ping-pong forward: 1.2-1.3x the Triton one at S=8192 on an H100
        # (BENCHMARKS.md); 128 x 128 tiles in rings of 3 K and 3 V slots, or, at head_dim
        # 256, 128 x 64 tiles in rings of 2 (what fits beside Q in shared memory)
        wide = dims["head_dim"] > 128
        cfg.update(block_m=128, block_n=_shrink(64 if wide else 128, dims["kv_seq"]), num_warps=8,
                   num_stages=2 if wide else 3, gluon=True)
        cfg["gluon_bwd"] = _gluon_bwd_ok(dims)
    return cfg


def _gluon_bwd_ok(dims) -> bool:
    """Where the heuristic takes the Gluon backward (gluon_sm90_bwd.py: dK, dV and dQ in one
    kernel, a program per 128 keys of a kv head): head_dim 64 or 128, whole 64-row query
    tiles (triton_gpu._make_static says why), and at least 256 programs, the fewest among
    the buckets where it measured faster than the two Triton kernels on an H200
    (BENCHMARKS.md). Below that it is not measured to be faster (at 12 programs the two
    were within the run's noise of it), so the two Triton kernels keep those buckets."""
    programs = dims["batch"] * dims["kv_heads"] * -(-dims["kv_seq"] // 128)
    return dims["head_dim"] in (64, 128) and dims["seq"] % 64 == 0 and programs >= 256


def _triton_kernel_heuristic(dims, static, target):
    """The Triton forward's config (and the backward's, which every config shares)."""
    cc = _compute_capability(target)
    table = _TRITON_TABLE[_table_row(cc)]
    d = dims["head_dim"]
    fwd, dkdv, dq = table[d if d in table else 128]
    cfg = _triton_config(dims, cc, fwd, dkdv, dq)
    # Hopper: the forward's unmasked K/V stream through TMA descriptors; measured a few
    # percent faster without a causal diagonal, a wash with one.
    cfg["tma"] = bool(has_tma(cc) and d >= 128 and not static.get("causal")
                      and static.get("sliding_window") is None)
    return cfg


def triton_candidates(dims, static, target):
    """Forward tiles to time (the backward keeps the heuristic's): large tiles first."""
    cc = _compute_capability(target)
    d = dims["head_dim"]
    base = _triton_kernel_heuristic(dims, static, target)
    gluon_ok = _gluon_ok(dims, static, cc)
    if gluon_ok:
        # explicit: a config's missing keys come from the heuristic, whose forward is Gluon here
        base["gluon"] = False
    smem = shared_memory_per_block(cc)
    out, seen = [], set()
    for bm in (128, 64):
        for bn in (128, 64, 32):
            for warps in (8, 4):
                for stages in (3, 2, 4):
                    # q tile + stages of (k, v) tiles, 2-byte elements
                    if (bm * d + stages * 2 * bn * d) * 2 > smem:
                        continue
                    if bm > max(16, dims["seq"] * 2) or bn > max(16, dims["kv_seq"] * 2):
                        continue
                    cfg = dict(base)
                    cfg.update(block_m=_shrink(bm, dims["seq"]), block_n=_shrink(bn, dims["kv_seq"]),
                               num_warps=warps, num_stages=stages)
                    key = tuple(sorted(cfg.items()))
                    if key not in seen:
                        seen.add(key)
                        out.append(cfg)
    if has_tma(cc) and d >= 128:
        # Hopper and later: the K/V loading path of the forward's main loop (plain loads, TMA, TMA with
        # Triton's warp specialization) on the tiles that matter at long sequences.
        for bm, bn, warps, stages in ((128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3)):
            for tma, ws in ((False, False), (True, False), (True, True)):
                cfg = dict(base)
                cfg.update(block_m=_shrink(bm, dims["seq"]), block_n=_shrink(bn, dims["kv_seq"]),
                           num_warps=warps, num_stages=stages, tma=tma)
                if ws and warps < 8:
                    continue     # Triton 3.7.1's warp-specialization pass fails on this loop at 4 warps
                if ws:   # only when on: an explicit False would be a second key for one kernel
                    cfg["warp_specialize"] = True
                key = tuple(sorted(cfg.items()))
                if key not in seen and (bm * d + stages * 2 * bn * d) * 2 <= smem:
                    seen.add(key)
                    out.append(cfg)
    if gluon_ok:
        # Hopper: the Gluon ping-pong forward (gluon_sm90.py: 128 query rows, Q and K and V
        # rings of at least 2 slots in shared memory)
        for bn, stages in ((128, 3), (128, 2), (64, 4), (64, 6), (64, 2)):
            if (128 * d + stages * 2 * bn * d) * 2 <= smem - 1024:
                cfg = dict(base)
                cfg.update(block_m=128, block_n=_shrink(bn, dims["kv_seq"]), num_warps=8,
                           num_stages=stages, gluon=True)
                key = tuple(sorted(cfg.items()))
                if key not in seen:
                    seen.add(key)
                    out.append(cfg)
    return out


def tpu_heuristic(dims, static, target):
    """Block sizes from the generation's facts: blocks are multiples of the MXU edge and
    a q block, a k block of K and V, and the f32 accumulators must fit well inside VMEM."""
    facts = getattr(target, "facts", {}) or {}
    mxu = facts.get("mxu", 128)
    vmem = facts.get("vmem_bytes", 16 << 20)
    s, t, d = dims["seq"], dims["kv_seq"], dims["head_dim"]
    block_q = min(512 if vmem >= (64 << 20) else 256, s)
    block_k_major = min(512 if vmem >= (64 << 20) else 256, t)
    block_k = min(block_k_major, max(mxu, 128))
    while (block_q * d * 4 * 3 + block_k_major * d * 2 * 4) > vmem // 4 and block_q > mxu:
        block_q //= 2
    return {"block_q": block_q, "block_k_major": block_k_major, "block_k": block_k, "block_b": 1,
            "block_q_major_dkv": block_q, "block_k_major_dkv": block_k_major, "block_k_dkv": block_k,
            "block_q_dkv": block_q, "block_k_major_dq": block_k_major, "block_k_dq": block_k,
            "block_q_dq": block_q}


def tpu_candidates(dims, static, target):
    out = []
    for bq in (128, 256, 512):
        for bk in (128, 256, 512):
            if bq <= dims["seq"] and bk <= dims["kv_seq"]:
                base = tpu_heuristic(dims, static, target)
                base.update(block_q=bq, block_k_major=bk, block_k=min(bk, 256))
                out.append(base)
    return out

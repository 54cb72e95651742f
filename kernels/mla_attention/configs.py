"""Form choice, shape checks and configs per backend for `mla_attention`.
Pure Python: the planner reads these without importing jax."""
from __future__ import annotations

FORMS = ("naive", "absorbed")


def check_dims(dims, static):
    if dims["q_heads"] % dims["kv_heads"]:
        raise ValueError(f"q_heads={dims['q_heads']} is not a multiple of kv_heads={dims['kv_heads']}")


def form_flops(batch, seq, kv_seq, q_heads, kv_heads, head_dim, kv_lora_rank):
    """Multiply-adds of each form (the rope term and softmax are common to both).

    naive:    decompress K and V for every kv head (2·t·r·hk·d), then attend with
              head_dim-wide dot products (2·hq·s·t·d).
    absorbed: fold w_kc into the queries and w_vc into the outputs (2·hq·s·d·r), then
              attend with rank-wide dot products against the shared latent cache
              (2·hq·s·t·r).
    """
    s, t, hq, hk, d, r = seq, kv_seq, q_heads, kv_heads, head_dim, kv_lora_rank
    naive = batch * (2 * t * r * hk * d + 2 * hq * s * t * d)
    absorbed = batch * (2 * hq * s * d * r + 2 * hq * s * t * r)
    return {"naive": naive, "absorbed": absorbed}


def choose_form(dims) -> str:
    """The cheaper form for these dims. Decode (few queries over a long cache) picks
    "absorbed": decompressing the whole cache per call costs t·r·hk·d, which dwarfs the
    s·hq·t·r of attending in latent space, and the per-head K/V is never materialized.
    Prefill (s ≈ t) picks "naive": decompression is amortized over many queries and the
    attention dot products are d wide instead of r (r = 4·d in DeepSeek-V3)."""
    f = form_flops(dims["batch"], dims["seq"], dims.get("kv_seq", dims["seq"]), dims["q_heads"],
                   dims.get("kv_heads", dims["q_heads"]), dims["head_dim"], dims["kv_lora_rank"])
    return "absorbed" if f["absorbed"] < f["naive"] else "naive"


def norm_form(config) -> str | None:
    form = (config or {}).get("form")
    if form is not None and form not in FORMS:
        raise ValueError(f"mla_attention: config form must be one of {FORMS}, got {form!r}")
    return form


def xla_heuristic(dims, static, target):
    # The form is recorded in the entry's config, so `ejaot inspect` shows which one a bucket uses.
    return {"form": choose_form(dims)}


def _round_up(n, m):
    return -(-n // m) * m


def tpu_heuristic(dims, static, target):
    """Blocks for the Pallas kernel. Rows are query positions × heads in the absorbed
    form (all heads share the latent cache, so they form one MQA-like row block) and
    query positions per head in the naive form. Blocks are multiples of the lane width
    (kv) and of 16 sublanes (bf16 rows); the double-buffered q/kv blocks, the f32
    accumulator and the logits tile must stay well inside VMEM."""
    facts = getattr(target, "facts", {}) or {}
    vmem = facts.get("vmem_bytes", 16 << 20)
    form = choose_form(dims)
    s, t = dims["seq"], dims.get("kv_seq", dims["seq"])
    rows = s * dims["q_heads"] if form == "absorbed" else s
    width = dims["kv_lora_rank"] if form == "absorbed" else dims["head_dim"]
    big = vmem >= (64 << 20)
    block_q = min(512 if big else 256, _round_up(rows, 16))
    block_k = min(512 if big else 256, _round_up(t, 128))

    def vmem_bytes(bq, bk):
        return 2 * bq * width * 2 + 2 * 2 * bk * width * 2 + bq * width * 4 + 3 * bq * bk * 4

    while vmem_bytes(block_q, block_k) > vmem // 2 and block_q > 16:
        block_q //= 2
    while vmem_bytes(block_q, block_k) > vmem // 2 and block_k > 128:
        block_k //= 2
    return {"form": form, "block_q": block_q, "block_k": block_k}


def tpu_candidates(dims, static, target):
    base = tpu_heuristic(dims, static, target)
    s, t = dims["seq"], dims.get("kv_seq", dims["seq"])
    rows = s * dims["q_heads"] if base["form"] == "absorbed" else s
    out = []
    for bq in (128, 256, 512):
        for bk in (128, 256, 512):
            if bq <= max(_round_up(rows, 16), 128) and bk <= max(_round_up(t, 128), 128):
                out.append({**base, "block_q": bq, "block_k": bk})
    return out or [base]


# -- Triton (GPU): the absorbed-form decode kernels of _shared/mla_triton.py -------------
# ejkernel's FlashMLAConfig(block_q, block_k, num_warps, num_stages) candidates were
# (64, 64, 4, 1), (128, 128, 4, 2), (256, 256, 8, 2); the kernel here blocks heads
# (block_h rows of (query, head) pairs, sharing every kv block) and kv tokens (block_n),
# and adds num_splits (flash-decoding) and the compute capability it is compiled for.

def _compute_capability(target) -> int:
    facts = getattr(target, "facts", None) or {}
    return int(facts.get("compute_capability", 90))


def _next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _smem_limit(cc):
    return (227 if cc >= 90 else (163 if cc in (80, 87) else 99)) * 1024


def fit_triton_tiles(block_h, block_n, stages, rank_p, rope_p, itemsize, cc):
    """Shrinks (stages beyond 2, then block_n to 32, then stages, then block_h) until an
    estimate of the tl.dot decode kernel's shared memory fits the generation: the resident
    q_lat (+ b_q rows), `stages` staged kv (+ b_k) tiles, and the p tile."""
    width = rank_p + rope_p

    def need(bh, bn, st):
        return itemsize * (bh * width + st * bn * width + bh * bn)
    limit = _smem_limit(cc)
    while need(block_h, block_n, stages) > limit:
        if stages > 2:
            stages -= 1
        elif block_n > 32:
            block_n //= 2
        elif stages > 1:
            stages -= 1
        elif block_h > 16:
            block_h //= 2
        elif block_n > 16:
            block_n //= 2
        else:
            break
    return block_h, block_n, stages


def choose_splits(batch, rows, kv_seq, block_h, block_n, rank, sm_count, max_splits=64):
    """Flash-decoding split count minimizing an estimated time, in units of one kv block's
    time per program (about 3 us for 64 heads x 64 keys x 576 on an H100): the critical
    path (waves of programs x kv blocks per program), plus, with splits, a combine launch
    (~2 units) and the f32 partials (block_h x rank x 4 bytes per program, written and
    read back; ~5.5 MB of traffic per unit at ~2.5 TB/s)."""
    row_blocks = -(-rows // block_h)
    n_blocks = -(-kv_seq // block_n)
    best, best_cost = 1, None
    for ns in range(1, min(max_splits, n_blocks) + 1):
        if ns > 1 and n_blocks < 2 * ns:      # at least two kv blocks per split
            break
        programs = batch * row_blocks * ns
        waves = -(-programs // sm_count)
        cost = waves * -(-n_blocks // ns)
        if ns > 1:
            cost += 2 + programs * block_h * rank * 8 / 5.5e6
        if best_cost is None or cost < best_cost - 1e-9:
            best, best_cost = ns, cost
    return best


# The warp-specialized kernel's output warpgroup reads shared-memory column slices that
# start at R/2 or R/4; below rank 128 they would start inside a 128-byte swizzle atom. That
# compiles, but no GPU has checked it, so smaller ranks run the lockstep kernel.
WS_MIN_RANK = 128
# softmax_share 4 (the softmax warpgroup accumulates a quarter of out_lat) from this rank
QUARTER_MIN_RANK = 256


def gluon_tiles_page(page_size: int, block_n: int) -> bool:
    """Whether a Gluon kernel's block of block_n keys maps onto pages of page_size keys by
    TMA boxes of consecutive cache rows: one box per block when the page is a multiple of
    the block, one box per page when the page divides the block (at least 8 rows: a
    swizzled shared-memory tile is laid out in 8-row atoms)."""
    return page_size % block_n == 0 or (block_n % page_size == 0 and page_size >= 8)


def page_kernel(kernel: str, page_size: int) -> str:
    """The kernel a paged cache (page_size > 0) runs instead of `kernel`: the Gluon kernels
    (64-key blocks) where gluon_tiles_page, else the tl.dot kernel, which looks every
    key's page up."""
    if page_size and kernel in ("wgmma_ws", "wgmma") and not gluon_tiles_page(page_size, 64):
        kernel = "dot"
    return kernel


def _hopper_kernel(dims) -> str:
    """The warp-specialized kernel from WS_MIN_RANK, else the lockstep one."""
    return "wgmma_ws" if dims["kv_lora_rank"] >= WS_MIN_RANK else "wgmma"


def triton_heuristic(dims, static, target):
    """Decode (absorbed form) tiles. Hopper: 64 (query, head) rows per program on two
    warpgroups (wgmma needs 64 rows; the f32 out_lat accumulator, 64 x 512, is 128
    registers a thread over 8 warps), 64 keys per block, two smem stages (q_lat 74 KB +
    2 x 74 KB of kv + b_k tiles, under 227 KB), in the warp-specialized kernel (one
    warpgroup's softmax overlaps the other's p @ kv). Ampere: 32-key blocks (163 KB)."""
    cc = _compute_capability(target)
    facts = getattr(target, "facts", None) or {}
    s, t = dims["seq"], dims.get("kv_seq", dims["seq"])
    rows = s * dims["q_heads"]
    rope = dims.get("rope_dim", 64) or 0
    block_h = max(16, min(64, _next_pow2(rows)))
    block_n = max(16, min(64 if cc >= 90 else 32, _next_pow2(t)))
    stages = 2
    block_h, block_n, stages = fit_triton_tiles(
        block_h, block_n, stages, max(16, _next_pow2(dims["kv_lora_rank"])),
        max(16, _next_pow2(rope)) if rope else 0, 2, cc)
    sm_count = int(facts.get("sm_count", 132 if cc >= 90 else 108))
    splits = choose_splits(dims["batch"], rows, t, block_h, block_n, dims["kv_lora_rank"], sm_count)
    # Hopper runs a Gluon kernel: "wgmma_ws" (warp-specialized, softmax_share: the
    # softmax warpgroup accumulates 1/share of out_lat) or "wgmma" (both warpgroups in
    # lockstep); 64 x 64 tiles, 2 TMA stages. The tile fields above then describe the
    # tl.dot kernel, which serves other generations, float32 inputs and shapes the
    # Gluon kernels do not tile.
    return {"compute_capability": cc, "form": choose_form(dims),
            "kernel": _hopper_kernel(dims) if cc // 10 == 9 else "dot", "softmax_share": 2,
            "block_h": block_h,
            "block_n": block_n, "num_splits": splits, "num_warps": 8 if block_h >= 64 else 4,
            "num_stages": stages}


def triton_candidates(dims, static, target):
    """Decode configs to time: the heuristic, then tiles and split counts around it. On
    Hopper: the warp-specialized kernel with the softmax warpgroup's share of out_lat at
    1/2 or 1/4, the lockstep wgmma kernel (64 keys x 2 stages or 32 keys x 3-4 stages;
    both Gluon kernels ignore num_warps), and the tl.dot kernel."""
    base = triton_heuristic(dims, static, target)
    cc = base["compute_capability"]
    rope = dims.get("rope_dim", 64) or 0
    width = max(16, _next_pow2(dims["kv_lora_rank"])) + (max(16, _next_pow2(rope)) if rope else 0)
    out, seen = [], set()

    def add(c):
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    add(base)
    dot = {**base, "kernel": "dot"}
    if base["kernel"] in ("wgmma_ws", "wgmma"):
        quarter = base["kernel"] == "wgmma_ws" and dims["kv_lora_rank"] >= QUARTER_MIN_RANK
        if quarter:
            add({**base, "softmax_share": 4})
        lockstep = {**base, "kernel": "wgmma"}
        add(lockstep)
        for bn, stages in ((32, 4), (32, 3)):
            add({**lockstep, "block_n": bn, "num_stages": stages})
        add({**dot, "block_n": 64, "num_stages": 2, "num_warps": 8})   # 1.1-2x slower on an H100
        if quarter:
            for ns in sorted({1, 2, base["num_splits"]}):
                add({**base, "softmax_share": 4, "num_splits": ns})
    for bn in ((base["block_n"], 32, 128) if base["kernel"] == "dot" else ()):
        for stages in (2, 3, 1):
            for warps in (8, 4):
                bh = base["block_h"]
                if 2 * (bh * width + stages * bn * width + bh * bn) > _smem_limit(cc):
                    continue
                if warps == 4 and bh >= 64:     # a 64 x 512 f32 accumulator on one warpgroup spills
                    continue
                add({**dot, "block_n": bn, "num_stages": stages, "num_warps": warps})
    for ns in sorted({1, 2, 4, max(1, base["num_splits"] // 2), base["num_splits"] * 2}):
        add({**base, "num_splits": ns})
    return out

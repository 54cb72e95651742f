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


# Seed 001's FlashMLAConfig(block_q, block_k, num_warps, num_stages), kept for a future
# Triton backend (not declared in SPEC.backends: there is no Triton implementation yet).
TRITON_CANDIDATES = ((64, 64, 4, 1), (128, 128, 4, 2), (256, 256, 8, 2))


def _triton_config(block_q, block_k, num_warps, num_stages):
    return {"block_q": block_q, "block_k": block_k, "num_warps": num_warps, "num_stages": num_stages}


def triton_heuristic(dims, static, target):
    return _triton_config(128, 128, 4, 2)


def triton_candidates(dims, static, target):
    return [_triton_config(*c) for c in TRITON_CANDIDATES]

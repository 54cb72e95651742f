"""Shape checks and configs (Triton GPU, Pallas TPU) for `paged_mla_attention`. Pure Python:
the planner reads these without importing jax.

The Triton backend runs mla_attention's decode kernels (one query per sequence, the
absorbed form) with the latent cache read page by page, so its configs are
mla_attention's for the same decode shape: batch = num_seqs, one query, kv_seq =
max_blocks * page_size (the longest context a block table addresses), with the kernel
that tiles the page size (fit_page: pages of a multiple of 64 keys, or of 8, 16 or 32
keys, take the default warp-specialized kernel)."""
from __future__ import annotations

from ejaot_kernels.mla_attention import configs as mla_configs


def check_dims(dims, static):
    if dims["q_heads"] % dims["kv_heads"]:
        raise ValueError(f"q_heads={dims['q_heads']} is not a multiple of kv_heads={dims['kv_heads']}")


def decode_dims(dims) -> dict:
    """mla_attention's dims for the same decode step."""
    return dict(batch=dims["num_seqs"], seq=1, kv_seq=dims["max_blocks"] * dims["page_size"],
                q_heads=dims["q_heads"], kv_heads=dims["kv_heads"], head_dim=dims["head_dim"],
                kv_lora_rank=dims["kv_lora_rank"], rope_dim=dims.get("rope_dim", 64))


def fit_page(config, page_size) -> dict:
    """The config as the kernel that runs it sees it: the kernel that tiles this page size
    (mla_attention.configs.page_kernel, which _shared.mla_triton.make_static applies too).
    So an entry's config names the kernel it runs, and candidates that would run the same
    kernel are timed once."""
    cfg = dict(config)
    kernel = mla_configs.page_kernel(cfg.get("kernel") or "dot", page_size)
    if kernel != cfg.get("kernel"):
        cfg["kernel"] = kernel
        cfg["softmax_share"] = 2          # a warp-specialized kernel's knob only
    return cfg


def triton_heuristic(dims, static, target):
    return fit_page(mla_configs.triton_heuristic(decode_dims(dims), static, target), dims["page_size"])


def triton_candidates(dims, static, target):
    out, seen = [], set()
    for c in mla_configs.triton_candidates(decode_dims(dims), static, target):
        c = fit_page(c, dims["page_size"])
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


# ---------------------------------------------------------------------------------------
# Pallas TPU
#
# Config keys of the `pallas_tpu` backend:
#   pages_per_compute_block  pages DMA'd and processed per online-softmax step
#   block_h                  q heads per kernel instance (all of them share each page read)
#   interpret                True: run the kernel in the Pallas interpreter (CPU tests)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def _tpu_block_h(q_heads, most=128):
    """The most heads per instance up to `most` that Mosaic tiles: all of them, or a
    multiple of 8 that divides q_heads."""
    if q_heads <= most:
        return q_heads
    return max([h for h in _divisors(q_heads) if h <= most and h % 8 == 0] or [q_heads])


def _tpu_vmem_fits(tokens, block_h, dims, budget):
    """Within budget, counted in f32 (the worst case): two slots of latent + rope rows and
    the masked copies of one, the q_lat and out_lat blocks (double-buffered), the
    accumulator, and three [heads, tokens] temporaries (logits, p, exp)."""
    r = dims["kv_lora_rank"]
    width = r + (dims.get("rope_dim", 64) or 0)
    need = 4 * (3 * tokens * width + 4 * block_h * r + block_h * r + 3 * block_h * tokens)
    return need <= budget


# Mosaic's default scoped VMEM limit on the smallest current chip (v5e); the kernel sets
# no larger one, so every config stays within half of it.
_TPU_SCOPED_VMEM = 16 << 20


def tpu_heuristic(dims, static, target=None):
    """Compute blocks of about 256 tokens (512 on chips with >= 64 MiB VMEM), as
    page_attention's, within half of the default scoped VMEM; up to 128 heads per
    instance."""
    facts = (getattr(target, "facts", None) or {}) if target is not None else {}
    vmem = facts.get("vmem_bytes", 16 << 20)
    block_h = _tpu_block_h(dims["q_heads"])
    ps, mb = dims["page_size"], dims["max_blocks"]
    want = max(512 if vmem >= (64 << 20) else 256, facts.get("mxu", 128))
    fits = [p for p in _divisors(mb) if p * ps <= want and _tpu_vmem_fits(p * ps, block_h, dims, _TPU_SCOPED_VMEM // 2)]
    return {"pages_per_compute_block": max(fits or [1]), "block_h": block_h}


def tpu_candidates(dims, static, target):
    """Blocks of 64 to 2048 tokens within half of the default scoped VMEM, with the
    heuristic's heads per instance and with half as many (more instances for small
    batches)."""
    base = tpu_heuristic(dims, static, target)
    ps, mb = dims["page_size"], dims["max_blocks"]
    heads = [base["block_h"]]
    half = base["block_h"] // 2
    if half % 8 == 0 and dims["q_heads"] % half == 0:
        heads.append(half)
    out = [base]
    for block_h in heads:
        for ppcb in _divisors(mb):
            tokens = ppcb * ps
            if tokens > 2048 or (tokens < 64 and ppcb != mb) or \
                    not _tpu_vmem_fits(tokens, block_h, dims, _TPU_SCOPED_VMEM // 2):
                continue
            c = {"pages_per_compute_block": ppcb, "block_h": block_h}
            if c not in out:
                out.append(c)
    return out

"""Shape checks and Triton configs for `paged_mla_attention`. Pure Python: the planner reads
these without importing jax.

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
    (mla_attention.configs.page_kernel, which triton_gpu.make_static applies too). So an
    entry's config names the kernel it runs, and candidates that would run the same
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

"""Shape checks and Triton configs for `paged_mla_attention`. Pure Python: the planner reads
these without importing jax.

The Triton backend runs mla_attention's decode kernels (one query per sequence, the
absorbed form) with the latent cache read page by page, so its configs are
mla_attention's for the same decode shape: batch = num_seqs, one query, kv_seq =
max_blocks * page_size (the longest context a block table addresses). The kernel a config
names must also tile the page size; triton_gpu.make_static says which runs when it
cannot (pages of a multiple of 64 keys take the default warp-specialized kernel)."""
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


def triton_heuristic(dims, static, target):
    return mla_configs.triton_heuristic(decode_dims(dims), static, target)


def triton_candidates(dims, static, target):
    return mla_configs.triton_candidates(decode_dims(dims), static, target)

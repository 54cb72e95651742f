"""Configs for `flash_mla_attention`'s kernel backends: flash attention's own, at the
shapes its kernel sees (latent_dim as the head dim, one length for queries and keys, one
kv head per query head). Pure Python: the planner reads these without importing jax."""
from __future__ import annotations

from ejaot_kernels.flash_attention import configs as flash

# The head dims flash attention's Triton kernels tile (flash.check_dims) that this backend
# runs a latent dim at; a latent dim between them is zero-padded up to the next (the padded
# lanes add nothing to a score and project to nothing on the way out). Not 256: at latent
# 256 the stored VJP's gradients came out 1.07-1.18x the bfloat16 tolerance against the
# float32 reference on the H200, with either flash forward (BENCHMARKS.md, verify), so
# those buckets stay with XLA.
TRITON_HEAD_DIMS = (32, 64, 128)


def triton_latent_dim(latent_dim: int) -> int | None:
    """The head dim the Triton flash kernel runs a latent dim at; None above the largest."""
    return next((d for d in TRITON_HEAD_DIMS if d >= latent_dim), None)


def flash_dims(dims, head_dim: int) -> dict:
    return {"batch": dims["batch"], "seq": dims["seq"], "kv_seq": dims["seq"],
            "q_heads": dims["heads"], "kv_heads": dims["heads"], "head_dim": head_dim}


def flash_static(static) -> dict:
    return {"causal": bool(static.get("causal")), "sliding_window": None,
            "logits_soft_cap": None, "softmax_scale": static.get("softmax_scale")}


# Below this many tokens the score matrix is small and the XLA backend, which materializes
# it, ran faster on the H200 (BENCHMARKS.md, flash_mla_attention at 128 and 512 tokens):
# those buckets stay with XLA.
TRITON_MIN_SEQ = 1024


def triton_supports(dims, static) -> bool:
    return triton_latent_dim(dims["latent_dim"]) is not None and dims["seq"] >= TRITON_MIN_SEQ


def triton_heuristic(dims, static, target):
    cfg = flash.triton_heuristic(flash_dims(dims, triton_latent_dim(dims["latent_dim"])),
                                 flash_static(static), target)
    # flash_attention's one-kernel Gluon backward is not measured or verified in the latent
    # space: these entries keep the two Triton backward kernels (a config may still ask)
    if "gluon_bwd" in cfg:
        cfg["gluon_bwd"] = False
    return cfg


def triton_candidates(dims, static, target):
    return flash.triton_candidates(flash_dims(dims, triton_latent_dim(dims["latent_dim"])),
                                   flash_static(static), target)


def tpu_heuristic(dims, static, target):
    return flash.tpu_heuristic(flash_dims(dims, dims["latent_dim"]), flash_static(static), target)


def tpu_candidates(dims, static, target):
    return flash.tpu_candidates(flash_dims(dims, dims["latent_dim"]), flash_static(static), target)

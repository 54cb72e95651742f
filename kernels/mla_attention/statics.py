"""Call-time checks for `mla_attention` that the shapes alone cannot express (no jax import)."""
from __future__ import annotations

from ejaot.errors import CallError


def prepare_call(inputs, static):
    """b_q and b_k come together (their product is the rope logit term); cu_seqlens packs
    sequences along one row, so it needs batch 1 and as many queries as keys."""
    if (inputs.get("b_q") is None) != (inputs.get("b_k") is None):
        raise CallError("mla_attention: give both b_q and b_k, or neither")
    if inputs.get("cu_seqlens") is not None:
        q, kv = inputs["query"], inputs["key_value"]
        if q.shape[0] != 1 or q.shape[1] != kv.shape[1]:
            raise CallError(f"mla_attention: cu_seqlens needs batch 1 and seq == kv_seq, got query "
                            f"{tuple(q.shape)} and key_value {tuple(kv.shape)}")

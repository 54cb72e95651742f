"""Call-time checks for `paged_mla_attention` that the shapes alone cannot express (no jax import)."""
from __future__ import annotations

from ejaot.errors import CallError


def prepare_call(inputs, static):
    """b_q and rope_cache come together (their product is the rope logit term)."""
    if (inputs.get("b_q") is None) != (inputs.get("rope_cache") is None):
        raise CallError("paged_mla_attention: give both b_q and rope_cache, or neither")

"""Static-argument normalization and call hooks for `attention` (no jax import)."""
from __future__ import annotations

import math

_DTYPES = ("float32", "bfloat16", "float16", "float64")


def norm_bool(name):
    def norm(v):
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be true or false, got {v!r}")
        return v
    return norm


def norm_positive_float(name):
    def norm(v):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"{name} must be a positive number or none, got {v!r}")
        return float(v)
    return norm


def norm_scale(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"softmax_scale must be a finite number or none, got {v!r}")
    return float(v)


def norm_dtype(name):
    def norm(v):
        if v is None:
            return None
        s = getattr(v, "name", None) or getattr(v, "__name__", None) or str(v)
        s = {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}.get(s, s)
        if s not in _DTYPES:
            raise ValueError(f"{name} must be one of {list(_DTYPES)} or none, got {v!r}")
        return s
    return norm


def norm_window(v):
    """int w -> [w, w]; (left, right) -> [left, right]; none -> none."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
        return [int(v[0]), int(v[1])]
    raise ValueError(f"sliding_window must be a non-negative int or [left, right], got {v!r}")


def check_dims(dims, static):
    if dims["q_heads"] % dims["kv_heads"]:
        raise ValueError(f"q_heads={dims['q_heads']} is not a multiple of kv_heads={dims['kv_heads']}")


def pack_outputs(outputs, static):
    return (outputs[0], outputs[1]) if static.get("return_weights") else outputs[0]


def prepare_call(inputs, static):
    """Call-time conveniences of the public interface: a lazy `init_bias`, and 1-D sinks
    shared by every head."""
    init_bias = static.pop("init_bias", None)
    if init_bias is not None and inputs.get("bias") is None and inputs.get("attention_mask") is None:
        inputs["bias"] = init_bias()
    aux = inputs.get("softmax_aux")
    if aux is not None and getattr(aux, "ndim", 2) == 1:
        import jax.numpy as jnp
        heads = inputs["query"].shape[2]
        inputs["softmax_aux"] = jnp.broadcast_to(aux[None, :], (heads, aux.shape[0]))

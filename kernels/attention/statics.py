"""Static-argument normalization and call hooks for `attention` (no jax import); the
normalizers other kernels use too are in ejaot_kernels._shared.statics."""
from __future__ import annotations

_DTYPES = ("float32", "bfloat16", "float16", "float64")


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

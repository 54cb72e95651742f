"""`flash_attention`: blockwise attention for prefill and training (forward + backward).

Public layout [batch, seq, heads, head_dim] (GQA/MQA: kv_heads divides q_heads).
Semantics are those of `attention` (kernels/attention/__init__.py): bottom-right causal,
sliding_window (left, right), logits_soft_cap, softmax_scale (default 1/sqrt(head_dim)),
additive bias; plus segment ids: query i sees key j only when
q_segment_ids[b, i] == kv_segment_ids[b, j] (packed sequences, ejkernel's SegmentIds).
Keys past the valid kv length are masked, which keeps padded buckets exact. Inputs are
bfloat16/float16/float32; accumulation is float32.

Backends: `triton` (GPU, through jax-triton), `pallas_tpu` (TPU, Mosaic), `xla` (every
platform; also the reference and the fallback). Each is differentiable (custom VJP).
"""
from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg

from ejaot_kernels._shared.statics import norm_bool, norm_positive_float, norm_scale, norm_window
from .configs import (check_dims, tpu_candidates, tpu_heuristic, triton_candidates,
                      triton_heuristic)

SPEC = KernelSpec(
    name="flash_attention",
    package=__name__,
    dims=("batch", "seq", "kv_seq", "q_heads", "kv_heads", "head_dim"),
    dim_defaults={"kv_seq": "seq", "kv_heads": "q_heads"},
    inputs=(
        ArrayArg("query", ("batch", "seq", "q_heads", "head_dim")),
        ArrayArg("key", ("batch", "kv_seq", "kv_heads", "head_dim")),
        ArrayArg("value", ("batch", "kv_seq", "kv_heads", "head_dim")),
        ArrayArg("bias", ("batch", "q_heads", "seq", "kv_seq"), optional=True),
        ArrayArg("q_segment_ids", ("batch", "seq"), dtype="int32", optional=True, pad_value=-1),
        ArrayArg("kv_segment_ids", ("batch", "kv_seq"), dtype="int32", optional=True, pad_value=-2),
    ),
    outputs=(ArrayArg("output", ("batch", "seq", "q_heads", "head_dim")),),
    statics=(
        StaticArg("causal", False, norm_bool("causal")),
        StaticArg("sliding_window", None, norm_window),
        StaticArg("logits_soft_cap", None, norm_positive_float("logits_soft_cap")),
        StaticArg("softmax_scale", None, norm_scale),
    ),
    paddable=frozenset({"batch", "seq", "kv_seq"}),
    valid_length_dims=("seq", "kv_seq"),
    dtypes=("bfloat16", "float16", "float32"),
    backends={
        "xla": Backend("ejaot_kernels.flash_attention.xla:flash_attention_impl"),
        "triton": Backend("ejaot_kernels.flash_attention.triton_gpu:flash_attention_impl",
                          triton_heuristic, triton_candidates),
        "pallas_tpu": Backend("ejaot_kernels.flash_attention.pallas_tpu:flash_attention_impl",
                              tpu_heuristic, tpu_candidates),
    },
    check=check_dims,
    example_inputs="ejaot_kernels.flash_attention.examples:make_inputs",
    footprint=lambda d: d["batch"] * d["q_heads"] * d["seq"] * d["kv_seq"],
)


def flash_attention(query, key, value, bias=None, q_segment_ids=None, kv_segment_ids=None, **static):
    """The public function (JIT path): the platform's kernel, compiled on first use."""
    from ejaot.artifact.function import call_jit
    return call_jit(SPEC, (query, key, value, bias, q_segment_ids, kv_segment_ids), static)

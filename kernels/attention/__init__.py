"""`attention`: multi-head attention with GQA/MQA, masks, bias, sinks (ejkernel's `attention`).

Layout [batch, seq, heads, head_dim]. Semantics, in order of application:
  logits = (q · k) * softmax_scale (default 1/sqrt(head_dim)), in softmax_dtype
  logits = logits_soft_cap * tanh(logits / logits_soft_cap)          if soft cap
  logits += bias                                                      if bias
  keep key j for query i when: j < kv_len; j <= i + (kv_len - q_len)  if causal
      (causal is aligned bottom-right, as in FlashAttention: the last query sees
      every key, which is what chunked prefill over a cache needs); within
      sliding_window (left, right) of i + (kv_len - q_len); attention_mask[b, 0, i, j]
      when no bias is given (as in ejkernel: bias takes precedence over the mask)
  softmax over the kept keys plus the sink logits softmax_aux[h, :] (sinks take
  probability mass and contribute no value); a query row that keeps no key and has no
  sink returns zeros instead of NaN.

dtype (default: the query's dtype) is the matmul input dtype; softmax_dtype (default
float32) the dtype of logits and softmax. Dropout is not part of an AOT artifact: a
serving kernel is deterministic.
"""
from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg

from ejaot_kernels._shared.statics import norm_bool, norm_positive_float, norm_scale, norm_window

from .statics import check_dims, norm_dtype, pack_outputs, prepare_call

SPEC = KernelSpec(
    name="attention",
    package=__name__,
    dims=("batch", "seq", "kv_seq", "q_heads", "kv_heads", "head_dim", "v_head_dim", "num_sinks"),
    dim_defaults={"kv_seq": "seq", "kv_heads": "q_heads", "v_head_dim": "head_dim", "num_sinks": 1},
    inputs=(
        ArrayArg("query", ("batch", "seq", "q_heads", "head_dim")),
        ArrayArg("key", ("batch", "kv_seq", "kv_heads", "head_dim")),
        ArrayArg("value", ("batch", "kv_seq", "kv_heads", "v_head_dim")),
        ArrayArg("attention_mask", ("batch", 1, "seq", "kv_seq"), dtype="bool", optional=True, pad_value=False),
        ArrayArg("bias", ("batch", "q_heads", "seq", "kv_seq"), optional=True),
        ArrayArg("softmax_aux", ("q_heads", "num_sinks"), optional=True),
    ),
    outputs=(
        ArrayArg("output", ("batch", "seq", "q_heads", "v_head_dim")),
        ArrayArg("weights", ("batch", "q_heads", "seq", "kv_seq")),
    ),
    statics=(
        StaticArg("causal", False, norm_bool("causal")),
        StaticArg("sliding_window", None, norm_window),
        StaticArg("logits_soft_cap", None, norm_positive_float("logits_soft_cap")),
        StaticArg("softmax_scale", None, norm_scale),
        StaticArg("dtype", None, norm_dtype("dtype")),
        StaticArg("softmax_dtype", None, norm_dtype("softmax_dtype")),
        StaticArg("return_weights", False, norm_bool("return_weights")),
    ),
    paddable=frozenset({"batch", "seq", "kv_seq"}),
    valid_length_dims=("seq", "kv_seq"),
    dtypes=("float32", "bfloat16", "float16"),
    backends={"xla": Backend("ejaot_kernels.attention.xla:attention_impl")},
    check=check_dims,
    pack_outputs=pack_outputs,
    prepare_call=prepare_call,
    call_kwargs=("init_bias",),
    example_inputs="ejaot_kernels.attention.examples:make_inputs",
    footprint=lambda d: d["batch"] * d["q_heads"] * d["seq"] * d["kv_seq"],
)


def attention(query, key, value, attention_mask=None, bias=None, softmax_aux=None, **static):
    """The public function, traced and compiled on first use of each shape (the JIT path
    that ejaot's store replaces)."""
    from ejaot.artifact.function import call_jit
    return call_jit(SPEC, (query, key, value, attention_mask, bias, softmax_aux), static)

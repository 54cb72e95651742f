"""`flash_mla_attention`: attention through shared latent projections (ejkernel's `flash_mla_attention`).

Layout heads-first: query, key, value [batch, heads, seq, head_dim]; latent_key,
latent_value [head_dim, latent_dim] (shared by every head); optional additive bias
[batch, heads, seq, seq].

Semantics:
  q_l = query @ latent_key      k_l = key @ latent_key      v_l = value @ latent_value
  logits = (q_l · k_l) * softmax_scale + bias, in float32
      (softmax_scale default 1/sqrt(latent_dim): the dot product is latent_dim wide)
  keep key j for query i when j < valid length; and j <= i if causal
  p = softmax over kept keys (a row with no kept key is zeros)
  output = (p @ v_l) @ latent_value^T   [batch, heads, seq, head_dim], query's dtype
Queries and keys share one length (as in ejkernel), so causal needs no alignment choice.

Backends: `triton` (GPU) and `pallas_tpu` (TPU) run flash attention's kernels in the latent
space (through_flash.py): memory linear in seq, differentiable through the flash kernels'
custom VJPs; `triton` takes latent_dim up to 128 and seq from 1024 (configs.py). `xla`
(every platform, any shape) materializes the scores: the reference, the fallback, and
the GPU backend for the buckets `triton` leaves.
"""
from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg

from ejaot_kernels._shared.statics import norm_bool, norm_scale
from .configs import tpu_candidates, tpu_heuristic, triton_candidates, triton_heuristic, triton_supports

SPEC = KernelSpec(
    name="flash_mla_attention",
    package=__name__,
    dims=("batch", "heads", "seq", "head_dim", "latent_dim"),
    inputs=(
        ArrayArg("query", ("batch", "heads", "seq", "head_dim")),
        ArrayArg("key", ("batch", "heads", "seq", "head_dim")),
        ArrayArg("value", ("batch", "heads", "seq", "head_dim")),
        ArrayArg("latent_key", ("head_dim", "latent_dim")),
        ArrayArg("latent_value", ("head_dim", "latent_dim")),
        ArrayArg("bias", ("batch", "heads", "seq", "seq"), optional=True),
    ),
    outputs=(ArrayArg("output", ("batch", "heads", "seq", "head_dim")),),
    statics=(
        StaticArg("causal", False, norm_bool("causal")),
        StaticArg("softmax_scale", None, norm_scale),
    ),
    paddable=frozenset({"batch", "seq"}),
    valid_length_dims=("seq",),
    dtypes=("float32", "bfloat16", "float16"),
    backends={
        "xla": Backend("ejaot_kernels.flash_mla_attention.xla:flash_mla_attention_impl"),
        "triton": Backend("ejaot_kernels.flash_mla_attention.triton_gpu:flash_mla_attention_impl",
                          triton_heuristic, triton_candidates, supports=triton_supports),
        "pallas_tpu": Backend("ejaot_kernels.flash_mla_attention.pallas_tpu:flash_mla_attention_impl",
                              tpu_heuristic, tpu_candidates),
    },
    example_inputs="ejaot_kernels.flash_mla_attention.examples:make_inputs",
    footprint=lambda d: d["batch"] * d["heads"] * d["seq"] * d["seq"],
)


def flash_mla_attention(query, key, value, latent_key, latent_value, bias=None, **static):
    """The public function (JIT path): compiled on first use of each shape."""
    from ejaot.artifact.function import call_jit
    return call_jit(SPEC, (query, key, value, latent_key, latent_value, bias), static)

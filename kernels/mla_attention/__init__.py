"""`mla_attention`: multi-head latent attention over a compressed KV cache (ejkernel's `mla_attention`).

Layout: query [batch, seq, q_heads, head_dim]; key_value [batch, kv_seq, kv_lora_rank]
(the compressed cache, shared by every head); w_kc, w_vc [kv_lora_rank, kv_heads,
head_dim]; optional rope parts b_q [batch, seq, rope_dim], b_k [batch, kv_seq, rope_dim]
(given together, shared by every head); optional cu_seqlens int32 [num_seqs + 1].

Semantics, with g(h) = h // (q_heads // kv_heads):
  key_h   = key_value @ w_kc[:, g(h)]        value_h = key_value @ w_vc[:, g(h)]
  logits  = (query_h · key_h + b_q · b_k) * softmax_scale, in float32
            (softmax_scale default 1/sqrt(head_dim + rope_dim), rope_dim 0 without b_q)
  keep key j for query i when: j < kv_len; j <= i + (kv_len - q_len) if causal (bottom-
      right aligned, as in `attention`); with cu_seqlens, i and j lie in the same packed
      sequence [cu[n], cu[n+1]) (then batch is 1 and seq == kv_seq; tokens outside
      [cu[0], cu[-1]) belong to no sequence)
  output_h = softmax(logits over kept keys) @ value_h, in the query's dtype; a query
      that keeps no key returns zeros.

The XLA backend computes either the naive form (decompress K/V) or the absorbed form
(attend in latent space); config "form" forces one, else the cheaper is chosen per shape
(configs.choose_form). The Pallas TPU backend is a flash kernel over the same two forms.
"""
from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg

from ejaot_kernels._shared.statics import norm_bool, norm_scale
from .configs import (check_dims, choose_form, tpu_candidates, tpu_heuristic, triton_candidates,
                      triton_heuristic, xla_heuristic)
from .statics import prepare_call

SPEC = KernelSpec(
    name="mla_attention",
    package=__name__,
    dims=("batch", "seq", "kv_seq", "q_heads", "kv_heads", "head_dim", "kv_lora_rank", "rope_dim",
          "num_seqs_plus_one"),
    dim_defaults={"kv_seq": "seq", "kv_heads": "q_heads", "rope_dim": 64, "num_seqs_plus_one": 2},
    inputs=(
        ArrayArg("query", ("batch", "seq", "q_heads", "head_dim")),
        ArrayArg("key_value", ("batch", "kv_seq", "kv_lora_rank")),
        ArrayArg("w_kc", ("kv_lora_rank", "kv_heads", "head_dim")),
        ArrayArg("w_vc", ("kv_lora_rank", "kv_heads", "head_dim")),
        ArrayArg("b_q", ("batch", "seq", "rope_dim"), optional=True),
        ArrayArg("b_k", ("batch", "kv_seq", "rope_dim"), optional=True),
        ArrayArg("cu_seqlens", ("num_seqs_plus_one",), dtype="int32", optional=True),
    ),
    outputs=(ArrayArg("output", ("batch", "seq", "q_heads", "head_dim")),),
    statics=(
        StaticArg("softmax_scale", None, norm_scale),
        StaticArg("causal", False, norm_bool("causal")),
    ),
    paddable=frozenset({"batch", "seq", "kv_seq"}),
    valid_length_dims=("seq", "kv_seq"),
    dtypes=("float32", "bfloat16", "float16"),
    backends={
        "xla": Backend("ejaot_kernels.mla_attention.xla:mla_attention_impl", xla_heuristic),
        "triton": Backend("ejaot_kernels.mla_attention.triton_gpu:mla_attention_impl", triton_heuristic,
                          triton_candidates),
        "pallas_tpu": Backend("ejaot_kernels.mla_attention.pallas_tpu:mla_attention_impl",
                              tpu_heuristic, tpu_candidates),
    },
    check=check_dims,
    prepare_call=prepare_call,
    example_inputs="ejaot_kernels.mla_attention.examples:make_inputs",
    # the logits, or what the XLA form holds per key (it is the reference): the latent
    # cache (absorbed) or the decompressed K and V (naive), whichever is larger
    footprint=lambda d: d["batch"] * max(
        d["q_heads"] * d["seq"] * d["kv_seq"],
        d["kv_seq"] * (d["kv_lora_rank"] if choose_form(d) == "absorbed" else 2 * d["kv_heads"] * d["head_dim"])),
)


def mla_attention(query, key_value, w_kc, w_vc, b_q=None, b_k=None, cu_seqlens=None, **static):
    """The public function (JIT path): the platform's kernel, compiled on first use."""
    from ejaot.artifact.function import call_jit
    return call_jit(SPEC, (query, key_value, w_kc, w_vc, b_q, b_k, cu_seqlens), static)

"""`paged_mla_attention`: multi-head latent attention decode over a paged compressed KV
cache (ejkernel's latent attention, served as FlashMLA serves it: one query token per
sequence, the caches in fixed-size pages shared by every sequence).

Layout:
  query         [num_seqs, q_heads, head_dim]
  latent_cache  [total_pages, page_size, kv_lora_rank]   the compressed K/V (key_value)
  w_kc, w_vc    [kv_lora_rank, kv_heads, head_dim]
  context_lens  [num_seqs] int32: tokens in each sequence's cache
  block_tables  [num_seqs, max_blocks] int32: token t of sequence s lives in page
                block_tables[s, t // page_size], row t % page_size
  b_q           [num_seqs, rope_dim]                      optional, with rope_cache
  rope_cache    [total_pages, page_size, rope_dim]        (the rope keys, b_k)
  output        [num_seqs, q_heads, head_dim], the query's dtype

Semantics: mla_attention's (absorbed form) for one query per sequence at the last
position of its context: with g(h) = h // (q_heads // kv_heads),
  logits_h = (query_h @ w_kc[:, g(h)]^T · kv_t + b_q · b_k_t) * softmax_scale, in float32,
      over the tokens t < context_len (softmax_scale default 1/sqrt(head_dim + rope_dim),
      rope_dim 0 without b_q)
  output_h = softmax(logits_h) @ (kv_t @ w_vc[:, g(h)])
The tokens t attended to are page_attention's rule (without a window), the same on every
backend (XLA, Triton, Pallas TPU) and for a call padded into a larger bucket:
t < max(context_len, 0); t < max_blocks * page_size (a context longer than its block
table covers is clamped to the table); and its page p = block_tables[s, t // page_size]
in range, 0 <= p < total_pages. A token whose entry is out of range (negative, or >=
total_pages) is masked out: it contributes nothing, and neither latent_cache nor
rope_cache is read for it (never page 0 or the last page, which belong to other
sequences). A sequence with no attended token (context 0, a padded row, every page out
of range) outputs zeros, never NaN. Block-table entries past a context are never read
and cache rows past a context never reach the output, even when they hold NaN (stale or
never-written pages are harmless). The check costs a compare and a select per page (per
key on the Triton kernels), no device-to-host read.

Padding: num_seqs and max_blocks may be padded to a bucket (padded sequences get context
0, padded block-table columns hold -1, an out-of-range page, so a context longer than the
real table attends to the same tokens as without padding); no valid_lens are needed.

Backends: `triton` (NVIDIA GPUs: the mla_attention decode kernels reading pages through
the block table; kernels/_shared/mla_triton.py), `pallas_tpu` (TPUs: a Mosaic
kernel that DMAs only the pages each context needs; pallas_tpu.py) and `xla` (every
platform; the reference and the fallback).
"""
from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg

from ejaot_kernels._shared.statics import norm_scale
from .configs import check_dims, tpu_candidates, tpu_heuristic, triton_candidates, triton_heuristic
from .statics import prepare_call

SPEC = KernelSpec(
    name="paged_mla_attention",
    package=__name__,
    dims=("num_seqs", "q_heads", "kv_heads", "head_dim", "kv_lora_rank", "rope_dim", "total_pages",
          "page_size", "max_blocks"),
    dim_defaults={"kv_heads": "q_heads", "rope_dim": 64},
    inputs=(
        ArrayArg("query", ("num_seqs", "q_heads", "head_dim")),
        ArrayArg("latent_cache", ("total_pages", "page_size", "kv_lora_rank")),
        ArrayArg("w_kc", ("kv_lora_rank", "kv_heads", "head_dim")),
        ArrayArg("w_vc", ("kv_lora_rank", "kv_heads", "head_dim")),
        ArrayArg("context_lens", ("num_seqs",), dtype="int32", pad_value=0),
        ArrayArg("block_tables", ("num_seqs", "max_blocks"), dtype="int32", pad_value=-1),
        ArrayArg("b_q", ("num_seqs", "rope_dim"), optional=True),
        ArrayArg("rope_cache", ("total_pages", "page_size", "rope_dim"), optional=True),
    ),
    outputs=(ArrayArg("output", ("num_seqs", "q_heads", "head_dim")),),
    statics=(
        StaticArg("softmax_scale", None, norm_scale, "logit scale; none: 1/sqrt(head_dim + rope_dim), rope_dim 0 without b_q"),
    ),
    paddable=frozenset({"num_seqs", "max_blocks"}),
    valid_length_dims=(),
    dtypes=("float32", "bfloat16", "float16"),
    backends={
        "xla": Backend("ejaot_kernels.paged_mla_attention.xla:paged_mla_attention_impl"),
        "pallas_tpu": Backend("ejaot_kernels.paged_mla_attention.pallas_tpu:paged_mla_attention_impl",
                              tpu_heuristic, tpu_candidates),
        "triton": Backend("ejaot_kernels.paged_mla_attention.triton_gpu:paged_mla_attention_impl",
                          triton_heuristic, triton_candidates),
    },
    check=check_dims,
    prepare_call=prepare_call,
    example_inputs="ejaot_kernels.paged_mla_attention.examples:make_inputs",
    timing_inputs="ejaot_kernels.paged_mla_attention.examples:make_timing_inputs",
    # the latent cache itself, the gathered copy of its pages, or the logits
    footprint=lambda d: d["page_size"] * max(
        d["total_pages"] * d["kv_lora_rank"],
        d["num_seqs"] * d["max_blocks"] * max(d["kv_lora_rank"], d["q_heads"])),
)


def paged_mla_attention(query, latent_cache, w_kc, w_vc, context_lens, block_tables, b_q=None,
                        rope_cache=None, **static):
    """The public function (JIT path): the platform's kernel, compiled on first use."""
    from ejaot.artifact.function import call_jit
    return call_jit(SPEC, (query, latent_cache, w_kc, w_vc, context_lens, block_tables, b_q, rope_cache),
                    static)

"""`page_attention`: paged grouped-query attention for decoding (ejkernel's `page_attention`).

One query token per sequence attends over that sequence's KV cache, which lives in
fixed-size pages shared by every sequence:

  query        [num_seqs, q_heads, head_dim]
  key_cache    [kv_heads, total_pages, page_size, head_dim]   (value_cache alike)
  context_lens [num_seqs] int32: tokens in each sequence's cache
  block_tables [num_seqs, max_blocks] int32: token t of sequence s lives in page
               block_tables[s, t // page_size], row t % page_size
  output       [num_seqs, q_heads, head_dim], the query's dtype

Semantics: q head h reads kv head h // (q_heads // kv_heads) (GQA; MQA and MHA are the
extremes). Over the attended tokens of a sequence (below): logits = (q · k) * attn_scale,
with attn_scale defaulting to 1/sqrt(head_dim); then attn_logits_soft_cap *
tanh(logits / cap) when a cap is set; softmax in float32; output = softmax · v.

Attended tokens, the same on every backend (XLA, Triton, Pallas TPU) and for a call
padded into a larger bucket. With c = max(context_len, 0), token t of the sequence is
attended when all of:
  * t < c, and t >= c - sliding_window when a window is set (the window counts back from
    the given context length);
  * t < max_blocks * page_size: a context longer than its block table covers is clamped
    to the table (tokens past it are not attended);
  * its page p = block_tables[s, t // page_size] is in range, 0 <= p < total_pages. A
    token whose entry is out of range (negative, or >= total_pages) is masked out: it
    contributes nothing and no page is read for its key or value (never page 0 or the
    last page, which belong to other sequences).
A sequence with no attended token (context 0, a padded row, a window wholly past the
table, or every page out of range) outputs zeros, never NaN. Block-table entries outside
the attended tokens are never read for keys or values, so they may hold anything (stale or
uninitialized pages are harmless). Checking costs one compare and one select per page
(no device-to-host read).

Differences from ejkernel's interface:
  * attn_scale is applied by every backend. ejkernel's TPU kernel ignores it (leaving
    the caller to pre-scale the query); here the same call gives the same result on
    every platform.
  * max_context_len, num_splits, mask_value, pages_per_compute_block, megacore_mode and
    inline_seq_dim are accepted as call keywords and dropped: they are performance
    knobs (or unused by the TPU kernel), and which blocking/megacore split a TPU entry
    uses is its per-target config (see configs.py). Results do not depend on them.

Padding: num_seqs and max_blocks may be padded to a bucket. Padded sequences get context
length 0 (so zeros, sliced away) and padded block-table columns hold -1, an out-of-range
page: a context longer than the real table attends to the same tokens in the bucket as
without padding. No valid_lens are needed: context_lens already carries the real lengths.

Backends: `pallas_tpu` (TPU, Mosaic: pages DMA'd from HBM by block table, online softmax
over page blocks) and `xla` (every platform; the reference and the fallback).
"""
from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg

from ejaot_kernels._shared.statics import norm_positive_float
from .configs import check_dims, tpu_candidates, tpu_heuristic, triton_candidates, triton_heuristic
from .statics import EJKERNEL_CALL_KWARGS, norm_attn_scale, norm_sliding_window, prepare_call

SPEC = KernelSpec(
    name="page_attention",
    package=__name__,
    dims=("num_seqs", "q_heads", "kv_heads", "head_dim", "total_pages", "page_size", "max_blocks"),
    dim_defaults={"kv_heads": "q_heads"},
    inputs=(
        ArrayArg("query", ("num_seqs", "q_heads", "head_dim")),
        ArrayArg("key_cache", ("kv_heads", "total_pages", "page_size", "head_dim")),
        ArrayArg("value_cache", ("kv_heads", "total_pages", "page_size", "head_dim")),
        ArrayArg("context_lens", ("num_seqs",), dtype="int32", pad_value=0),
        ArrayArg("block_tables", ("num_seqs", "max_blocks"), dtype="int32", pad_value=-1),
    ),
    outputs=(ArrayArg("output", ("num_seqs", "q_heads", "head_dim")),),
    statics=(
        StaticArg("attn_scale", None, norm_attn_scale, "logit scale; none: 1/sqrt(head_dim)"),
        StaticArg("attn_logits_soft_cap", None, norm_positive_float("attn_logits_soft_cap"),
                  "cap * tanh(logits / cap) when set"),
        StaticArg("sliding_window", None, norm_sliding_window,
                  "attend only to the last W tokens of each context"),
    ),
    paddable=frozenset({"num_seqs", "max_blocks"}),
    valid_length_dims=(),
    dtypes=("float32", "bfloat16", "float16"),
    backends={
        "xla": Backend("ejaot_kernels.page_attention.xla:page_attention_impl"),
        "pallas_tpu": Backend("ejaot_kernels.page_attention.pallas_tpu:page_attention_impl",
                              tpu_heuristic, tpu_candidates),
        "triton": Backend("ejaot_kernels.page_attention.triton_gpu:page_attention_impl",
                          triton_heuristic, triton_candidates),
    },
    check=check_dims,
    prepare_call=prepare_call,
    call_kwargs=EJKERNEL_CALL_KWARGS,
    example_inputs="ejaot_kernels.page_attention.examples:make_inputs",
    timing_inputs="ejaot_kernels.page_attention.examples:make_timing_inputs",
    footprint=lambda d: d["num_seqs"] * d["q_heads"] * d["max_blocks"] * d["page_size"],
)


def page_attention(query, key_cache, value_cache, context_lens, block_tables, **kw):
    """The public function (JIT path): the platform's kernel, compiled on first use.
    Keywords: attn_scale, attn_logits_soft_cap, sliding_window, and ejkernel's
    scheduling knobs (accepted, ignored; see the module docstring)."""
    from ejaot.artifact.function import call_jit
    return call_jit(SPEC, (query, key_cache, value_cache, context_lens, block_tables), kw)

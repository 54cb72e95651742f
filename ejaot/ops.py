"""ejkernel's public functions, served from an ejaot store.

    import ejaot
    from ejaot import ops            # was: from ejkernel.modules import operations as ops
    ejaot.use("artifacts/cpu")       # or EJAOT_STORE=artifacts/cpu; neither: the JIT path
    out, weights = ops.attention(q, k, v, causal=True)

Each function keeps ejkernel's name, argument names and order, layouts, defaults and return
value, and dispatches through the process-wide store
chosen by `ejaot.use` (see ejaot.runtime.active): exact bucket, padded bucket, or the JIT
fallback, under jax.jit or eagerly. With no store they compile just in time, so the same
model code runs with or without a store.

Arguments that an ahead-of-time artifact cannot honour are never silently dropped:
  * dropout (dropout_prob > 0 with deterministic=False) and cfg: refused with a CallError;
  * platform="xla" / "triton" / "pallas": honoured by the JIT path with that backend;
  * flash_attention's attention_mask and softmax_aux: served by the `attention` kernel
    (the flash kernel has neither); cum_seqlens_q/k and SegmentIds: turned into segment ids;
  * BlockSizes and page_attention's scheduling knobs: tile sizes come from the store's
    tuned configs; results do not depend on them, and a BlockSizes is logged once.
"""
from __future__ import annotations

import logging

import jax.numpy as jnp
from jax import lax

from .backends import by_call_name
from .errors import CallError
from .spec.registry import get_kernel
from .runtime.active import active
from .artifact.function import call_jit
from .targets import lowering_target
# ejkernel's SegmentIds and BlockSizes: the flash kernel's own (BlockSizes' tiles are the
# Pallas TPU kernel's; an ejaot entry's tiles are its tuned config)
from ejaot_kernels.flash_attention.tpu_blocks import BlockSizes, SegmentIds

log = logging.getLogger("ejaot")



def _dispatch(kernel: str, arrays: dict, static: dict, platform=None):
    """One kernel call: the store when one is in use, else (or with an explicit platform)
    the JIT path."""
    spec = get_kernel(kernel)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    target = lowering_target()
    if target is not None:            # inside a step being lowered for a target
        from .build.lower import call_inlined
        return call_inlined(spec, tuple(arrays.get(n) for n in spec.input_names), static, target)
    if platform not in (None, "auto"):
        names = by_call_name()
        backend = names.get(platform)
        if backend is None or backend not in spec.backends:
            have = sorted(k for k, v in names.items() if v in spec.backends)
            raise CallError(f"{kernel}: platform={platform!r} is not available for this kernel; "
                            f"choose one of {have}, 'auto' or None")
        positional = tuple(arrays.get(n) for n in spec.input_names)
        return call_jit(spec, positional, static, backend=backend)
    bundle = active()
    if bundle is None:
        return call_jit(spec, tuple(arrays.get(n) for n in spec.input_names), static)
    return bundle.call(kernel, **arrays, **static)


def _refuse_cfg(kernel: str, cfg):
    if cfg is not None:
        raise CallError(f"{kernel}: cfg is not supported: ejaot serves the config each entry was "
                        "built (and tuned) with; rebuild with another config, or pass "
                        "platform=... to run the JIT path")


def _refuse_dropout(kernel: str, dropout_prob, active_dropout: bool):
    if active_dropout and dropout_prob:
        raise CallError(f"{kernel}: dropout_prob={dropout_prob} with dropout enabled is not "
                        "supported: ejaot serves deterministic inference kernels")


def _query_dtype_or_none(dtype, query):
    """ejkernel's `dtype` as the kernel's static: None when it is the query's own dtype, so
    such a call shares the entries built without it."""
    if dtype is None:
        return None
    name = jnp.dtype(dtype).name
    return None if name == jnp.dtype(query.dtype).name else name


def attention(query, key, value, attention_mask=None, bias=None, init_bias=None,
              deterministic: bool = True, dropout_rng=None, softmax_aux=None,
              softmax_scale: float | None = None, logits_soft_cap: float | None = None,
              dtype=jnp.bfloat16, softmax_dtype=None, dropout_prob: float = 0.0,
              causal: bool = False, sliding_window: int | tuple[int, int] | None = None):
    """ejkernel's `attention`: returns (outputs [batch, seq, q_heads, v_head_dim],
    weights [batch, q_heads, seq, kv_len])."""
    _refuse_dropout("attention", dropout_prob, not deterministic)
    if init_bias is not None and bias is None and attention_mask is None:
        bias = init_bias()
    return _dispatch("attention",
                     dict(query=query, key=key, value=value, attention_mask=attention_mask,
                          bias=bias, softmax_aux=softmax_aux),
                     dict(softmax_scale=softmax_scale, logits_soft_cap=logits_soft_cap,
                          dtype=_query_dtype_or_none(dtype, query), softmax_dtype=softmax_dtype,
                          causal=causal, sliding_window=sliding_window, return_weights=True))


_logged_block_sizes = False


def flash_attention(query, key, value, attention_mask=None, bias=None,
                    softmax_scale: float | None = None, dropout_prob: float = 0.0,
                    causal: bool = False, dropout_seed: int | None = None, cum_seqlens_q=None,
                    cum_seqlens_k=None, sliding_window: int | tuple[int, int] | None = None,
                    logits_soft_cap: float | None = None, softmax_aux=None,
                    normalize_output: bool = True, precision=lax.Precision.DEFAULT,
                    logits_dtype=jnp.float32, platform=None, *, q_segment_ids=None,
                    kv_segment_ids=None, segment_ids: SegmentIds | None = None,
                    block_sizes: BlockSizes | None = None, cfg=None):
    """ejkernel's `flash_attention`: [batch, seq, heads, head_dim] in and out."""
    global _logged_block_sizes
    _refuse_cfg("flash_attention", cfg)
    _refuse_dropout("flash_attention", dropout_prob, True)
    if not normalize_output:
        raise CallError("flash_attention: normalize_output=False is not supported")
    if precision not in (None, lax.Precision.DEFAULT, "default"):
        raise CallError(f"flash_attention: precision={precision!r} is not supported: the kernels "
                        "multiply in the input dtype and accumulate in float32")
    if logits_dtype is not None and jnp.dtype(logits_dtype) != jnp.float32:
        raise CallError(f"flash_attention: logits_dtype={logits_dtype!r} is not supported (float32)")
    if block_sizes is not None and not _logged_block_sizes:
        _logged_block_sizes = True
        log.info("flash_attention: block_sizes given; ejaot uses each entry's tuned tile sizes "
                 "(results do not depend on them)")
    if segment_ids is not None:
        if q_segment_ids is not None or kv_segment_ids is not None:
            raise CallError("flash_attention: give segment_ids or q_segment_ids/kv_segment_ids, not both")
        q_segment_ids, kv_segment_ids = segment_ids.q, segment_ids.kv
    if cum_seqlens_q is not None or cum_seqlens_k is not None:
        if q_segment_ids is not None:
            raise CallError("flash_attention: give cum_seqlens_q/k or segment ids, not both")
        q_segment_ids = _segments_from_cu("cum_seqlens_q", cum_seqlens_q, query, -1)
        kv_segment_ids = _segments_from_cu("cum_seqlens_k", cum_seqlens_k if cum_seqlens_k is not None
                                           else cum_seqlens_q, key, -2)
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise CallError("flash_attention: give both q_segment_ids and kv_segment_ids, or neither")
    static = dict(softmax_scale=softmax_scale, causal=causal, sliding_window=sliding_window,
                  logits_soft_cap=logits_soft_cap)
    if attention_mask is not None or softmax_aux is not None:
        # the flash kernel has no boolean mask or sinks: the `attention` kernel has both
        if q_segment_ids is not None:
            same = q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]
            attention_mask = same if attention_mask is None else attention_mask & same
        return _dispatch("attention",
                         dict(query=query, key=key, value=value, attention_mask=attention_mask,
                              bias=bias, softmax_aux=softmax_aux), static, platform)
    return _dispatch("flash_attention",
                     dict(query=query, key=key, value=value, bias=bias,
                          q_segment_ids=_int32(q_segment_ids), kv_segment_ids=_int32(kv_segment_ids)),
                     static, platform)


def _int32(x):
    return x if x is None or x.dtype == jnp.int32 else jnp.asarray(x).astype(jnp.int32)


def _segments_from_cu(name, cu, x, outside: int):
    """Packed sequences [cu[n], cu[n+1]) along seq as segment ids (batch must be 1);
    tokens outside every sequence get `outside` (query and key use different values, so
    they never match each other)."""
    if cu is None:
        raise CallError(f"flash_attention: {name} is needed with the other cum_seqlens")
    if x.shape[0] != 1:
        raise CallError(f"flash_attention: {name} packs sequences along one row: batch must be 1, "
                        f"got {x.shape[0]}")
    pos = jnp.arange(x.shape[1], dtype=jnp.int32)
    seg = jnp.searchsorted(cu[1:], pos, side="right").astype(jnp.int32)
    inside = (pos >= cu[0]) & (pos < cu[-1])
    return jnp.where(inside, seg, outside)[None, :]


def mla_attention(query, key_value, w_kc, w_vc, b_q=None, b_k=None, cu_seqlens=None, /, *,
                  softmax_scale: float | None = None, causal: bool = False, platform=None, cfg=None):
    """ejkernel's `mla_attention`: [batch, seq, q_heads, head_dim] out."""
    _refuse_cfg("mla_attention", cfg)
    return _dispatch("mla_attention",
                     dict(query=query, key_value=key_value, w_kc=w_kc, w_vc=w_vc, b_q=b_q, b_k=b_k,
                          cu_seqlens=cu_seqlens),
                     dict(softmax_scale=softmax_scale, causal=causal), platform)


def flash_mla_attention(query, key, value, latent_key, latent_value, bias=None,
                        causal: bool = False, softmax_scale: float | None = None):
    """ejkernel's `flash_mla_attention`: heads-first [batch, heads, seq, head_dim]."""
    return _dispatch("flash_mla_attention",
                     dict(query=query, key=key, value=value, latent_key=latent_key,
                          latent_value=latent_value, bias=bias),
                     dict(causal=causal, softmax_scale=softmax_scale))


def page_attention(query, key_cache, value_cache, context_lens, block_tables,
                   attn_scale: float | None = None, max_context_len: int | None = None,
                   num_splits: int = 0, *, mask_value: float = -2.381976426469702e38,
                   attn_logits_soft_cap: float | None = None,
                   pages_per_compute_block: int | None = None, megacore_mode: str | None = None,
                   inline_seq_dim: bool = True, sliding_window: int | None = None):
    """ejkernel's `page_attention`: one query token per sequence over a paged KV cache.
    The scheduling knobs (max_context_len, num_splits, mask_value, pages_per_compute_block,
    megacore_mode, inline_seq_dim) do not change results; each entry's config sets them."""
    return _dispatch("page_attention",
                     dict(query=query, key_cache=key_cache, value_cache=value_cache,
                          context_lens=context_lens, block_tables=block_tables),
                     dict(attn_scale=attn_scale, attn_logits_soft_cap=attn_logits_soft_cap,
                          sliding_window=sliding_window))


def paged_mla_attention(query, latent_cache, w_kc, w_vc, context_lens, block_tables, b_q=None,
                        rope_cache=None, *, softmax_scale: float | None = None):
    """ejaot's MLA decode over a paged latent cache (not in ejkernel; see
    ejaot_kernels.paged_mla_attention)."""
    return _dispatch("paged_mla_attention",
                     dict(query=query, latent_cache=latent_cache, w_kc=w_kc, w_vc=w_vc,
                          context_lens=context_lens, block_tables=block_tables, b_q=b_q,
                          rope_cache=rope_cache),
                     dict(softmax_scale=softmax_scale))


__all__ = ["attention", "flash_attention", "mla_attention", "flash_mla_attention",
           "page_attention", "paged_mla_attention", "SegmentIds", "BlockSizes"]

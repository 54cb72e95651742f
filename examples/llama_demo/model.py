"""A Llama-3-style decoder served through ejaot.ops: RMSNorm, RoPE, grouped-query attention
(flash_attention in prefill, page_attention over a paged KV cache in decode), SwiGLU MLP.

Random weights from a fixed seed. `forward_reference` is the same model in plain JAX
(dense attention, no cache, no ejaot) for checking tokens and logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ejaot import ops


@dataclass(frozen=True)
class Config:
    vocab: int
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    dtype: str = "float32"


# Llama 3 8B's attention shape (32 query heads over 8 KV heads) at small widths for the CPU.
SMALL = Config(vocab=512, hidden=1024, layers=2, q_heads=32, kv_heads=8, head_dim=32, ffn=2048)
# Llama 3 8B's layer at its real size (two layers, a smaller vocabulary): the GPU demo.
LLAMA3_8B_LAYERS = Config(vocab=32000, hidden=4096, layers=2, q_heads=32, kv_heads=8, head_dim=128,
                          ffn=14336, dtype="bfloat16")
CONFIGS = {"small": SMALL, "8b-layers": LLAMA3_8B_LAYERS}


def param_shapes(cfg: Config) -> dict:
    """The parameter tree as jax.ShapeDtypeStruct leaves."""
    dt = jnp.dtype(cfg.dtype)

    def a(*shape):
        return jax.ShapeDtypeStruct(shape, dt)
    qd, kd, h = cfg.q_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.hidden
    layer = dict(attn_norm=a(h), wq=a(h, qd), wk=a(h, kd), wv=a(h, kd), wo=a(qd, h), mlp_norm=a(h),
                 w_gate=a(h, cfg.ffn), w_up=a(h, cfg.ffn), w_down=a(cfg.ffn, h))
    return dict(embed=a(cfg.vocab, h), layers=[dict(layer) for _ in range(cfg.layers)],
                final_norm=a(h), lm_head=a(h, cfg.vocab))


def init_params(cfg: Config, seed: int = 0) -> dict:
    """Random weights (jax.random, so the GPU config's billion parameters take a second, not
    a minute). The output head is scaled up so that greedy choices have clear margins (a
    random model's logits are otherwise nearly tied, and rounding would pick between them)."""
    shapes = param_shapes(cfg)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree_util.tree_leaves(shapes))))

    def init(path, leaf):
        name, key = jax.tree_util.keystr(path), next(keys)
        if leaf.ndim == 1:                       # norm weights
            x = 1.0 + 0.1 * jax.random.normal(key, leaf.shape, jnp.float32)
        elif "embed" in name:
            x = jax.random.normal(key, leaf.shape, jnp.float32)
        else:
            scale = 8.0 if "lm_head" in name else 1.0
            x = jax.random.normal(key, leaf.shape, jnp.float32) * (scale / np.sqrt(leaf.shape[0]))
        return x.astype(leaf.dtype)
    return jax.tree_util.tree_map_with_path(init, shapes)


def cache_shapes(cfg: Config, total_pages: int, page_size: int) -> list:
    """The paged KV cache: per layer (keys, values) [kv_heads, total_pages, page_size, head_dim]."""
    leaf = jax.ShapeDtypeStruct((cfg.kv_heads, total_pages, page_size, cfg.head_dim), jnp.dtype(cfg.dtype))
    return [(leaf, leaf) for _ in range(cfg.layers)]


def rms_norm(x, w, eps):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * w.astype(jnp.float32)).astype(x.dtype)


def rope(x, positions, theta):
    """x [..., heads, head_dim] rotated at positions [...] (rotate-half convention)."""
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[..., None, None] * freq
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def mlp(cfg, layer, x):
    h = rms_norm(x, layer["mlp_norm"], cfg.norm_eps)
    return (jax.nn.silu(h @ layer["w_gate"]) * (h @ layer["w_up"])) @ layer["w_down"]


def qkv(cfg, layer, x, positions):
    h = rms_norm(x, layer["attn_norm"], cfg.norm_eps)
    lead = x.shape[:-1]
    q = (h @ layer["wq"]).reshape(*lead, cfg.q_heads, cfg.head_dim)
    k = (h @ layer["wk"]).reshape(*lead, cfg.kv_heads, cfg.head_dim)
    v = (h @ layer["wv"]).reshape(*lead, cfg.kv_heads, cfg.head_dim)
    return rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta), v


def logits_of(cfg, params, x):
    # float32 products: bf16 logits would round near-tied choices apart
    h = rms_norm(x, params["final_norm"], cfg.norm_eps).astype(jnp.float32)
    return h @ params["lm_head"].astype(jnp.float32)


class LlamaModel:
    """Prefill and decode steps over a paged KV cache (see examples/serving.py)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.prefill = jax.jit(partial(prefill, cfg), donate_argnums=(1,))
        self.decode = jax.jit(partial(decode, cfg), donate_argnums=(1,))

    def init_cache(self, buckets):
        """Zeros, committed to the default device: a step that calls stored kernels returns
        committed arrays (as any jax.export'ed function does), and a cache fed back into
        the next call must look the same as the first one, or jax.jit compiles again."""
        shapes = cache_shapes(self.cfg, buckets.total_pages, buckets.page_size)
        device = jax.devices()[0]
        return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype, device=device), shapes)

    def forward_reference(self, params, tokens):
        return _forward_reference(self.cfg, params, tokens)


def _write_pages(cache_kv, new, pages, rows):
    """cache [kv_heads, pages, page_size, d] with new [..., kv_heads, d] at (pages, rows)."""
    moved = jnp.moveaxis(new, -2, 0)                      # [kv_heads, ..., d]
    return cache_kv.at[:, pages, rows].set(moved.astype(cache_kv.dtype))


def prefill(cfg, params, cache, tokens, lengths, tables):
    B, S = tokens.shape
    page_size = cache[0][0].shape[2]
    pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    real = pos < lengths[:, None]
    pages = jnp.where(real, jnp.take_along_axis(tables, pos // page_size, axis=1), 0)
    rows = pos % page_size
    x = params["embed"][tokens]
    new_cache = []
    for layer, (kc, vc) in zip(params["layers"], cache):
        q, k, v = qkv(cfg, layer, x, pos)
        # right-padded prompts: causal attention keeps every real query off the padding
        attn = ops.flash_attention(q, k, v, causal=True)
        x = x + attn.reshape(B, S, -1) @ layer["wo"]
        x = x + mlp(cfg, layer, x)
        new_cache.append((_write_pages(kc, k, pages, rows), _write_pages(vc, v, pages, rows)))
    last = x[jnp.arange(B), jnp.maximum(lengths - 1, 0)]
    return logits_of(cfg, params, last), new_cache


def decode(cfg, params, cache, tokens, positions, tables):
    N = tokens.shape[0]
    page_size = cache[0][0].shape[2]
    live = positions >= 0
    pos = jnp.maximum(positions, 0)
    pages = jnp.where(live, tables[jnp.arange(N), pos // page_size], 0)
    rows = pos % page_size
    context = jnp.where(live, pos + 1, 0).astype(jnp.int32)
    x = params["embed"][tokens]
    new_cache = []
    for layer, (kc, vc) in zip(params["layers"], cache):
        q, k, v = qkv(cfg, layer, x, pos)
        kc, vc = _write_pages(kc, k, pages, rows), _write_pages(vc, v, pages, rows)
        attn = ops.page_attention(q, kc, vc, context, tables)
        x = x + attn.reshape(N, -1) @ layer["wo"]
        x = x + mlp(cfg, layer, x)
        new_cache.append((kc, vc))
    return logits_of(cfg, params, x), new_cache


@partial(jax.jit, static_argnums=0)
def _forward_reference(cfg, params, tokens):
    """Logits [B, T, vocab] of the whole sequence: dense causal attention, no cache."""
    B, T = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    x = params["embed"][tokens]
    causal = jnp.tril(jnp.ones((T, T), bool))
    group = cfg.q_heads // cfg.kv_heads
    for layer in params["layers"]:
        q, k, v = qkv(cfg, layer, x, pos)
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
        s = jnp.where(causal, s * cfg.head_dim ** -0.5, -jnp.inf)
        p = jax.nn.softmax(s, axis=-1)
        attn = jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32)).astype(x.dtype)
        x = x + attn.reshape(B, T, -1) @ layer["wo"]
        x = x + mlp(cfg, layer, x)
    return logits_of(cfg, params, x)

"""A DeepSeek-V3-style decoder served through ejaot.ops: RMSNorm, multi-head latent attention
(mla_attention in prefill, paged_mla_attention over a paged latent cache in decode), SwiGLU
MLP.

Attention, per layer (DeepSeek-V3's MLA):
  queries   h -> [q_lora_rank -> RMSNorm ->] per head a "nope" part [heads, head_dim], plus
            a rope part [rope_dim] rotated by RoPE;
  keys and values  h -> a latent [kv_lora_rank] (RMSNorm'd) and one rope key [rope_dim]
            (RoPE'd) shared by every head; the cache holds only these two, per token;
            w_kc, w_vc [kv_lora_rank, heads, head_dim] decompress each head's key ("nope"
            part) and value from the latent;
  logits    (q_nope_h · k_nope_h + q_rope · k_rope) / sqrt(head_dim + rope_dim);
  output    the heads' values [heads * head_dim] -> wo -> hidden.
qk_nope_head_dim == v_head_dim == head_dim (w_kc and w_vc share one shape, as the kernels
take them).

Simplifications, against DeepSeek-V3:
  * the rope query is ONE vector of rope_dim per token, shared by every head (DeepSeek-V3
    projects one per head, [heads, rope_dim]): the kernels' b_q is [.., rope_dim], shared
    across heads (kernels/mla_attention, kernels/paged_mla_attention), as the rope key is;
  * plain RoPE (theta 10000, rotate-half), no YaRN scaling, so no mscale on the logits;
  * every layer's MLP is dense SwiGLU (DeepSeek-V3's first three layers; the rest are MoE).

Random weights from a fixed seed. `forward_reference` is the same model in plain JAX
(dense causal attention through the decompressed keys and values, no cache, no ejaot) for
checking tokens and logits.
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
    heads: int
    head_dim: int               # qk_nope_head_dim == v_head_dim
    kv_lora_rank: int
    rope_dim: int               # qk_rope_head_dim
    q_lora_rank: int            # 0: queries projected straight from the hidden state
    ffn: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dtype: str = "float32"


# DeepSeek-V3's attention structure (latent 4x head_dim, rope half of it, a query low-rank
# 3x the latent) at small widths for the CPU.
SMALL = Config(vocab=512, hidden=512, layers=2, heads=16, head_dim=32, kv_lora_rank=128, rope_dim=16,
               q_lora_rank=384, ffn=1024)
# DeepSeek-V3's attention at its real size (two dense layers, a smaller vocabulary): the GPU demo.
DEEPSEEK_V3_LAYERS = Config(vocab=32000, hidden=7168, layers=2, heads=128, head_dim=128,
                            kv_lora_rank=512, rope_dim=64, q_lora_rank=1536, ffn=18432,
                            dtype="bfloat16")
CONFIGS = {"small": SMALL, "v3-layers": DEEPSEEK_V3_LAYERS}


def param_shapes(cfg: Config) -> dict:
    """The parameter tree as jax.ShapeDtypeStruct leaves."""
    dt = jnp.dtype(cfg.dtype)

    def a(*shape):
        return jax.ShapeDtypeStruct(shape, dt)
    H, d, r, e, h = cfg.heads, cfg.head_dim, cfg.kv_lora_rank, cfg.rope_dim, cfg.hidden
    layer = dict(attn_norm=a(h))
    if cfg.q_lora_rank:
        layer.update(wq_a=a(h, cfg.q_lora_rank), q_norm=a(cfg.q_lora_rank),
                     wq_b=a(cfg.q_lora_rank, H * d + e))
    else:
        layer.update(wq=a(h, H * d + e))
    layer.update(wkv_a=a(h, r + e), kv_norm=a(r), w_kc=a(r, H, d), w_vc=a(r, H, d), wo=a(H * d, h),
                 mlp_norm=a(h), w_gate=a(h, cfg.ffn), w_up=a(h, cfg.ffn), w_down=a(cfg.ffn, h))
    return dict(embed=a(cfg.vocab, h), layers=[dict(layer) for _ in range(cfg.layers)],
                final_norm=a(h), lm_head=a(h, cfg.vocab))


def init_params(cfg: Config, seed: int = 0) -> dict:
    """Random weights (jax.random, so the v3-layers config's 1.6 billion parameters take a
    second, not a minute). The output head is scaled up so that greedy choices have clear
    margins (a random model's logits are otherwise nearly tied, and rounding would pick
    between them)."""
    shapes = param_shapes(cfg)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree_util.tree_leaves(shapes))))

    def init(path, leaf):
        name, key = jax.tree_util.keystr(path), next(keys)
        if leaf.ndim == 1:                       # norm weights
            x = 1.0 + 0.1 * jax.random.normal(key, leaf.shape, jnp.float32)
        elif "embed" in name:
            x = jax.random.normal(key, leaf.shape, jnp.float32)
        else:                                    # [n_in, *out]: w_kc and w_vc [r, heads, d] too
            scale = 8.0 if "lm_head" in name else 1.0
            x = jax.random.normal(key, leaf.shape, jnp.float32) * (scale / np.sqrt(leaf.shape[0]))
        return x.astype(leaf.dtype)
    return jax.tree_util.tree_map_with_path(init, shapes)


def cache_shapes(cfg: Config, total_pages: int, page_size: int) -> list:
    """The paged latent cache: per layer (latent_cache [total_pages, page_size, kv_lora_rank],
    rope_cache [total_pages, page_size, rope_dim])."""
    dt = jnp.dtype(cfg.dtype)
    latent = jax.ShapeDtypeStruct((total_pages, page_size, cfg.kv_lora_rank), dt)
    rope_ = jax.ShapeDtypeStruct((total_pages, page_size, cfg.rope_dim), dt)
    return [(latent, rope_) for _ in range(cfg.layers)]


def rms_norm(x, w, eps):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * w.astype(jnp.float32)).astype(x.dtype)


def rope(x, positions, theta):
    """x [..., rope_dim] rotated at positions [...] (rotate-half convention)."""
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[..., None] * freq
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def mlp(cfg, layer, x):
    h = rms_norm(x, layer["mlp_norm"], cfg.norm_eps)
    return (jax.nn.silu(h @ layer["w_gate"]) * (h @ layer["w_up"])) @ layer["w_down"]


def project(cfg, layer, x, positions):
    """The attention inputs of hidden states x [..., hidden] at positions [...]:
    q_nope [..., heads, head_dim], q_rope [..., rope_dim] (shared by every head),
    latent [..., kv_lora_rank] and k_rope [..., rope_dim] (what the cache holds)."""
    h = rms_norm(x, layer["attn_norm"], cfg.norm_eps)
    if cfg.q_lora_rank:
        q = rms_norm(h @ layer["wq_a"], layer["q_norm"], cfg.norm_eps) @ layer["wq_b"]
    else:
        q = h @ layer["wq"]
    nope = cfg.heads * cfg.head_dim
    q_nope = q[..., :nope].reshape(*x.shape[:-1], cfg.heads, cfg.head_dim)
    q_rope = rope(q[..., nope:], positions, cfg.rope_theta)
    kv = h @ layer["wkv_a"]
    latent = rms_norm(kv[..., :cfg.kv_lora_rank], layer["kv_norm"], cfg.norm_eps)
    k_rope = rope(kv[..., cfg.kv_lora_rank:], positions, cfg.rope_theta)
    return q_nope, q_rope, latent, k_rope


def logits_of(cfg, params, x):
    # float32 products: bf16 logits would round near-tied choices apart
    h = rms_norm(x, params["final_norm"], cfg.norm_eps).astype(jnp.float32)
    return h @ params["lm_head"].astype(jnp.float32)


class MLAModel:
    """Prefill and decode steps over a paged latent cache (see examples/serving.py)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.prefill = jax.jit(partial(prefill, cfg), donate_argnums=(1,))
        self.decode = jax.jit(partial(decode, cfg), donate_argnums=(1,))

    def init_cache(self, buckets):
        """Zeros (see cache_shapes), committed to the default device: a step that calls stored
        kernels returns committed arrays (as any jax.export'ed function does), and a cache fed
        back into the next call must look the same as the first one, or jax.jit compiles again."""
        shapes = cache_shapes(self.cfg, buckets.total_pages, buckets.page_size)
        device = jax.devices()[0]
        return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype, device=device), shapes)

    def forward_reference(self, params, tokens):
        return _forward_reference(self.cfg, params, tokens)


def _write_pages(cache, new, pages, rows):
    """cache [pages, page_size, width] with new [..., width] at (pages, rows) [...]."""
    return cache.at[pages, rows].set(new.astype(cache.dtype))


def prefill(cfg, params, cache, tokens, lengths, tables):
    B, S = tokens.shape
    page_size = cache[0][0].shape[1]
    pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    real = pos < lengths[:, None]
    pages = jnp.where(real, jnp.take_along_axis(tables, pos // page_size, axis=1), 0)
    rows = pos % page_size
    x = params["embed"][tokens]
    new_cache = []
    for layer, (lc, rc) in zip(params["layers"], cache):
        q_nope, q_rope, latent, k_rope = project(cfg, layer, x, pos)
        # right-padded prompts: causal attention keeps every real query off the padding
        attn = ops.mla_attention(q_nope, latent, layer["w_kc"], layer["w_vc"], q_rope, k_rope, causal=True)
        x = x + attn.reshape(B, S, -1) @ layer["wo"]
        x = x + mlp(cfg, layer, x)
        new_cache.append((_write_pages(lc, latent, pages, rows), _write_pages(rc, k_rope, pages, rows)))
    last = x[jnp.arange(B), jnp.maximum(lengths - 1, 0)]
    return logits_of(cfg, params, last), new_cache


def decode(cfg, params, cache, tokens, positions, tables):
    N = tokens.shape[0]
    page_size = cache[0][0].shape[1]
    live = positions >= 0
    pos = jnp.maximum(positions, 0)
    pages = jnp.where(live, tables[jnp.arange(N), pos // page_size], 0)
    rows = pos % page_size
    context = jnp.where(live, pos + 1, 0).astype(jnp.int32)
    x = params["embed"][tokens]
    new_cache = []
    for layer, (lc, rc) in zip(params["layers"], cache):
        q_nope, q_rope, latent, k_rope = project(cfg, layer, x, pos)
        lc, rc = _write_pages(lc, latent, pages, rows), _write_pages(rc, k_rope, pages, rows)
        attn = ops.paged_mla_attention(q_nope, lc, layer["w_kc"], layer["w_vc"], context, tables,
                                       q_rope, rc)
        x = x + attn.reshape(N, -1) @ layer["wo"]
        x = x + mlp(cfg, layer, x)
        new_cache.append((lc, rc))
    return logits_of(cfg, params, x), new_cache


@partial(jax.jit, static_argnums=0)
def _forward_reference(cfg, params, tokens):
    """Logits [B, T, vocab] of the whole sequence: dense causal attention over the
    decompressed keys and values, no cache."""
    B, T = tokens.shape
    f32 = jnp.float32
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    x = params["embed"][tokens]
    causal = jnp.tril(jnp.ones((T, T), bool))
    scale = (cfg.head_dim + cfg.rope_dim) ** -0.5
    for layer in params["layers"]:
        q_nope, q_rope, latent, k_rope = project(cfg, layer, x, pos)
        k_nope = jnp.einsum("btr,rhd->bthd", latent.astype(f32), layer["w_kc"].astype(f32))
        v = jnp.einsum("btr,rhd->bthd", latent.astype(f32), layer["w_vc"].astype(f32))
        s = jnp.einsum("bqhd,bkhd->bhqk", q_nope.astype(f32), k_nope)
        s = s + jnp.einsum("bqe,bke->bqk", q_rope.astype(f32), k_rope.astype(f32))[:, None]
        s = jnp.where(causal, s * scale, -jnp.inf)
        p = jax.nn.softmax(s, axis=-1)
        attn = jnp.einsum("bhqk,bkhd->bqhd", p, v).astype(x.dtype)
        x = x + attn.reshape(B, T, -1) @ layer["wo"]
        x = x + mlp(cfg, layer, x)
    return logits_of(cfg, params, x)

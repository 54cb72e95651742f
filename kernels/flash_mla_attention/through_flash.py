"""`flash_mla_attention` as flash attention in the latent space: the kernel backends.

  q_l, k_l, v_l = query, key, value @ latent_key / latent_key / latent_value   (XLA matmuls)
  out_l         = flash attention over (q_l, k_l, v_l), head dim latent_dim     (the kernel)
  output        = out_l @ latent_value^T                                       (XLA matmul)

No score matrix is ever materialized: memory is linear in seq (the projected q/k/v and
out_l, [batch, seq, heads, latent_dim] each), where the XLA backend's grows with seq².
Projecting once per token costs seq·head_dim·latent_dim per tensor; projecting keys on the
fly inside the kernel would redo it for every query block (head_dim/block_m more FLOPs
than the attention itself at long seq), and reading k_l costs the kernel what reading k
would. The flash kernel's custom VJP is the attention's backward; the projections are
differentiated by XLA, so latent_key and latent_value get their gradients too.

The flash kernels take the public [batch, seq, heads, dim] layout and go heads-first
inside: the projections' transposes and theirs are adjacent, and XLA cancels them."""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def latent_flash(flash_impl, padded_latent_dim=lambda n: n):
    """The flash_mla_attention implementation that runs `flash_impl` (a flash_attention
    backend's implementation) in the latent space, at the latent dim padded_latent_dim(L)."""

    def impl(inputs, valid_lens, *, config, causal, softmax_scale):
        q, k, v = inputs["query"], inputs["key"], inputs["value"]
        lk, lv, bias = inputs["latent_key"], inputs["latent_value"], inputs.get("bias")
        cdt = q.dtype
        latent = lk.shape[1]
        width = padded_latent_dim(latent)
        if width is None:
            raise ValueError(f"flash_mla_attention: latent_dim={latent} is wider than this "
                             "backend's flash kernel tiles; the xla backend runs it")
        scale = float(latent ** -0.5 if softmax_scale is None else softmax_scale)
        # float32 callers get float32 products (XLA would round them to bf16/tf32 otherwise)
        precision = jax.lax.Precision.HIGHEST if cdt == F32 else None
        pad = [(0, 0), (0, width - latent)]
        lk = jnp.pad(lk.astype(cdt), pad)
        lv = jnp.pad(lv.astype(cdt), pad)

        def project(x, w):   # heads-first product, then the flash layout (XLA:CPU cannot
            # run this bf16 dot with the transposed output; elsewhere the transposes cancel)
            x_l = jnp.einsum("bhsd,dl->bhsl", x.astype(cdt), w, preferred_element_type=F32,
                             precision=precision)
            return x_l.astype(cdt).transpose(0, 2, 1, 3)
        n = jnp.asarray(valid_lens, jnp.int32).reshape(1)
        flash_inputs = {"query": project(q, lk), "key": project(k, lk), "value": project(v, lv)}
        if bias is not None:
            flash_inputs["bias"] = bias
        (out_l,) = flash_impl(flash_inputs, jnp.concatenate([n, n]), config=config, causal=causal,
                              sliding_window=None, logits_soft_cap=None, softmax_scale=scale)
        out = jnp.einsum("bshl,dl->bhsd", out_l, lv.astype(out_l.dtype), preferred_element_type=F32,
                         precision=precision)
        return (out.astype(cdt),)
    return impl

"""`mla_attention` in Triton (through jax-triton): the absorbed (latent-space) decode path
for NVIDIA GPUs.

Decode (few queries over a long cache) runs the absorbed form (configs.choose_form): the
query projection into the latent space (_shared/mla_projections.py), the decode kernels of
the shared Triton MLA library (_shared/mla_triton.py, which paged_mla_attention runs too:
kernels, masks and measurements are described there), and the output projection.

Delegated to the XLA backend (kernels/mla_attention/xla.py), by design:
  * the naive form (prefill, s close to kv_seq): decompressing K/V is amortized over
    many queries and the work is dense GEMMs plus head_dim-wide attention, which XLA's
    cuBLAS/cuDNN paths already run near the tensor-core roofline; the memory-bound win
    this backend exists for is decode's;
  * cu_seqlens (packed varlen prefill, batch 1, seq == kv_seq): a prefill layout.

Only importable where triton is installed (build hosts and GPU hosts with jax-triton);
it touches no device at import. jax and jax_triton are imported on first call.
"""
from __future__ import annotations

from ejaot_kernels._shared.mla_projections import absorb_query, expand_output
from ejaot_kernels._shared.mla_triton import latent_attention, latent_dtype, make_static
from ejaot_kernels.triton_support import resolve_config

from .configs import triton_heuristic


def mla_attention_impl(inputs, valid_lens, *, config, causal, softmax_scale):
    import jax.numpy as jnp
    from .configs import choose_form, norm_form
    from .xla import default_scale, mla_attention_impl as xla_impl
    q, kv, w_kc, w_vc = inputs["query"], inputs["key_value"], inputs["w_kc"], inputs["w_vc"]
    b_q, b_k, cu = inputs.get("b_q"), inputs.get("b_k"), inputs.get("cu_seqlens")
    if (b_q is None) != (b_k is None):
        raise ValueError("mla_attention: give both b_q and b_k, or neither")
    b, s, hq, d = q.shape
    t, r = kv.shape[1], kv.shape[2]
    hk = w_kc.shape[1]
    dims = dict(batch=b, seq=s, kv_seq=t, q_heads=hq, kv_heads=hk, head_dim=d, kv_lora_rank=r,
                rope_dim=b_q.shape[-1] if b_q is not None else 0)
    form = norm_form(config) or choose_form(dims)
    if cu is not None or form == "naive":
        # Prefill layouts (packed sequences, or the naive form where decompression is
        # amortized): dense GEMMs + head_dim-wide attention, which XLA runs well. See the
        # module docstring.
        return xla_impl(inputs, valid_lens, config={"form": form}, causal=causal,
                        softmax_scale=softmax_scale)

    cfg = resolve_config("mla_attention", config, triton_heuristic, dims,
                         {"causal": causal, "softmax_scale": softmax_scale})
    st = make_static(cfg, dims, jnp.dtype(q.dtype).itemsize)
    scale = default_scale(d, dims["rope_dim"], softmax_scale)
    out_lat = latent_attention(st, absorb_query(q, w_kc), b_q, kv, b_k, valid_lens, scale=scale,
                               causal=causal, out_dtype=latent_dtype(q.dtype))
    return (expand_output(out_lat, w_vc, q.dtype),)

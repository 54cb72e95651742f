"""`flash_mla_attention` on the GPU: flash attention's Triton/Gluon kernels in the latent
space (through_flash.py), the latent dim zero-padded to the head dims they tile."""
from ejaot_kernels.flash_attention.triton_gpu import flash_attention_impl as _flash

from .configs import triton_latent_dim
from .through_flash import latent_flash


def _flash_with_triton_backward(inputs, valid_lens, *, config, **static):
    """flash_attention's implementation with its two Triton backward kernels unless the
    config asks otherwise: its one-kernel Gluon backward is not measured or verified in the
    latent space, and a config without the key (an empty one, a tuning candidate) would
    take flash_attention's heuristic's choice."""
    return _flash(inputs, valid_lens, config={"gluon_bwd": False, **(config or {})}, **static)


flash_mla_attention_impl = latent_flash(_flash_with_triton_backward, triton_latent_dim)

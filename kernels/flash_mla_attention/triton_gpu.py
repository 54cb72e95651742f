"""`flash_mla_attention` on the GPU: flash attention's Triton/Gluon kernels in the latent
space (through_flash.py), the latent dim zero-padded to the head dims they tile."""
from ejaot_kernels.flash_attention.triton_gpu import flash_attention_impl as _flash

from .configs import triton_latent_dim
from .through_flash import latent_flash

flash_mla_attention_impl = latent_flash(_flash, triton_latent_dim)

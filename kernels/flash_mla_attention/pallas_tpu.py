"""`flash_mla_attention` on the TPU: flash attention's Pallas/Mosaic kernels in the latent
space (through_flash.py)."""
from ejaot_kernels.flash_attention.pallas_tpu import flash_attention_impl as _flash

from .through_flash import latent_flash

flash_mla_attention_impl = latent_flash(_flash)

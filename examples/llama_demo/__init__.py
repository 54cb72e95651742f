"""A Llama-3-style decoder served from an ejaot store (see model.py and ../demo.py)."""
from pathlib import Path

from serving import Buckets

from .model import CONFIGS, LlamaModel, init_params

Model = LlamaModel

HERE = Path(__file__).parent
# The shape buckets each config is served with; manifest-<config>.toml builds exactly these.
BUCKETS = {
    "small": Buckets(prefill_batch=(1, 2, 4), prefill_seq=(32, 64, 128), decode_slots=(4, 8),
                     max_blocks=16, page_size=16, total_pages=160),
    "8b-layers": Buckets(prefill_batch=(1, 2, 4), prefill_seq=(128, 512, 2048), decode_slots=(8, 32),
                         max_blocks=160, page_size=16, total_pages=5200),
}


def manifest_path(config: str) -> Path:
    return HERE / f"manifest-{config}.toml"


__all__ = ["BUCKETS", "CONFIGS", "LlamaModel", "Model", "init_params", "manifest_path"]

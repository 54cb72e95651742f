"""A DeepSeek-V3-style MLA decoder served from an ejaot store (see model.py and ../demo.py)."""
from pathlib import Path

from serving import Buckets

from .model import CONFIGS, MLAModel, init_params

Model = MLAModel

HERE = Path(__file__).parent
# The shape buckets each config is served with; manifest-<config>.toml builds exactly these.
BUCKETS = {
    "small": Buckets(prefill_batch=(1, 2, 4), prefill_seq=(32, 64, 128), decode_slots=(4, 8),
                     max_blocks=16, page_size=16, total_pages=160),
    # 64-token pages (FlashMLA's); 40 pages = 2560 tokens a sequence; every slot's full table fits
    "v3-layers": Buckets(prefill_batch=(1, 2, 4), prefill_seq=(128, 512, 2048), decode_slots=(8, 32),
                         max_blocks=40, page_size=64, total_pages=1300),
}


def manifest_path(config: str) -> Path:
    return HERE / f"manifest-{config}.toml"


__all__ = ["BUCKETS", "CONFIGS", "MLAModel", "Model", "init_params", "manifest_path"]

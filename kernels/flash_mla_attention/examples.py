"""Random inputs for `flash_mla_attention` (numpy only)."""
from __future__ import annotations

import numpy as np


def make_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    b, h, s, d, lat = dims["batch"], dims["heads"], dims["seq"], dims["head_dim"], dims["latent_dim"]
    cast = lambda x: x.astype(dtype)
    # projections ~ N(0, 1/d) keep the latent q/k/v O(1), so logits stay O(1) at 1/sqrt(latent_dim)
    out = {
        "query": cast(rng.standard_normal((b, h, s, d))),
        "key": cast(rng.standard_normal((b, h, s, d))),
        "value": cast(rng.standard_normal((b, h, s, d))),
        "latent_key": cast(rng.standard_normal((d, lat)) / np.sqrt(d)),
        "latent_value": cast(rng.standard_normal((d, lat)) / np.sqrt(d)),
    }
    if "bias" in present:
        out["bias"] = cast(0.5 * rng.standard_normal((b, h, s, s)))
    return out

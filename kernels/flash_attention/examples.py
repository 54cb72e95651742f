"""Random inputs for `flash_attention` (numpy only)."""
from __future__ import annotations

import numpy as np


def make_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    b, s, t = dims["batch"], dims["seq"], dims["kv_seq"]
    hq, hk, d = dims["q_heads"], dims["kv_heads"], dims["head_dim"]
    out = {
        "query": rng.standard_normal((b, s, hq, d)).astype(dtype),
        "key": rng.standard_normal((b, t, hk, d)).astype(dtype),
        "value": rng.standard_normal((b, t, hk, d)).astype(dtype),
    }
    if "bias" in present:
        out["bias"] = (0.5 * rng.standard_normal((b, hq, s, t))).astype(dtype)
    if "q_segment_ids" in present or "kv_segment_ids" in present:
        # two packed segments per row, split at a random point, aligned bottom-right
        cut = rng.integers(1, t, size=b)
        kv = (np.arange(t)[None, :] >= cut[:, None]).astype(np.int32)
        out["kv_segment_ids"] = kv
        out["q_segment_ids"] = kv[:, t - s:] if s <= t else np.pad(kv, [(0, 0), (s - t, 0)])
    return out

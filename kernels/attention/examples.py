"""Random inputs for `attention` (numpy only): used by verify, tests and benchmarks."""
from __future__ import annotations

import numpy as np


def make_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    b, s, t = dims["batch"], dims["seq"], dims["kv_seq"]
    hq, hk, d, dv = dims["q_heads"], dims["kv_heads"], dims["head_dim"], dims["v_head_dim"]
    cast = lambda x: x.astype(dtype)
    out = {
        "query": cast(rng.standard_normal((b, s, hq, d))),
        "key": cast(rng.standard_normal((b, t, hk, d))),
        "value": cast(rng.standard_normal((b, t, hk, dv))),
    }
    if "attention_mask" in present:
        mask = rng.random((b, 1, s, t)) < 0.7
        mask[..., np.arange(s), np.minimum(np.arange(s) + (t - s), t - 1)] = True
        out["attention_mask"] = mask
    if "bias" in present:
        out["bias"] = cast(0.5 * rng.standard_normal((b, hq, s, t)))
    if "softmax_aux" in present:
        out["softmax_aux"] = cast(rng.standard_normal((hq, dims["num_sinks"])))
    return out

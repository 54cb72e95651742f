"""Random inputs for `mla_attention` (numpy only): used by verify, tests and benchmarks."""
from __future__ import annotations

import numpy as np


def make_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    b, s, t = dims["batch"], dims["seq"], dims["kv_seq"]
    hq, hk, d, r = dims["q_heads"], dims["kv_heads"], dims["head_dim"], dims["kv_lora_rank"]
    cast = lambda x: x.astype(dtype)
    # w ~ N(0, 1/r) makes decompressed keys and values O(1), so logits stay O(1) under the
    # default 1/sqrt(head_dim + rope_dim) scale.
    out = {
        "query": cast(rng.standard_normal((b, s, hq, d))),
        "key_value": cast(rng.standard_normal((b, t, r))),
        "w_kc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
        "w_vc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
    }
    if "b_q" in present or "b_k" in present:
        out["b_q"] = cast(rng.standard_normal((b, s, dims["rope_dim"])))
        out["b_k"] = cast(rng.standard_normal((b, t, dims["rope_dim"])))
    if "cu_seqlens" in present:
        # num_seqs packed sequences covering all seq tokens; cut points may repeat (empty sequences)
        n = dims["num_seqs_plus_one"] - 1
        cuts = np.sort(rng.integers(1, max(s, 2), size=max(n - 1, 0)))
        out["cu_seqlens"] = np.concatenate([[0], np.minimum(cuts, s), [s]]).astype(np.int32)
    return out

"""Random inputs for `paged_mla_attention` (numpy only): used by verify, tests and benchmarks."""
from __future__ import annotations

import numpy as np

from ejaot_kernels.page_attention.examples import context_lens_and_tables, with_full_contexts


def make_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    s, hq, hk, d, r = dims["num_seqs"], dims["q_heads"], dims["kv_heads"], dims["head_dim"], dims["kv_lora_rank"]
    pages, ps, mb = dims["total_pages"], dims["page_size"], dims["max_blocks"]
    cast = lambda x: x.astype(dtype)
    # w ~ N(0, 1/r) keeps decompressed keys and values O(1), as mla_attention's examples
    out = {
        "query": cast(rng.standard_normal((s, hq, d))),
        "latent_cache": cast(rng.standard_normal((pages, ps, r))),
        "w_kc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
        "w_vc": cast(rng.standard_normal((r, hk, d)) / np.sqrt(r)),
    }
    out["context_lens"], out["block_tables"] = context_lens_and_tables(s, pages, ps, mb, rng)
    if "b_q" in present or "rope_cache" in present:
        out["b_q"] = cast(rng.standard_normal((s, dims["rope_dim"])))
        out["rope_cache"] = cast(rng.standard_normal((pages, ps, dims["rope_dim"])))
    return out


def make_timing_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    return with_full_contexts(make_inputs(dims, dtype, present, static, rng), dims)

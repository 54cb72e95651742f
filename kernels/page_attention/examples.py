"""Random inputs for `page_attention` (numpy only): used by verify, tests and benchmarks."""
from __future__ import annotations

import numpy as np


def make_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    s, hq, hk, d = dims["num_seqs"], dims["q_heads"], dims["kv_heads"], dims["head_dim"]
    pages, ps, mb = dims["total_pages"], dims["page_size"], dims["max_blocks"]
    out = {
        "query": rng.standard_normal((s, hq, d)).astype(dtype),
        "key_cache": rng.standard_normal((hk, pages, ps, d)).astype(dtype),
        "value_cache": rng.standard_normal((hk, pages, ps, d)).astype(dtype),
    }
    out["context_lens"], out["block_tables"] = context_lens_and_tables(s, pages, ps, mb, rng)
    return out


def make_timing_inputs(dims, dtype, present, static, rng: np.random.Generator) -> dict:
    return with_full_contexts(make_inputs(dims, dtype, present, static, rng), dims)


def with_full_contexts(inputs: dict, dims) -> dict:
    """Every sequence at its table's full context: a bucket's most work, which tuning times
    (random lengths would rank configs on whatever work they happened to draw)."""
    inputs["context_lens"] = np.full(dims["num_seqs"], dims["max_blocks"] * dims["page_size"], np.int32)
    return inputs


def context_lens_and_tables(s, pages, ps, mb, rng: np.random.Generator):
    """Random context lengths in [1, mb * ps] (at least one with a partial last page) and
    block tables of distinct pages: across all sequences when the cache holds enough,
    else within each."""
    longest = mb * ps
    lens = rng.integers(1, longest + 1, size=s)
    if longest > 1 and (lens == longest).all():
        lens[rng.integers(s)] = rng.integers(1, longest)   # exercise a partial last page
    if s * mb <= pages:
        tables = rng.permutation(pages)[: s * mb].reshape(s, mb)
    elif mb <= pages:
        tables = np.stack([rng.permutation(pages)[:mb] for _ in range(s)])
    else:
        tables = rng.integers(0, pages, size=(s, mb))
    return lens.astype(np.int32), tables.astype(np.int32)

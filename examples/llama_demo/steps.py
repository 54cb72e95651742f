"""The model's prefill and decode steps as ejaot kernels: built ahead of time like any kernel
(`module = "llama_demo.steps"` in a manifest), served whole from the compiled tier.

Each step takes the parameter tree and the paged KV cache (trees whose shapes follow from
the model config and the cache size, checked leaf by leaf at call time), plus the bucketed
arrays; it returns the logits and the updated cache. The cache is donated: the compiled
step writes the new keys and values in place, and the caller uses the returned cache.

    bundle = ejaot.load(store)
    logits, cache = bundle.call("llama_demo.decode_step", params, cache, tokens, positions,
                                block_tables, model="small")
"""
from __future__ import annotations

import numpy as np

from ejaot.spec import ArrayArg, Backend, KernelSpec, StaticArg, TreeArg

from .model import CONFIGS


def _norm_model(v):
    if v not in CONFIGS:
        raise ValueError(f"model must be one of {sorted(CONFIGS)}, got {v!r}")
    return v


def _config(static, dtype):
    from dataclasses import replace
    return replace(CONFIGS[static["model"]], dtype=dtype)


def param_avals(dims, static, dtype):
    from .model import param_shapes
    return param_shapes(_config(static, dtype))


def cache_avals(dims, static, dtype):
    from .model import cache_shapes
    return cache_shapes(_config(static, dtype), dims["total_pages"], dims["page_size"])


_PARAMS = TreeArg("params", "llama_demo.steps:param_avals", dims_from=(("vocab", "['embed']", 0),))
_CACHE = TreeArg("cache", "llama_demo.steps:cache_avals", donate=True,
                 dims_from=(("total_pages", "[0][0]", 1), ("page_size", "[0][0]", 2)))
_STATICS = (StaticArg("model", "small", _norm_model, "a config of llama_demo.model.CONFIGS"),)

PREFILL_STEP = KernelSpec(
    name="llama_demo.prefill_step",
    package=__name__,
    dims=("batch", "seq", "max_blocks", "total_pages", "page_size", "vocab"),
    inputs=(_PARAMS, _CACHE,
            ArrayArg("tokens", ("batch", "seq"), dtype="int32"),
            ArrayArg("lengths", ("batch",), dtype="int32"),         # padded rows: length 0
            ArrayArg("block_tables", ("batch", "max_blocks"), dtype="int32")),
    outputs=(ArrayArg("logits", ("batch", "vocab"), dtype="float32"), _CACHE),
    statics=_STATICS,
    paddable=frozenset({"batch", "seq"}),
    dtypes=("float32", "bfloat16"),
    backends={"xla": Backend("llama_demo.steps:prefill_impl")},
    example_inputs="llama_demo.steps:make_inputs",
)

DECODE_STEP = KernelSpec(
    name="llama_demo.decode_step",
    package=__name__,
    dims=("slots", "max_blocks", "total_pages", "page_size", "vocab"),
    inputs=(_PARAMS, _CACHE,
            ArrayArg("tokens", ("slots",), dtype="int32"),
            ArrayArg("positions", ("slots",), dtype="int32", pad_value=-1),   # -1: idle slot
            ArrayArg("block_tables", ("slots", "max_blocks"), dtype="int32")),
    outputs=(ArrayArg("logits", ("slots", "vocab"), dtype="float32"), _CACHE),
    statics=_STATICS,
    paddable=frozenset({"slots"}),
    dtypes=("float32", "bfloat16"),
    backends={"xla": Backend("llama_demo.steps:decode_impl")},
    example_inputs="llama_demo.steps:make_inputs",
)


def prefill_impl(inputs, valid_lens, *, config, model):
    from .model import prefill
    cfg = _config({"model": model}, str(inputs["params"]["embed"].dtype))
    return prefill(cfg, inputs["params"], inputs["cache"], inputs["tokens"], inputs["lengths"],
                   inputs["block_tables"])


def decode_impl(inputs, valid_lens, *, config, model):
    from .model import decode
    cfg = _config({"model": model}, str(inputs["params"]["embed"].dtype))
    return decode(cfg, inputs["params"], inputs["cache"], inputs["tokens"], inputs["positions"],
                  inputs["block_tables"])


def make_inputs(dims, dtype, present, static, rng) -> dict:
    """Random weights and cache, live prompts and slots over distinct pages (for verify)."""
    import jax
    from .model import init_params
    cfg = _config(static, dtype)
    params = init_params(cfg, seed=int(rng.integers(1 << 30)))
    cache = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape, np.float32).astype(a.dtype),
                                   cache_avals(dims, static, dtype))
    rows = dims.get("batch", dims.get("slots"))
    pages = rng.permutation(np.arange(1, dims["total_pages"]))[:rows * dims["max_blocks"]]
    tables = pages.reshape(rows, dims["max_blocks"]).astype(np.int32)
    out = dict(params=params, cache=cache, block_tables=tables)
    if "seq" in dims:
        out["tokens"] = rng.integers(0, cfg.vocab, (rows, dims["seq"]), dtype=np.int32)
        out["lengths"] = rng.integers(1, dims["seq"] + 1, rows, dtype=np.int32)
    else:
        out["tokens"] = rng.integers(0, cfg.vocab, rows, dtype=np.int32)
        capacity = dims["max_blocks"] * dims["page_size"]
        out["positions"] = rng.integers(0, capacity, rows, dtype=np.int32)
    return out


SPECS = (PREFILL_STEP, DECODE_STEP)

"""examples/llama_demo served from a cpu store under jax.jit: continuous batching over a
paged KV cache gives the plain-JAX reference's greedy tokens and logits."""
import numpy as np
import pytest

from example_serving import build_small_store, check_kernels_served, serve_whole_steps


@pytest.fixture(scope="module")
def llama_store(tmp_path_factory):
    return build_small_store(tmp_path_factory, "llama_demo")


def test_llama_served_from_the_store_matches_the_reference(llama_store):
    check_kernels_served(llama_store, "llama_demo")


def test_llama_whole_steps_served_from_the_compiled_tier(llama_store):
    model, params, buckets = serve_whole_steps(llama_store, "llama_demo", check_logits=False)
    # the decode step updates the cache in place: the caller's cache is donated
    cache = model.init_cache(buckets)
    n = buckets.decode_slots[0]
    _, new = model.decode(params, cache, np.zeros(n, np.int32), np.full(n, -1, np.int32),
                          np.zeros((n, buckets.max_blocks), np.int32))
    assert cache[0][0].is_deleted() and not new[0][0].is_deleted()

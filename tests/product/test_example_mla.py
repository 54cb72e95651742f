"""examples/mla_demo served from a cpu store, under jax.jit and as whole stored steps:
continuous batching over a paged latent cache (mla_attention in prefill,
paged_mla_attention in decode) gives the plain-JAX reference's greedy tokens and logits."""
import jax
import numpy as np
import pytest

from example_serving import build_small_store, check_kernels_served, serve_whole_steps


@pytest.fixture(scope="module")
def mla_store(tmp_path_factory):
    return build_small_store(tmp_path_factory, "mla_demo")


def test_mla_served_from_the_store_matches_the_reference(mla_store):
    check_kernels_served(mla_store, "mla_demo")


def test_mla_whole_steps_served_from_the_compiled_tier(mla_store):
    model, params, buckets = serve_whole_steps(mla_store, "mla_demo", check_logits=True)
    # the decode step updates the cache in place: the caller's cache is donated
    cache = model.init_cache(buckets)
    n = buckets.decode_slots[0]
    _, new = model.decode(params, cache, np.zeros(n, np.int32), np.full(n, -1, np.int32),
                          np.zeros((n, buckets.max_blocks), np.int32))
    assert all(a.is_deleted() for a in jax.tree_util.tree_leaves(cache))
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(new))

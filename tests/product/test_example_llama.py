"""examples/llama_demo served from a cpu store under jax.jit: continuous batching over a
paged KV cache gives the plain-JAX reference's greedy tokens and logits."""
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "examples"))


@pytest.fixture(scope="module")
def llama_store(tmp_path_factory):
    from ejaot.build.builder import build
    from llama_demo import manifest_path
    out = tmp_path_factory.mktemp("llama") / "store"
    report = build(manifest_path("small"), "cpu", out, jobs=1)
    assert report.ok and len(report.built) == 22, report.summary()
    return out


def test_llama_served_from_the_store_matches_the_reference(llama_store):
    import ejaot
    from serving import Server, greedy_reference, make_requests
    from llama_demo import BUCKETS, CONFIGS, Model, init_params
    import demo
    cfg, buckets = CONFIGS["small"], BUCKETS["small"]
    bundle = ejaot.use(llama_store)
    try:
        model, params = Model(cfg), init_params(cfg, seed=1)
        requests = make_requests(cfg.vocab, [5, 40, 17, 100, 3], [6, 4, 9, 3, 12], seed=2)
        served = Server(model, params, buckets).run(requests)
        for r in requests:
            assert served[r.rid] == greedy_reference(model.forward_reference, params, r.prompt,
                                                     r.max_new_tokens), r.rid
        assert demo.logit_error(model, params, buckets, requests[:2]) < 1e-4
        st = bundle.stats()
        # every kernel call of every traced step was served by a stored entry
        assert st["calls"]["fallback"] == 0 and st["calls"]["exact"] > 0
        assert st["rejected"] == []
    finally:
        ejaot.use(None)


def test_llama_whole_steps_served_from_the_compiled_tier(llama_store):
    import ejaot
    from serving import Server, StoredSteps, greedy_reference, make_ready, make_requests
    from llama_demo import BUCKETS, CONFIGS, Model, init_params
    cfg, buckets = CONFIGS["small"], BUCKETS["small"]
    bundle = ejaot.load(llama_store)
    jitted, params = Model(cfg), init_params(cfg, seed=3)
    model = StoredSteps(jitted, bundle, "llama_demo", model="small")
    make_ready(model, params, buckets)
    loaded = bundle.stats()
    assert loaded["rejected"] == [] and loaded["calls"] == {"exact": 0, "padded": 0, "fallback": 0}
    requests = make_requests(cfg.vocab, [7, 60, 2, 33], [5, 8, 11, 4], seed=4)
    served = Server(model, params, buckets).run(requests)
    for r in requests:
        assert served[r.rid] == greedy_reference(jitted.forward_reference, params, r.prompt, r.max_new_tokens)
    st = bundle.stats()
    assert st["tiers"]["compiled"] > 0 and st["tiers"]["portable"] == 0 and st["calls"]["fallback"] == 0
    # the decode step updates the cache in place: the caller's cache is donated
    import numpy as np
    cache = model.init_cache(buckets)
    n = buckets.decode_slots[0]
    _, new = model.decode(params, cache, np.zeros(n, np.int32), np.full(n, -1, np.int32),
                          np.zeros((n, buckets.max_blocks), np.int32))
    assert cache[0][0].is_deleted() and not new[0][0].is_deleted()

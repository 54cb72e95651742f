"""examples/mla_demo served from a cpu store under jax.jit: continuous batching over a
paged latent cache (mla_attention in prefill, paged_mla_attention in decode) gives the
plain-JAX reference's greedy tokens and logits."""
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "examples"))


@pytest.fixture(scope="module")
def mla_store(tmp_path_factory):
    from ejaot.build import build
    from mla_demo import manifest_path
    out = tmp_path_factory.mktemp("mla") / "store"
    report = build(manifest_path("small"), "cpu", out, jobs=1)
    assert report.ok and len(report.built) == 11, report.summary()
    return out


def test_mla_served_from_the_store_matches_the_reference(mla_store):
    import ejaot
    from serving import Server, greedy_reference, make_requests
    from mla_demo import BUCKETS, CONFIGS, Model, init_params
    import demo
    cfg, buckets = CONFIGS["small"], BUCKETS["small"]
    bundle = ejaot.use(mla_store)
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

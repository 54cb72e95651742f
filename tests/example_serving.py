"""What the two example-model tests share: building an example's small cpu store, serving
it with its kernels inside jitted steps, and serving its whole stored steps; each checks
the greedy tokens against the model's plain-JAX reference."""
import importlib
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "examples"))


def build_small_store(tmp_path_factory, package: str):
    from ejaot.build.builder import build
    out = tmp_path_factory.mktemp(package) / "store"
    report = build(importlib.import_module(package).manifest_path("small"), "cpu", out, jobs=1)
    assert report.ok and len(report.built) == 22, report.summary()
    return out


def check_kernels_served(store, package: str):
    """The model's jitted steps with ejaot.use(store): every kernel call from the store."""
    import ejaot
    from serving import Server, greedy_reference, make_requests
    import demo
    example = importlib.import_module(package)
    cfg, buckets = example.CONFIGS["small"], example.BUCKETS["small"]
    bundle = ejaot.use(store)
    try:
        model, params = example.Model(cfg), example.init_params(cfg, seed=1)
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


def serve_whole_steps(store, package: str, check_logits: bool):
    """The model's whole steps from the store's compiled tier; returns (model, params,
    buckets) for the caller's checks of the decode step's donated cache."""
    import ejaot
    from serving import Server, StoredSteps, greedy_reference, make_ready, make_requests
    import demo
    example = importlib.import_module(package)
    cfg, buckets = example.CONFIGS["small"], example.BUCKETS["small"]
    bundle = ejaot.load(store)
    jitted, params = example.Model(cfg), example.init_params(cfg, seed=3)
    model = StoredSteps(jitted, bundle, package, model="small")
    make_ready(model, params, buckets)
    loaded = bundle.stats()
    assert loaded["rejected"] == [] and loaded["calls"] == {"exact": 0, "padded": 0, "fallback": 0}
    requests = make_requests(cfg.vocab, [7, 60, 2, 33], [5, 8, 11, 4], seed=4)
    served = Server(model, params, buckets).run(requests)
    for r in requests:
        assert served[r.rid] == greedy_reference(jitted.forward_reference, params, r.prompt,
                                                 r.max_new_tokens), r.rid
    if check_logits:
        assert demo.logit_error(model, params, buckets, requests[:2]) < 1e-4
    st = bundle.stats()
    assert st["tiers"]["compiled"] > 0 and st["tiers"]["portable"] == 0 and st["calls"]["fallback"] == 0
    return model, params, buckets

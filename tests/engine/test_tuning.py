"""Tuning plumbing on the CPU: candidates built into a store, measured, winners written,
then picked up by the planner, and ignored once stale."""
import dataclasses
import json

import pytest

from ejaot import tune
from ejaot.build import tuned as tuned_records
from ejaot.build.builder import build_entries
from ejaot.spec import Backend
from ejaot.build.manifest import load_manifest
from ejaot.build.plan import plan
from ejaot.spec.registry import get_kernel
from ejaot.targets import get_target


@pytest.fixture
def tunable_attention(monkeypatch, tmp_path):
    """attention's XLA backend given two (result-neutral) candidate configs."""
    spec = get_kernel("attention")
    backend = dataclasses.replace(spec.backends["xla"],
                                  heuristic_config=lambda d, s, t: {"variant": 0},
                                  config_candidates=lambda d, s, t: [{"variant": 1}, {"variant": 2}])
    patched = dataclasses.replace(spec, backends={"xla": backend})
    import ejaot.spec.registry as registry
    monkeypatch.setitem(registry._by_name, "attention", patched)
    monkeypatch.setitem(registry.all_kernels(), "attention", patched)
    monkeypatch.setattr(tuned_records, "tuned_path", lambda spec, target: tmp_path / "tuned" / f"{target.name}.json")
    tuned_records._read.cache_clear()
    yield patched
    tuned_records._read.cache_clear()


def test_candidates_measured_written_and_used(tunable_attention, small_manifest, tmp_path):
    target = get_target("cpu")
    manifest = load_manifest(small_manifest)
    entries, _ = plan(manifest, target)
    assert all(e.config_source == {"kind": "heuristic", "why": "no tuning record for this bucket"} for e in entries)
    cands = tune.candidate_entries(manifest, target)
    assert len(cands) == 2 * len(entries)
    report = build_entries(cands, target, tmp_path / "cands", jobs=1, supersede=False)
    assert report.ok and len(report.built) == 16
    result = tune.measure_store(tmp_path / "cands", echo=lambda *_: None, iters=2)
    assert len(result["winners"]) == len(entries)
    assert all(w["measured_us"] > 0 and w["config"]["variant"] in (1, 2) for w in result["winners"].values())
    [path] = tune.write_tuned(result, target, echo=lambda *_: None)
    db = json.loads(path.read_text())
    assert db["source_hash"] == tunable_attention.source_hash("xla") and db["device_kind"]

    tuned, _ = plan(manifest, target)
    assert all(e.config_source["kind"] == "tuned" and e.config["variant"] in (1, 2) for e in tuned)
    assert all(e.config_source["measured_us"] > 0 for e in tuned)
    assert {e.key for e in tuned}.isdisjoint({e.key for e in entries})   # the config is part of the key

    db["source_hash"] = "0" * 64                                         # the kernel changed since
    path.write_text(json.dumps(db))
    tuned_records._read.cache_clear()
    stale, _ = plan(manifest, target)
    assert all(e.config_source == {"kind": "heuristic", "why": "tuning record stale: kernel source changed"}
               for e in stale)


@pytest.mark.parametrize("kernel", ["page_attention", "paged_mla_attention"])
def test_paged_buckets_are_timed_at_full_contexts(kernel, monkeypatch, tmp_path):
    """Example inputs draw random context lengths (numerics see partial pages); tuning
    checks candidates on those and on the bucket's most work, every context full (the
    kernel's timing inputs), and times the latter."""
    import numpy as np
    import ejaot.verify as verify
    spec = get_kernel(kernel)
    dims = spec.resolve_dims(dict(num_seqs=4, max_blocks=8, page_size=16, total_pages=64, q_heads=4,
                                  kv_heads=2, head_dim=32, kv_lora_rank=32, rope_dim=16))
    rng = np.random.default_rng(0)
    example = spec.make_inputs(dims, "float32", (), {}, rng)
    timing = spec.make_inputs(dims, "float32", (), {}, rng, timing=True)
    assert (example["context_lens"] < 8 * 16).any()
    assert timing["context_lens"].tolist() == [8 * 16] * 4
    assert set(timing) == set(example)

    # measure_store asks for them: a store of one entry, its argument maker watched
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'format = 1\n[[kernel]]\nname = "{kernel}"\ndtypes = ["float32"]\n[kernel.dims]\n'
                        + "".join(f"{k} = {v}\n" for k, v in dims.items() if k in {d for a in spec.inputs if not a.optional for d in a.dims}))
    target = get_target("cpu")
    entries, _ = plan(load_manifest(manifest), target)
    assert build_entries(entries, target, tmp_path / "store", jobs=1).ok
    asked = []
    real = verify.entry_arguments
    monkeypatch.setattr(verify, "entry_arguments", lambda *a, **k: asked.append(k.get("timing")) or real(*a, **k))
    tune.measure_store(tmp_path / "store", echo=lambda *_: None, iters=1)
    # checked on both, timed on the full contexts: fresh sets of them, rotated so that the
    # calls in a row do not read one set from cache
    assert asked == [False, True] + [True] * (tune.MAX_TIMING_SETS - 1)


def test_candidates_are_timed_as_jitted_programs(tunable_attention, small_manifest, tmp_path, monkeypatch):
    """The portable tier (jax.jit over the exported program, what a server's jitted step
    inlines) is timed, not the compiled tier's eager call, over rotating argument sets."""
    from ejaot.runtime.entry import StoredEntry
    target = get_target("cpu")
    cands = tune.candidate_entries(load_manifest(small_manifest), target)
    assert build_entries(cands, target, tmp_path / "cands", jobs=1, supersede=False).ok
    monkeypatch.setattr(StoredEntry, "compiled", lambda self: pytest.fail("the compiled tier was timed"))
    seen = []
    real = tune._sample
    monkeypatch.setattr(tune, "_sample", lambda fn, sets, reps: seen.append(sets) or real(fn, sets, reps))
    result = tune.measure_store(tmp_path / "cands", echo=lambda *_: None, iters=1)
    assert len(result["winners"]) == len(cands) // 2
    assert seen and all(len(s) == tune.MAX_TIMING_SETS for s in seen)
    import numpy as np
    first, second = seen[0][0], seen[0][1]
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second))


def test_committed_tuning_records_match_their_kernel_sources():
    """A committed record whose kernel source changed since it was measured is ignored by the
    build (the heuristic serves instead), silently. Here it fails instead: re-tune on the
    target's device (`ejaot tune measure`), or delete the record to accept the heuristic."""
    from pathlib import Path
    from ejaot.spec.registry import all_kernels
    root = Path(__file__).resolve().parents[2] / "kernels"
    records = sorted(root.glob("*/tuned/*.json"))
    assert records, "no committed tuning records found"
    for path in records:
        db = json.loads(path.read_text())
        spec = all_kernels()[path.parent.parent.name]
        backends = {key.split("|")[0] for key in db["entries"]}
        stale = [b for b in backends if spec.source_hash(b) != db["source_hash"]]
        assert not stale, f"{path.relative_to(root.parent)}: measured against other {stale} sources"

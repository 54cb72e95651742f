"""The miss loop closes: calls the store does not cover are counted per call, suggested as
buckets rounded onto the store's grid (or to powers of two), and once those buckets are
built the misses disappear from the report and the calls are served by the store."""
import json
import os
import subprocess
import sys
import textwrap
import time
import tomllib

import numpy as np
from click.testing import CliRunner

import ejaot
from ejaot.cli import main
from conftest import REPO, qkv


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def misses_json(store, *extra):
    code, text = run("misses", store, "--json", *extra)
    assert code == 0, text
    return json.loads(text)


def test_counts_calls_not_signatures(store_copy, rng):
    bundle = ejaot.load(store_copy)
    for s in (40, 40, 40, 50):
        bundle.call("attention", *qkv(rng, 1, s), causal=True)
    bundle.misses.flush()
    report = misses_json(store_copy, "--round", "exact")
    (group,) = report["groups"]
    counts = {b["dims"]["seq"]: b["count"] for b in group["buckets"]}
    assert counts == {40: 3, 50: 1} and group["misses"] == 4


def test_counts_written_when_the_process_exits(store_copy):
    """A server that never flushes still leaves its counts: they are appended at exit."""
    script = textwrap.dedent(f"""
        import numpy as np, ejaot
        rng = np.random.default_rng(0)
        b = ejaot.load({str(store_copy)!r})
        q, k, v = (rng.standard_normal((1, 40, h, 16)).astype(np.float32) for h in (4, 2, 2))
        for _ in range(5):
            b.call("attention", q, k, v, causal=True)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    lines = [json.loads(x) for x in (store_copy / "misses.jsonl").read_text().splitlines()]
    assert sum(x["count"] for x in lines) == 5
    assert lines[0]["count"] == 1       # the first call is on disk at once; the rest at exit
    (group,) = misses_json(store_copy, "--round", "exact")["groups"]
    assert group["buckets"] == [{"dims": group["buckets"][0]["dims"], "count": 5}]


def test_rounding_onto_the_grid_and_to_powers_of_two(store_copy, rng):
    bundle = ejaot.load(store_copy)
    bundle.call("attention", *qkv(rng, 3, 24), causal=True)    # batch 3 > the store's 2: a miss
    bundle.call("attention", *qkv(rng, 1, 40), causal=True)    # seq 40 > the store's 32: a miss
    bundle.misses.flush()

    def suggested(how):
        (group,) = misses_json(store_copy, "--round", how)["groups"]
        return sorted((s["dims"]["batch"], s["dims"]["seq"], s["count"]) for s in group["suggested"])
    assert suggested("exact") == [(1, 40, 1), (3, 24, 1)]
    # grid: seq 24 onto the stored 32; past the grid (batch 3, seq 40) the next power of two
    assert suggested("grid") == [(1, 64, 1), (4, 32, 1)]
    assert suggested("pow2") == [(1, 64, 1), (4, 32, 1)]
    bundle.call("attention", *qkv(rng, 1, 60), causal=True)    # rounds to the same bucket as seq 40
    bundle.misses.flush()
    (group,) = misses_json(store_copy)["groups"]
    merged = [s for s in group["suggested"] if s["dims"]["seq"] == 64]
    assert len(merged) == 1 and merged[0]["count"] == 2 and len(merged[0]["observed"]) == 2


def test_building_the_suggestion_closes_the_loop(store_copy, rng, tmp_path):
    bundle = ejaot.load(store_copy)
    calls = [qkv(rng, 1, s) for s in (40, 50)]
    for q, k, v in calls:
        bundle.call("attention", q, k, v, causal=True)
    bundle.misses.flush()
    code, toml_text = run("misses", store_copy, "--toml")
    assert code == 0 and tomllib.loads(toml_text)["kernel"][0]["buckets"][0]["seq"] == 64
    manifest = tmp_path / "more.toml"
    manifest.write_text("format = 1\n" + toml_text)
    code, text = run("build", "--manifest", manifest, "--target", "cpu", "--out", store_copy, "--jobs", 1, "--quiet")
    assert code == 0, text

    report = misses_json(store_copy)
    assert report["groups"] == [] and report["covered"] == {"calls": 2, "shapes": 2}
    code, text = run("misses", store_copy)
    assert "2 misses of 2 shapes the store now covers" in text
    code, text = run("misses", store_copy, "--all")
    assert "covered now" in text and "seq=40" in text

    served = ejaot.load(store_copy)
    from reference import attention_reference
    for q, k, v in calls:
        out = served.call("attention", q, k, v, causal=True)
        np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True),
                                   rtol=2e-5, atol=2e-5)
    counts = served.stats()["calls"]
    assert counts.get("fallback", 0) == 0 and counts.get("padded", 0) == 2, counts


def test_text_view_shows_optional_inputs(store_copy, rng):
    """Two groups that differ only in their optional inputs print differently."""
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 40)
    bundle.call("attention", q, k, v, causal=True)
    bundle.call("attention", q, k, v, bias=rng.standard_normal((1, 4, 40, 40)).astype(np.float32), causal=True)
    bundle.misses.flush()
    code, text = run("misses", store_copy)
    headers = [x for x in text.splitlines() if x.startswith("attention")]
    assert len(headers) == 2 and len(set(headers)) == 2
    assert any("optional inputs bias" in h for h in headers)
    assert any("optional inputs none" in h for h in headers)


def test_since_and_clear(store_copy, rng):
    bundle = ejaot.load(store_copy)
    bundle.call("attention", *qkv(rng, 1, 40), causal=True)
    bundle.misses.flush()
    assert len(misses_json(store_copy, "--since", 3600)["groups"]) == 1
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 3600))
    assert misses_json(store_copy, "--since", future)["groups"] == []
    code, text = run("misses", store_copy, "--since", "yesterday")
    assert code == 2 and "--since" in text and "ISO 8601" in text

    code, text = run("misses", store_copy, "--clear")
    assert code == 0 and "seq=40" in text and "the miss log was emptied: 1 line taken" in text
    code, text = run("misses", store_copy)
    assert code == 0 and "no misses recorded" in text
    # the same process logs again into the fresh log (a new signature)
    bundle.call("attention", *qkv(rng, 1, 48), causal=True)
    assert len(misses_json(store_copy)["groups"]) == 1


def test_clear_leaves_a_log_it_cannot_read(store_copy, tmp_path, monkeypatch):
    """--clear of a log it refuses (too large; a symlink) exits 1 and deletes nothing."""
    from ejaot.runtime import misslog
    log = store_copy / "misses.jsonl"
    log.write_text('{"kernel": "attention", "dims": {}, "count": 1}\n' * 40)
    monkeypatch.setattr(misslog, "MAX_LOG_BYTES", 100)
    code, text = run("misses", store_copy, "--clear")
    assert code == 1 and "more than the 100 expected" in text
    assert log.read_text().count("\n") == 40 and not list((store_copy / "tmp").glob("misses*"))
    log.unlink()
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("kept\n")
    log.symlink_to(outside)
    code, text = run("misses", store_copy, "--clear")
    assert code == 1 and "not a regular file" in text
    assert log.is_symlink() and outside.read_text() == "kept\n"


def test_misses_of_a_missing_or_foreign_directory_exit_2(tmp_path):
    code, text = run("misses", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in text
    code, text = run("misses", tmp_path)
    assert code == 2 and "is not a store" in text
    code, text = run("misses", tmp_path, "--toml", "--json")
    assert code == 2

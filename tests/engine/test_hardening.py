"""Crash safety, concurrent builders, untrusted stores, version windows, load under load."""
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ejaot
from ejaot.build.builder import build
from ejaot.build.manifest import load_manifest
from ejaot.build.plan import plan
from ejaot.store.filestore import FileStore
from ejaot.store.format import encode_index
from ejaot.targets import get_target
from conftest import qkv
from reference import attention_reference

EJAOT = str(Path(sys.executable).parent / "ejaot")


def manifest(tmp_path, name, seqs, causal=True):
    p = tmp_path / f"{name}.toml"
    p.write_text(f"""format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
[kernel.dims]
batch = [1, 2]
seq = {list(seqs)}
q_heads = 2
kv_heads = 1
head_dim = 8
[kernel.static]
causal = {str(causal).lower()}
""")
    return p


def planned_keys(path):
    return {e.key for e in plan(load_manifest(path), get_target("cpu"))[0]}


def serve_and_check(store, rng, seqs=(8, 13, 40)):
    bundle = ejaot.load(store, miss_log=False)
    for s in seqs:
        q, k, v = qkv(rng, 1, s, hq=2, hk=1, d=8)
        out = bundle.call("attention", q, k, v, causal=True)
        np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)
    return bundle


# -- crash safety -------------------------------------------------------------------------

@pytest.mark.parametrize("jobs", [1, 2])
def test_sigkilled_builds_leave_a_serving_store_and_resume(tmp_path, rng, jobs):
    m = manifest(tmp_path, "m", [8, 16, 24, 32, 40, 48])
    store = tmp_path / "store"
    want = planned_keys(m)
    rnd = random.Random(int(rng.integers(1 << 30)))
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([EJAOT, "build", "--manifest", str(m), "--out", str(store), "--jobs", str(jobs),
                                 "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        time.sleep(rnd.uniform(1.0, 4.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)      # the build and its workers
            kills += 1
        proc.wait()
        if (store / "index.msgpack").exists():
            serve_and_check(store, rng)
            assert set(FileStore(store).read_index()["entries"]) <= want
    done = set(FileStore(store).read_index()["entries"]) if (store / "index.msgpack").exists() else set()
    report = build(m, "cpu", store, jobs=1)
    assert report.ok and len(report.reused) == len(done) and len(report.built) == len(want) - len(done)
    assert set(FileStore(store).read_index()["entries"]) == want
    serve_and_check(store, rng)
    print(f"{kills} kill points tried, {len(done)} of {len(want)} entries survived them")


# -- concurrent builders ------------------------------------------------------------------

def test_four_concurrent_builders_and_readers(tmp_path, rng):
    store = tmp_path / "store"
    seqsets = [[8, 16], [16, 24], [8, 24, 32], [8, 16, 24, 32]]
    paths = [manifest(tmp_path, f"m{i}", s) for i, s in enumerate(seqsets)]
    want = set().union(*(planned_keys(p) for p in paths))
    stop, errors, loads = threading.Event(), [], [0]

    def reader():
        local = np.random.default_rng(1)
        while not stop.is_set():
            try:
                if (store / "index.msgpack").exists():
                    serve_and_check(store, local, seqs=(8, 20))
                    loads[0] += 1
            except Exception as e:   # collected and asserted below
                errors.append(e)
            time.sleep(0.05)
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    procs = [subprocess.Popen([EJAOT, "build", "--manifest", str(p), "--out", str(store), "--jobs", "1", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}) for p in paths]
    outs = [p.communicate(timeout=600) for p in procs]
    stop.set()
    for t in threads:
        t.join()
    assert all(p.returncode == 0 for p in procs), outs
    assert not errors, errors[0]
    entries = FileStore(store).read_index()["entries"]
    assert set(entries) == want                       # every entry exactly once (keys are unique)
    assert subprocess.run([EJAOT, "verify", str(store), "--no-numerics"], capture_output=True).returncode == 0
    print(f"4 concurrent builders, {len(want)} entries, 2 reader threads, {loads[0]} loads meanwhile")


# -- untrusted stores ---------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite(store, edit):
    fs = FileStore(store)
    index = fs.read_index()
    for key, rec in index["entries"].items():
        edit(key, rec)
    fs.index_path.write_bytes(encode_index(index["target"], index["entries"]))


@pytest.mark.parametrize("where", ["executable", "exported", "index"])
def test_a_pickle_payload_never_runs(store_copy, rng, tmp_path, where):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker))
    fs = FileStore(store_copy)
    if where == "index":
        fs.index_path.write_bytes(payload)
    else:
        ref = fs.put_blob(payload)       # the attacker controls the index too
        _rewrite(store_copy, lambda k, r: r["payloads"].__setitem__(where, ref))
    bundle = ejaot.load(store_copy, eager=True)
    q, k, v = qkv(rng, 2, 16)
    out = bundle.call("attention", q, k, v, causal=True)
    np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)
    import jax   # under jit the portable tier is the one read
    out = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)
    assert not marker.exists()
    assert bundle.stats()["rejected"]


def test_signed_store_refuses_unsigned_tampered_and_foreign_entries(tmp_path, small_manifest, rng, monkeypatch):
    from ejaot.artifact.signing import generate_keypair
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    from ejaot.artifact.signing import Signer
    store = tmp_path / "signed"
    assert build(small_manifest, "cpu", store, jobs=1, signer=Signer.from_file(tmp_path / "k.pem")).ok
    bundle = ejaot.load(store, trusted_keys=[tmp_path / "k.pub"], eager=True)
    assert bundle.stats()["rejected"] == [] and len(bundle.entries) == 8
    assert len(ejaot.load(store, trusted_keys=[tmp_path / "other.pub"]).entries) == 0

    # tamper one record (point its compiled tier at other bytes): refused before any read
    tampered = tmp_path / "tampered"
    shutil.copytree(store, tampered)
    victim = sorted(FileStore(tampered).read_index()["entries"])[0]
    evil = FileStore(tampered).put_blob(b"not an executable")
    _rewrite(tampered, lambda k, r: k == victim and r["payloads"].__setitem__("executable", evil))
    from ejaot.artifact import codec
    decoded = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda raw, *a: decoded.append(raw) or real(raw, *a))
    b2 = ejaot.load(tampered, trusted_keys=[tmp_path / "k.pub"], eager=True)
    assert victim not in b2.entries and len(b2.entries) == 7
    assert b"not an executable" not in decoded
    [rej] = b2.stats()["rejected"]
    assert rej["entry"] == victim and "tampered" in rej["reason"]
    r = b2.stats()
    q, k, v = qkv(rng, 2, 32)
    out = b2.call("attention", q, k, v, causal=True)
    np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)

    # an unsigned store under trusted_keys: nothing is trusted, the fallback serves
    from conftest import SMALL_MANIFEST
    unsigned = tmp_path / "unsigned"
    assert build(small_manifest, "cpu", unsigned, jobs=1).ok
    b3 = ejaot.load(unsigned, trusted_keys=[tmp_path / "k.pub"])
    assert len(b3.entries) == 0 and all("unsigned" in x["reason"] for x in b3.stats()["rejected"])
    b3.call("attention", q, k, v, causal=True)
    assert b3.stats()["calls"]["fallback"] == 1


def test_symlinked_index_is_refused(store_copy, tmp_path, rng):
    real = tmp_path / "elsewhere.msgpack"
    shutil.move(store_copy / "index.msgpack", real)
    (store_copy / "index.msgpack").symlink_to(real)
    bundle = ejaot.load(store_copy)
    assert "symlink" in bundle.stats()["store_problem"] or "outside" in bundle.stats()["store_problem"]
    q, k, v = qkv(rng, 1, 16)
    np.testing.assert_allclose(np.asarray(bundle.call("attention", q, k, v, causal=True)),
                               attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)


# -- version windows ----------------------------------------------------------------------

@pytest.mark.parametrize("change, tier_used, reason", [
    (lambda r: r["toolchain"].__setitem__("jax", "0.10.0"), "portable", "compiled with jax 0.10.0"),
    (lambda r: r["toolchain"].__setitem__("jaxlib", "0.12.0"), "portable", "compiled with jaxlib 0.12.0"),
    (lambda r: r["executable"].__setitem__("cpu_features", ["amx_tile", "avx512_fp16", "nonexistent"]),
     "portable", "CPU features this host lacks"),
    (lambda r: r["executable"].__setitem__("device_kind", "cpu-riscv64"), "portable", "compiled for cpu-riscv64"),
    (lambda r: (r["toolchain"].__setitem__("jax", "0.10.0"), r["exported"].__setitem__("calling_convention_version", 99)),
     "jit", "calling convention 99"),
    (lambda r: r.__setitem__("platform", "tpu"), "jit", "built for platform tpu"),
])
def test_version_windows(store_copy, rng, change, tier_used, reason):
    _rewrite(store_copy, lambda k, r: change(r))
    deserialized = []
    import jax
    real = jax.export.deserialize
    jax.export.deserialize = lambda b: deserialized.append(1) or real(b)
    try:
        bundle = ejaot.load(store_copy)
        q, k, v = qkv(rng, 2, 32)
        out = bundle.call("attention", q, k, v, causal=True)
    finally:
        jax.export.deserialize = real
    np.testing.assert_allclose(np.asarray(out), attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)
    s = bundle.stats()
    assert s["tiers"][tier_used] == 1
    assert any(reason in r["reason"] for r in s["rejected"]), s["rejected"]
    if tier_used == "jit":
        assert not deserialized          # refused from the index alone


def test_verify_prints_a_compatibility_report(store_copy):
    _rewrite(store_copy, lambda k, r: r["toolchain"].__setitem__("jax", "0.10.0"))
    r = subprocess.run([EJAOT, "verify", str(store_copy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert "host: jax 0.11.2" in r.stdout
    assert "compiled skipped (compiled with jax 0.10.0, this host has 0.11.2)" in r.stdout
    assert "portable usable" in r.stdout


# -- load under load ----------------------------------------------------------------------

def test_many_threads_through_one_bundle(store_copy, rng):
    seconds = float(os.environ.get("EJAOT_LOAD_SECONDS", "8"))
    bundle = ejaot.load(store_copy)
    cases = []
    for b, s in [(2, 32), (1, 16), (1, 21), (2, 9)] + [(1, s) for s in range(33, 60, 2)]:
        q, k, v = qkv(rng, b, s)
        cases.append(((q, k, v), attention_reference(q, k, v, causal=True)))
    for c, _ in cases:                       # compile the fallbacks once, outside the clock
        bundle.call("attention", *c, causal=True)
    errors, calls = [], [0]
    deadline = time.monotonic() + seconds

    def worker(seed):
        r = random.Random(seed)
        while time.monotonic() < deadline:
            c, want = r.choice(cases)
            try:
                out = bundle.call("attention", *c, causal=True)
                np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=2e-5)
                calls[0] += 1
            except Exception as e:   # collected and asserted below
                errors.append(e)
                return
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    lines = (store_copy / "misses.jsonl").read_text().splitlines()
    assert all(json.loads(x)["kernel"] == "attention" for x in lines)
    assert len(lines) == 14                   # one per uncovered signature, none torn
    s = bundle.stats()["calls"]
    assert s["exact"] > 0 and s["padded"] > 0 and s["fallback"] > 0
    print(f"32 threads, {seconds:.0f} s, {calls[0]} calls, no errors")


def test_gc_while_readers_are_active(store_copy, rng):
    fs = FileStore(store_copy)
    for i in range(20):
        fs.put_blob(f"orphan {i}".encode())
    stop, errors = threading.Event(), []

    def reader():
        local = np.random.default_rng(2)
        while not stop.is_set():
            try:
                serve_and_check(store_copy, local, seqs=(16, 11))
            except Exception as e:   # collected and asserted below
                errors.append(e)
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    results = [fs.collect_garbage(grace_seconds=0) for _ in range(5)]
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert results[0]["removed"] == 20 and results[-1]["removed"] == 0
    assert subprocess.run([EJAOT, "verify", str(store_copy), "--no-numerics"], capture_output=True).returncode == 0

"""Fuzzed corruption: many mutated copies of a built store. For each, ejaot.load + call
must not crash, must return the right answer (from another tier, another bucket or the
JIT fallback), and must report each problem once, with its cause.

EJAOT_FUZZ_MUTATIONS sets the count (CI: 300; `make fuzz`: 1000). The generator is
seeded (EJAOT_FUZZ_SEED), so a failure names the mutation that reproduces it.
"""
import os
import random
import shutil

import numpy as np
import pytest

import ejaot
from ejaot.build.builder import build
from ejaot.store.filestore import FileStore
from conftest import qkv
from reference import attention_reference

N = int(os.environ.get("EJAOT_FUZZ_MUTATIONS", "300"))
SEED = int(os.environ.get("EJAOT_FUZZ_SEED", "20261122"))

MANIFEST = """
format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
[kernel.dims]
batch = 1
seq = [8, 16]
q_heads = 2
kv_heads = 1
head_dim = 8
[kernel.static]
causal = true
"""
OTHER = MANIFEST.replace("causal = true", "causal = false")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "m.toml").write_text(MANIFEST)
    (root / "o.toml").write_text(OTHER)
    assert build(root / "m.toml", "cpu", root / "good", jobs=1).ok
    assert build(root / "o.toml", "cpu", root / "other", jobs=1).ok
    # an older index state: the store before its second entry was committed
    shutil.copytree(root / "good", root / "old")
    store = FileStore(root / "old")
    index = store.read_index()
    first = sorted(index["entries"])[0]
    store.commit(index["target"], {}, remove=tuple(k for k in index["entries"] if k != first))
    return root


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock" and "tmp" not in p.relative_to(root).parts)


def mutate(rnd: random.Random, store, stores_root) -> str:
    """Applies one random mutation; returns what it did."""
    files = _files(store)
    blobs = [p for p in files if "blobs" in p.parts]
    kind = rnd.choice(["flip", "flip", "truncate", "delete", "swap", "garbage", "stale_index",
                       "foreign_blob", "extend", "zero"])
    target = rnd.choice(files)
    data = target.read_bytes()
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        target.write_bytes(bytes(b))
    elif kind == "truncate":
        target.write_bytes(data[: rnd.randrange(len(data))])
    elif kind == "delete":
        target.unlink()
    elif kind == "swap" and len(blobs) >= 2:
        a, b = rnd.sample(blobs, 2)
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)
        target = a
    elif kind == "garbage":
        target.write_bytes(rnd.randbytes(rnd.randint(0, 4096)))
    elif kind == "stale_index":
        target = store / "index.msgpack"
        shutil.copy(stores_root / "old" / "index.msgpack", target)
    elif kind == "foreign_blob":
        foreign = rnd.choice(sorted((stores_root / "other" / "blobs").rglob("*")))
        while foreign.is_dir():
            foreign = rnd.choice(sorted((stores_root / "other" / "blobs").rglob("*")))
        target = rnd.choice(blobs)
        target.write_bytes(foreign.read_bytes())
    elif kind == "extend":
        target.write_bytes(data + rnd.randbytes(rnd.randint(1, 64)))
    else:
        n = rnd.randint(1, max(1, len(data) // 4))
        i = rnd.randrange(max(1, len(data) - n))
        target.write_bytes(data[:i] + bytes(n) + data[i + n:])
    return f"{kind} {target.relative_to(store)}"


def test_fuzzed_stores_never_crash_or_mislead(stores, tmp_path):
    rnd = random.Random(SEED)
    rng = np.random.default_rng(SEED)
    cases = []
    for s in (16, 8, 11, 20):     # exact, exact, padded, uncovered
        q, k, v = qkv(rng, 1, s, hq=2, hk=1, d=8)
        cases.append(((q, k, v), attention_reference(q, k, v, causal=True)))
    good = FileStore(stores / "good").read_index()["entries"]
    survived = 0
    for i in range(N):
        store = tmp_path / f"m{i}"
        shutil.copytree(stores / "good", store)
        what = mutate(rnd, store, stores)
        try:
            bundle = ejaot.load(store, miss_log=False)
            for (q, k, v), want in cases:
                out = bundle.call("attention", q, k, v, causal=True)
                np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=2e-5)
            s = bundle.stats()
            seen = [(r["entry"], r["tier"]) for r in s["rejected"]]
            assert len(seen) == len(set(seen)), f"a problem reported twice: {seen}"
            assert all(r["reason"] for r in s["rejected"])
            # a damaged payload that was used must have been reported
            for key, rec in good.items():
                for kind, ref in rec["payloads"].items():
                    path = FileStore(store).blob_path(ref["sha256"])
                    intact = path.exists() and path.read_bytes() == (stores / "good" / path.relative_to(store)).read_bytes()
                    tier = "compiled" if kind == "executable" else "portable"
                    used = key in bundle.entries and (tier == "compiled" or bundle.entries[key].compiled() is None)
                    if not intact and used and s["store_problem"] is None:
                        assert (key, tier) in seen, f"damaged {kind} of {key[:12]} not reported"
        except Exception as e:
            raise AssertionError(f"mutation {i} (seed {SEED}): {what}: {type(e).__name__}: {e}") from e
        finally:
            shutil.rmtree(store, ignore_errors=True)
        survived += 1
    assert survived == N
    print(f"{N} mutations tried, {survived} survived")


_ODD_VALUES = [None, True, -1, 0, 2 ** 40, 1.5, "", "x" * 300, b"\x00\xff", [], [1, "a"], {}, {"k": [1]},
               {7: 1}, {b"k": 1}, [[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]], {"a": {"b": {"c": None}}}]


def mutate_record(rnd: random.Random, record: dict) -> str:
    """One random structural change somewhere in a record: a value replaced by one of
    another type or shape, a field removed, or a key of another type added."""
    path, node = [], record
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        k = rnd.choice(keys)
        child = node[k]
        if isinstance(child, (dict, list)) and child and rnd.random() < 0.6:
            path.append(k)
            node = child
            continue
        path.append(k)
        break
    if not path:
        return "nothing"
    parent = record
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    action = rnd.choice(["replace", "replace", "replace", "delete", "add_key"])
    if action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "add_key" and isinstance(parent, dict):
        parent[rnd.choice([3, b"raw", 2.5, "unexpected"])] = rnd.choice(_ODD_VALUES)
    else:
        parent[last] = rnd.choice(_ODD_VALUES)
    return f"{action} {'/'.join(map(str, path))}"


def test_fuzzed_records_are_rejected_alone(stores, tmp_path):
    """Checksum-valid indexes whose records are structurally wrong: every call still right,
    every other entry kept, no exception out of bundle.call."""
    from ejaot.store.format import encode_index
    import copy
    rnd = random.Random(SEED + 1)
    rng = np.random.default_rng(SEED + 1)
    cases = []
    for s in (16, 8, 11):
        q, k, v = qkv(rng, 1, s, hq=2, hk=1, d=8)
        cases.append(((q, k, v), attention_reference(q, k, v, causal=True)))
    base = FileStore(stores / "good").read_index()
    store = tmp_path / "s"
    shutil.copytree(stores / "good", store)
    survived = 0
    for i in range(N):
        entries = copy.deepcopy(base["entries"])
        key = rnd.choice(sorted(entries))
        what = mutate_record(rnd, entries[key])
        try:
            (store / "index.msgpack").write_bytes(encode_index(base["target"], entries))
            bundle = ejaot.load(store, miss_log=False)
            for (q, k, v), want in cases:
                np.testing.assert_allclose(np.asarray(bundle.call("attention", q, k, v, causal=True)), want,
                                           atol=2e-5, rtol=2e-5)
            s = bundle.stats()
            assert s["entries"] >= len(entries) - 1, f"an intact entry was lost: {s['rejected']}"
            seen = [(r["entry"], r["tier"]) for r in s["rejected"]]
            assert len(seen) == len(set(seen))
        except Exception as e:
            raise AssertionError(f"record mutation {i} (seed {SEED + 1}): {what}: {type(e).__name__}: {e}") from e
        survived += 1
    assert survived == N
    print(f"{N} record mutations tried, {survived} survived")

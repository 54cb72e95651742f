"""Sharded builds merged: shards 1/3, 2/3, 3/3 of a manifest, merged, equal a full build
byte for byte in the payloads; the assignment is deterministic, cost-balanced and mostly
stable when the manifest grows; merge verifies before copying and refuses conflicts."""
import hashlib
import shutil

import pytest

from ejaot.build.builder import build
from ejaot.errors import EjaotError
from ejaot.build.manifest import load_manifest
from ejaot.build.merge import merge_stores
from ejaot.build.plan import plan
from ejaot.build.shard import assign, estimated_cost, parse_shard
from ejaot.store.filestore import FileStore
from ejaot.targets import get_target

MANIFEST = """
format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
[kernel.dims]
batch = [1, 2]
seq = [16, 32, 64]
q_heads = 4
kv_heads = 2
head_dim = 16
[kernel.static]
causal = true
[[kernel]]
name = "page_attention"
dtypes = ["float32"]
[kernel.dims]
num_seqs = [2, 4]
q_heads = 4
kv_heads = 2
head_dim = 16
total_pages = 32
page_size = 8
max_blocks = 4
"""


def payloads(root):
    """Each entry's payload bytes (sha256), but for the compiled executable only its
    presence: XLA:CPU serializes a program's kernels in the order its compile threads
    finish, so two builds of one entry differ there (see ejaot/build/merge.py)."""
    index = FileStore(root).read_index()["entries"]
    return {k: {kind: ref["sha256"] if kind != "executable" else "present" for kind, ref in r["payloads"].items()}
            for k, r in index.items()}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    m = root / "m.toml"
    m.write_text(MANIFEST)
    full = build(m, "cpu", root / "full", jobs=1)
    assert full.ok and len(full.built) == 8
    parts = []
    for i in (1, 2, 3):
        r = build(m, "cpu", root / f"s{i}", jobs=1, shard=(i, 3))
        assert r.ok, r.summary()
        parts.append(root / f"s{i}")
    return root, m, parts


def test_three_shards_merged_equal_a_full_build(shards):
    root, _, parts = shards
    counts = [len(FileStore(p).read_index()["entries"]) for p in parts]
    assert sum(counts) == 8 and all(c > 0 for c in counts)
    report = merge_stores(root / "merged", parts)
    assert report.ok and report.merged == 8, report.summary()
    assert payloads(root / "merged") == payloads(root / "full")
    # merging again (duplicates) changes nothing
    again = merge_stores(root / "merged2", parts + [root / "merged"])
    assert again.ok and again.duplicates == 8 and payloads(root / "merged2") == payloads(root / "full")


def test_assignment_is_deterministic(shards):
    _, m, _ = shards
    entries, _ = plan(load_manifest(m), get_target("cpu"))
    assert assign(entries, 3) == assign(list(reversed(entries)), 3)


def _synthetic(i):
    """An entry as assign() sees it: a key, a backend and dims (cost), no outside module.
    Synthetic, so the test does not depend on the kernels' source hashes."""
    from types import SimpleNamespace
    return SimpleNamespace(key=hashlib.sha256(f"entry {i}".encode()).hexdigest(), module=None,
                           backend=("xla", "triton", "pallas_tpu")[i % 3],
                           dims={"seq": 16 << (i % 5), "batch": 1 + i % 4})


@pytest.mark.parametrize("n", [3, 4])
def test_assignment_is_balanced_and_mostly_stable_when_the_manifest_grows(n):
    entries = [_synthetic(i) for i in range(60)]
    grown = [_synthetic(i) for i in range(100)]
    before, after = assign(entries, n), assign(grown, n)
    kept = sum(before[k] == after[k] for k in before)
    assert kept >= 0.75 * len(before), (kept, len(before))
    load = [0.0] * n
    for e in grown:
        load[after[e.key]] += estimated_cost(e)
    mean = sum(load) / n
    assert max(load) <= 1.1 * mean + max(estimated_cost(e) for e in grown)


def test_shard_argument_errors():
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/0", "2-3"):
        with pytest.raises(EjaotError, match="--shard"):
            parse_shard(bad)


def test_merge_refuses_conflicts_and_bad_bytes(shards, tmp_path):
    root, _, parts = shards
    # a conflict: the same key with a different (valid) payload
    bad = tmp_path / "bad"
    shutil.copytree(parts[0], bad)
    store = FileStore(bad)
    index = store.read_index()
    key = sorted(index["entries"])[0]
    index["entries"][key]["payloads"]["exported"] = store.put_blob(b"other bytes")
    from ejaot.store.format import encode_index
    store.index_path.write_bytes(encode_index(index["target"], index["entries"]))
    report = merge_stores(tmp_path / "out", [parts[0], bad])
    assert not report.ok and any("conflicts" in p for p in report.problems)
    assert not (tmp_path / "out" / "index.msgpack").exists()            # nothing written
    # a corrupted blob is found before anything is copied
    corrupt = tmp_path / "corrupt"
    shutil.copytree(parts[1], corrupt)
    rec = next(iter(FileStore(corrupt).read_index()["entries"].values()))
    blob = FileStore(corrupt).blob_path(rec["payloads"]["exported"]["sha256"])
    blob.write_bytes(b"x" + blob.read_bytes()[1:])
    report = merge_stores(tmp_path / "out2", [parts[0], corrupt])
    assert not report.ok and any("does not match its sha256" in p for p in report.problems)
    assert not (tmp_path / "out2" / "index.msgpack").exists()


def test_merge_checks_signatures_with_trusted_keys(shards, tmp_path):
    from ejaot.artifact.signing import generate_keypair
    root, _, parts = shards
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    report = merge_stores(tmp_path / "out", parts, trusted_keys=tmp_path / "k.pub")
    assert not report.ok and all("unsigned entry" in p for p in report.problems)

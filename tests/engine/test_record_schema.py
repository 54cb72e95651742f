"""Records that pass the index checksum but are malformed: each is rejected on its own,
with its reason, the kernel's other entries keep serving, calls stay right, and the CLI
prints a FAIL line instead of a traceback (ls, inspect, verify --no-numerics)."""
import copy
import subprocess
import sys

import msgpack
import numpy as np
import pytest

import ejaot
from ejaot.artifact import record as rec
from ejaot.store.filestore import FileStore
from ejaot.store.format import encode_index
from conftest import REPO, qkv
from reference import attention_reference


def _set(path, value):
    def mutate(r):
        node = r
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return mutate


def _del(path):
    def mutate(r):
        node = r
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
    return mutate


def _deep(n):
    v = "leaf"
    for _ in range(n):
        v = [v]
    return v


MUTATIONS = {
    "dim is a string": _set(["dims", "seq"], "32"),
    "dim is a list": _set(["dims", "batch"], [1, 2]),
    "dim is negative": _set(["dims", "batch"], -1),
    "dim is a float": _set(["dims", "batch"], 2.0),
    "dims not a table": _set(["dims"], [1, 2, 3]),
    "missing dim": _del(["dims", "head_dim"]),
    "extra dim": _set(["dims", "bogus"], 4),
    "static of the wrong type": _set(["static", "causal"], {"x": 1}),
    "static list of tables": _set(["static", "sliding_window"], [{"a": 1}]),
    "static not canonical": _set(["static", "causal"], 1),
    "unknown static": _set(["static", "bogus"], True),
    "inputs not a list": _set(["inputs"], "query"),
    "input not a triple": _set(["inputs", 0], ["query", [1, 16, 4, 16]]),
    "input shape of strings": _set(["inputs", 0, 1], ["1", "16"]),
    "input shape wrong": _set(["inputs", 0, 1], [1, 16, 4, 17]),
    "outputs not avals": _set(["outputs"], [1, 2]),
    "present not a list": _set(["present"], "bias"),
    "present names a required input": _set(["present"], ["query"]),
    "payloads not a table": _set(["payloads"], ["exported"]),
    "payload size missing": _del(["payloads", "exported", "size"]),
    "payload size a string": _set(["payloads", "exported", "size"], "12"),
    "payload extra field": _set(["payloads", "exported", "path"], "/etc/passwd"),
    "executable meta wrong shape": _set(["executable", "in_avals"], "float32[1,16]"),
    "executable aval not a pair": _set(["executable", "out_avals"], [[[1, 2]]]),
    "kept_var_idx negative": _set(["executable", "kept_var_idx"], [-1]),
    "executable not a table": _set(["executable"], 7),
    "signer not a string": _set(["signer"], 12345),
    "signature not bytes": _set(["signature"], "abc"),
    "module not a string": _set(["module"], ["x"]),
    "donated out of range": _set(["donated"], [99]),
    "integer map key": _set(["dims", 7], 3),
    "bytes map key": _set(["static", b"causal"], True),
    "float map key in notes table": _set(["timings"], {1.5: "x"}),
    "deep nesting": _set(["notes"], _deep(40)),
    "kernel not a string": _set(["kernel"], None),
    "format not an integer": _set(["format"], "1"),
    "exported table wrong": _set(["exported"], {"calling_convention_version": "10", "platforms": ["cpu"]}),
    "toolchain value a table": _set(["toolchain", "jax"], {"v": 1}),
    "config not a table": _set(["config"], "fast"),
}


def _store_with(store_copy, key, mutate):
    store = FileStore(store_copy)
    index = store.read_index()
    r = copy.deepcopy(index["entries"][key])
    mutate(r)
    index["entries"][key] = r
    store.index_path.write_bytes(encode_index(index["target"], index["entries"]))
    return index


def _target_key(store_copy):
    """The float32 batch=1 seq=16 entry."""
    index = FileStore(store_copy).read_index()
    return next(k for k, r in index["entries"].items()
                if r["dtype"] == "float32" and r["dims"]["batch"] == 1 and r["dims"]["seq"] == 16)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_malformed_record_is_rejected_alone(store_copy, rng, name):
    key = _target_key(store_copy)
    _store_with(store_copy, key, MUTATIONS[name])
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 16)
    out = bundle.call("attention", q, k, v, causal=True)     # served by another bucket or the fallback
    np.testing.assert_allclose(out, attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    st = bundle.stats()
    reasons = [r for r in st["rejected"] if r["entry"] == key or (r["entry"] and key.startswith(str(r["entry"])))]
    assert reasons and reasons[0]["tier"] == "entry", st["rejected"]
    assert st["entries"] == 7                                # every other entry of the kernel kept


def test_schema_names_the_field():
    r = {"key": "0" * 64}
    assert rec.problem("0" * 64, r) == "record field 'format' is missing"
    good = {"key": "0" * 64, "format": 1, "kernel": "k", "backend": "xla", "target": "cpu", "platform": "cpu",
            "dims": {"a": 1}, "dtype": "float32", "present": [], "static": {}, "source_hash": "h",
            "toolchain": {}, "payloads": {}, "inputs": [], "outputs": [],
            "exported": {"calling_convention_version": 9, "platforms": ["cpu"]}}
    assert rec.problem("0" * 64, good) is None
    bad = dict(good, dims={"a": "1"})
    assert rec.problem("0" * 64, bad) == "record field 'dims.a' is not an integer >= 0, got '1'"
    assert "not a string" in rec.problem(5, good)


def test_undecodable_record_costs_only_itself(store_copy, rng):
    """A record whose msgpack holds a map keyed by an array (it cannot be decoded in Python)
    is rejected alone; the section's other records load."""
    from ejaot.store import format as fmt
    key = _target_key(store_copy)
    store = FileStore(store_copy)
    index = store.read_index()
    sections = {}
    for k, r in index["entries"].items():
        sections.setdefault(r["kernel"], {})[k] = r
    raw = b"\x80"[:0]
    items = sections["attention"]
    raw = bytes([0x80 | len(items)])          # fixmap header: fewer than 16 records
    for k, r in items.items():
        raw += msgpack.packb(k, use_bin_type=True)
        raw += (b"\x81" + b"\x92\x01\x02" + b"\x03") if k == key else msgpack.packb(r, use_bin_type=True)
    body = msgpack.packb({"target": index["target"], "sections": {"attention": raw}}, use_bin_type=True)
    import hashlib
    header = {"format": fmt.FORMAT_VERSION, "body_sha256": hashlib.sha256(body).digest(), "body": body}
    store.index_path.write_bytes(fmt.MAGIC + msgpack.packb(header, use_bin_type=True))
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 2, 32)
    np.testing.assert_allclose(bundle.call("attention", q, k, v, causal=True),
                               attention_reference(q, k, v, causal=True), atol=3e-5, rtol=3e-5)
    st = bundle.stats()
    assert st["entries"] == 7
    assert any("not valid msgpack data" in r["reason"] for r in st["rejected"])


@pytest.mark.parametrize("name", ["dim is a string", "executable meta wrong shape", "integer map key",
                                  "signer not a string"])
def test_cli_prints_fail_lines_not_tracebacks(store_copy, name):
    key = _target_key(store_copy)
    _store_with(store_copy, key, MUTATIONS[name])
    cli = [sys.executable, "-m", "ejaot.cli"]
    env_run = dict(capture_output=True, text=True, cwd=REPO)
    ls = subprocess.run(cli + ["ls", str(store_copy)], **env_run)
    assert ls.returncode == 1 and f"FAIL {key[:12]}" in ls.stdout and "Traceback" not in ls.stderr
    js = subprocess.run(cli + ["ls", str(store_copy), "--json"], **env_run)
    assert js.returncode == 1 and "Traceback" not in js.stderr
    import json
    rows = [json.loads(x) for x in js.stdout.splitlines()]
    assert sum("error" in r for r in rows) == 1 and len(rows) == 8
    ins = subprocess.run(cli + ["inspect", str(store_copy), key[:16]], **env_run)
    assert ins.returncode == 1 and "FAIL" in ins.stdout and "Traceback" not in ins.stderr
    ver = subprocess.run(cli + ["verify", str(store_copy), "--no-numerics"], **env_run)
    assert ver.returncode == 1 and f"FAIL {key[:12]}" in ver.stdout and "Traceback" not in ver.stderr

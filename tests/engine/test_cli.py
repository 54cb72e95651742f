"""The command line, end to end through click."""
import json

import numpy as np
from click.testing import CliRunner

import ejaot
from ejaot.cli import main
from conftest import qkv


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_build_ls_inspect_verify(tmp_path, small_manifest):
    out = tmp_path / "s"
    code, text = run("build", "--manifest", small_manifest, "--target", "cpu", "--out", out, "--jobs", 1, "--quiet")
    assert code == 0 and "8 built, 0 reused, 0 failed" in text
    code, text = run("build", "--manifest", small_manifest, "--out", out, "--quiet")
    assert code == 0 and "0 built, 8 reused" in text
    code, text = run("ls", out, "--json")
    rows = [json.loads(x) for x in text.splitlines()]
    assert len(rows) == 8
    for r in rows:
        assert {"kernel", "target", "shapes", "dtypes", "static", "config", "payloads", "toolchain"} <= set(r)
        assert set(r["payloads"]) == {"exported", "executable"} and all(v > 0 for v in r["payloads"].values())
        assert r["shapes"]["query"][2:] == [4, 16] and r["toolchain"]["jax"] == "0.11.2"
    code, text = run("inspect", out, rows[0]["key"][:10], "--hlo")
    assert code == 0 and rows[0]["key"] in text and "stablehlo" in text and "func.func" in text
    code, text = run("verify", out)
    assert code == 0, text
    assert "8 entries numerically verified" in text and "0 failures" in text


def test_verify_fails_on_corruption(store_copy):
    from ejaot.store.filestore import FileStore
    r = next(iter(FileStore(store_copy).read_index()["entries"].values()))
    path = FileStore(store_copy).blob_path(r["payloads"]["exported"]["sha256"])
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    code, text = run("verify", store_copy, "--no-numerics")
    assert code == 1 and "FAIL" in text and "sha256" in text


def test_build_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[kernel]]\nname = "nope"\n')
    code, text = run("build", "--manifest", bad, "--out", tmp_path / "s")
    assert code == 2 and "kernel[0].name" in text and "unknown kernel 'nope'" in text
    code, text = run("build", "--target", "tpu-v9", "--out", tmp_path / "s")
    assert code == 2 and "unknown target 'tpu-v9'" in text


def test_a_store_that_does_not_exist_is_a_usage_error(tmp_path, store_copy):
    """Exit status 2 (README, Command line) from every command that reads a store."""
    missing, empty = tmp_path / "nostore", tmp_path / "empty"
    empty.mkdir()
    for store in (missing, empty):    # no directory; a directory without an index
        for args in (("verify", store), ("verify", store, "--json"), ("finalize", store), ("ls", store),
                     ("inspect", store, "abc"), ("gc", store), ("merge", tmp_path / "out", store_copy, store)):
            code, text = run(*args)
            assert code == 2 and f"{store}: no store" in text, (args, code, text)
    code, text = run("misses", missing)
    assert code == 2 and "nostore" in text, text
    assert not missing.exists() and not any(empty.iterdir()) and not (tmp_path / "out").exists()


def test_verify_names_a_store_it_cannot_use(tmp_path, small_manifest):
    """A store built for another platform: its rejection is a note about the store, not
    about an entry called None; its entries pass the checks this host can run."""
    out = tmp_path / "tpu"
    code, text = run("build", "--manifest", small_manifest, "--target", "tpu-v5e", "--out", out, "--quiet")
    assert code == 0, text
    code, text = run("verify", out, "--no-numerics")
    assert code == 0 and "note: store rejected: the store was built for target 'tpu-v5e'" in text, text
    assert "None" not in text, text
    code, text = run("verify", out, "--no-numerics", "--kernel", "attention")   # shown with a filter too
    assert code == 0 and "note: store rejected" in text, text


def test_tune_build_says_when_there_is_nothing_to_tune(tmp_path, small_manifest):
    """The cpu target's backends (XLA) have no candidate configs: a clear line, no store."""
    code, text = run("tune", "build", "--manifest", small_manifest, "--target", "cpu", "--out", tmp_path / "c")
    assert code == 0 and "nothing to tune" in text and "cpu" in text, text
    assert not (tmp_path / "c").exists()


def test_misses_summarizes_as_buckets(store_copy, rng):
    bundle = ejaot.load(store_copy)
    for s in (40, 40, 50):
        bundle.call("attention", *qkv(rng, 1, s), causal=True)
    bundle.misses.flush()
    code, text = run("misses", store_copy, "--round", "exact")
    assert code == 0 and "3 misses" in text and "seq=40" in text and "seq=50" in text
    code, text = run("misses", store_copy, "--toml", "--round", "exact")
    import tomllib
    parsed = tomllib.loads(text)
    assert parsed["kernel"][0]["name"] == "attention"
    assert sorted(b["seq"] for b in parsed["kernel"][0]["buckets"]) == [40, 50]
    # the suggested tables are a valid manifest
    from ejaot.build.manifest import parse_manifest
    assert parse_manifest(parsed, "misses.toml").blocks


def test_gc_removes_only_unreferenced_blobs(store_copy):
    from ejaot.store.filestore import FileStore
    store = FileStore(store_copy)
    orphan = store.put_blob(b"orphan bytes")
    code, text = run("gc", store_copy, "--grace", 0)
    assert code == 0 and "removed 1 blobs" in text
    assert not store.has_blob(orphan["sha256"], orphan["size"])
    bundle = ejaot.load(store_copy, eager=True)
    assert bundle.warmup() == {"compiled": 8}


def test_help_lists_every_command():
    code, text = run("--help")
    for cmd in ("build", "ls", "inspect", "verify", "misses", "gc", "targets", "kernels", "keygen"):
        assert cmd in text


def test_verify_reports_a_failing_reference_and_goes_on(store_copy, monkeypatch):
    import ejaot.verify as verify
    calls = []

    def flaky(spec, record, inputs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("reference too large for this device")
        return real(spec, record, inputs)
    real = verify.reference_outputs
    monkeypatch.setattr(verify, "reference_outputs", flaky)
    lines = []
    assert verify.verify_store(store_copy, echo=lines.append)
    text = "\n".join(lines)
    assert "numerics skipped: the reference failed (MemoryError" in text
    assert "7 entries numerically verified" in text


def test_verify_size_limit_follows_the_device(store_copy, monkeypatch):
    """numerics run up to 2^26-element intermediates on a CPU, and up to a sixteenth of an
    accelerator's memory (in 4-byte elements) there; an explicit limit wins."""
    from types import SimpleNamespace
    import ejaot.verify as verify
    cpu = SimpleNamespace(platform="cpu", memory_stats=lambda: None)
    gpu = SimpleNamespace(platform="gpu", memory_stats=lambda: {"bytes_limit": 80 << 30})
    no_stats = SimpleNamespace(platform="gpu", memory_stats=lambda: None)
    assert verify.default_max_elements(cpu) == 1 << 26
    assert verify.default_max_elements(gpu) == 5 << 30
    assert verify.default_max_elements(no_stats) == 1 << 26
    lines = []
    assert verify.verify_store(store_copy, echo=lines.append)
    assert "numerics up to 6.71e+07-element intermediates" in lines[0]
    lines = []
    assert verify.verify_store(store_copy, echo=lines.append, max_elements=1)
    assert "numerics up to 1-element" in lines[0] and "0 entries numerically verified" in lines[-1]


def test_finalize_and_verify_take_only_the_named_kernels(store_copy):
    code, text = run("verify", store_copy, "--no-numerics", "--kernel", "page_attention")
    assert code == 0 and "store: target cpu, 8 entries" in text
    assert "attention float32" not in text and "0 entries numerically verified, 0 not run here" in text
    code, text = run("finalize", store_copy, "--force", "--kernel", "page_attention")
    assert code == 0 and "finalized: 0 compiled, 0 skipped, 0 failed" in text
    code, text = run("finalize", store_copy, "--force", "--kernel", "attention")
    assert code == 0 and "finalized: 8 compiled, 0 skipped, 0 failed" in text
    code, text = run("verify", store_copy, "--kernel", "attention")
    assert code == 0 and "8 entries numerically verified" in text and "0 failures" in text
    # what finalize wrote is usable here: the same device identity the build records
    assert text.count("compiled usable") == 8 and "compiled skipped" not in text


def test_version_and_typed_package():
    import pathlib
    import subprocess
    import sys
    import ejaot
    out = subprocess.run([sys.executable, "-m", "ejaot.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"ejaot, version {ejaot.__version__}"
    assert (pathlib.Path(ejaot.__file__).parent / "py.typed").exists()


def test_key_files_that_are_not_keys_are_usage_errors(store_copy, small_manifest, tmp_path):
    """build --sign and merge --trusted-keys with a file that is not such a key, and keygen
    into a folder that does not exist: exit 2 with the file named, no traceback."""
    bad = tmp_path / "bad.pem"
    bad.write_text("garbage\n")
    code, text = run("keygen", tmp_path / "k.pem", tmp_path / "k.pub")
    assert code == 0, text
    for args in (("build", "--manifest", small_manifest, "--out", tmp_path / "s", "--sign", bad, "--quiet"),
                 ("build", "--manifest", small_manifest, "--out", tmp_path / "s", "--sign", tmp_path / "k.pub"),
                 ("merge", tmp_path / "m", store_copy, "--trusted-keys", bad),
                 ("keygen", tmp_path / "no" / "a.pem", tmp_path / "no" / "b.pem")):
        code, text = run(*args)
        assert code == 2 and "Traceback" not in text, (args, text)
        named = args[-2] if args[0] == "keygen" else args[args.index("--sign") + 1] if "--sign" in args else bad
        assert str(named) in text or str(named.parent) in text, (args, text)
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_tune_measure_of_a_store_this_host_cannot_run_fails(store_copy):
    """A candidates store for another platform: nothing can be measured here, so tune
    measure says why and exits 1 (it reported success with nothing measured)."""
    from ejaot.store.filestore import FileStore
    from ejaot.store.format import encode_index
    index = FileStore(store_copy).read_index()
    (store_copy / "index.msgpack").write_bytes(encode_index("tpu-v5e", index["entries"]))
    code, text = run("tune", "measure", store_copy, "--iters", "1", "--no-write")
    assert code == 1 and "cannot measure here" in text and "tpu-v5e" in text, text


def test_finalize_recompiles_an_entry_whose_executable_is_damaged(store_copy):
    """An executable blob whose bytes no longer match its sha256: verify fails it, and
    finalize (no --force) compiles it again instead of counting it as done."""
    from ejaot.store.filestore import FileStore
    store = FileStore(store_copy)
    key, rec = next(iter(store.read_index()["entries"].items()))
    blob = store.blob_path(rec["payloads"]["executable"]["sha256"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    code, text = run("verify", store_copy)
    assert code == 1 and key[:12] in text
    code, text = run("finalize", store_copy)
    assert code == 0 and f"recompiling {key[:12]}" in text and "finalized: 1 compiled" in text, text
    code, text = run("verify", store_copy)
    assert code == 0, text


def test_count_options_out_of_range_are_usage_errors(store_copy, small_manifest, tmp_path):
    for args in (("build", "--manifest", small_manifest, "--out", tmp_path / "s", "--jobs", "0"),
                 ("tune", "build", "--manifest", small_manifest, "--target", "cpu", "--out", tmp_path / "c",
                  "--jobs", "-1"),
                 ("verify", store_copy, "--max-elements", "-5")):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2 and "is not in the range" in result.output, (args, result.output)
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def test_a_damaged_index_is_a_failed_check_for_every_command(store_copy):
    """ls, inspect, verify, finalize and gc on a store whose index is damaged: exit 1 (a
    failed check), as verify always did; 2 stays for usage errors."""
    (store_copy / "index.msgpack").write_bytes(b"garbage")
    for args in (("ls", store_copy), ("inspect", store_copy, "abc"), ("verify", store_copy),
                 ("finalize", store_copy), ("gc", store_copy)):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)

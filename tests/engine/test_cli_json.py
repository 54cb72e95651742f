"""Every listing and report command answers in JSON that parses; `ls` reads as a table;
unknown filters and missing stores exit non-zero; progress shows elapsed time and ETA."""
import json

from click.testing import CliRunner

from ejaot.cli import _numeric_order, main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def json_lines(text):
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def test_verify_json(store_copy):
    code, out, _ = run("verify", store_copy, "--json")
    assert code == 0
    rows = json_lines(out)
    kinds = [r["type"] for r in rows]
    assert kinds[0] == "host" and kinds[1] == "store" and kinds[-1] == "summary"
    entries = [r for r in rows if r["type"] == "entry"]
    assert len(entries) == 8
    for e in entries:
        assert e["ok"] and e["sha256_ok"] and e["kernel"] == "attention" and e["numerics"] == "ok"
        assert e["compiled"] == "usable" and e["portable"] == "usable" and len(e["key"]) == 64
    assert rows[-1] == {"type": "summary", "ok": True, "numerically_verified": 8, "not_run": 0, "failures": 0}
    assert rows[1]["entries"] == 8 and rows[1]["target"] == "cpu"


def test_verify_json_reports_a_corrupted_entry(store_copy):
    from ejaot.store.filestore import FileStore
    key, r = next(iter(FileStore(store_copy).read_index()["entries"].items()))
    path = FileStore(store_copy).blob_path(r["payloads"]["exported"]["sha256"])
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    code, out, _ = run("verify", store_copy, "--json", "--no-numerics")
    rows = json_lines(out)
    bad = [x for x in rows if x["type"] == "entry" and not x["ok"]]
    assert code == 1 and [x["key"] for x in bad] == [key] and not bad[0]["sha256_ok"]
    assert rows[-1]["type"] == "summary" and rows[-1]["ok"] is False


def test_verify_json_ends_with_a_summary_when_the_index_is_damaged(store_copy):
    """README: the last object is a summary whose ok is the exit status, also when the
    store's index cannot be read."""
    from ejaot.store.filestore import FileStore
    index = FileStore(store_copy).index_path
    index.write_bytes(index.read_bytes()[:-7])
    code, out, _ = run("verify", store_copy, "--json")
    rows = json_lines(out)
    assert code == 1 and [r["type"] for r in rows] == ["host", "store", "summary"], rows
    assert rows[1]["ok"] is False and rows[1]["error"] and rows[-1]["ok"] is False


def test_inspect_kernels_targets_json(store_copy):
    code, out, _ = run("ls", store_copy, "--json")
    key = json_lines(out)[0]["key"]
    code, out, _ = run("inspect", store_copy, key[:10], "--json", "--hlo")
    doc = json.loads(out)
    assert code == 0 and doc["key"] == key and doc["record"]["kernel"] == "attention"
    assert doc["summary"]["tiers"] == ["compiled", "portable"] and "stablehlo" in doc["hlo"]

    code, out, _ = run("kernels", "--json")
    kernels = {k["name"]: k for k in json_lines(out)}
    assert code == 0 and {"attention", "flash_attention", "page_attention"} <= set(kernels)
    names = [a["name"] for a in kernels["attention"]["inputs"]]
    assert names[:3] == ["query", "key", "value"] and "causal" in {s["name"] for s in kernels["attention"]["static"]}

    code, out, _ = run("targets", "--json")
    targets = {t["name"]: t for t in json_lines(out)}
    assert code == 0 and targets["cpu"]["platform"] == "cpu" and "gpu-sm90" in targets and "tpu-v5e" in targets


def test_ls_is_a_sorted_table_with_the_readme_tier_names(store_copy):
    code, out, _ = run("ls", store_copy)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "target cpu: 8 entries"
    assert lines[1].split() == ["KEY", "KERNEL", "BACKEND", "DTYPE", "DIMS", "STATIC", "TIERS", "BINARIES"]
    assert all(x.split()[2] == "xla" for x in lines[2:])
    assert all("compiled,portable" in x for x in lines[2:]) and len(lines) == 10
    # dims sort as numbers, not text
    rows = [{"kernel": "a", "dtype": "float32", "static": {}, "dims": {"seq": s}} for s in (1024, 128, 16)]
    assert [r["dims"]["seq"] for r in sorted(rows, key=_numeric_order)] == [16, 128, 1024]


def test_unknown_kernel_filter_and_missing_store_exit_nonzero(store_copy, tmp_path):
    for cmd in ("verify", "finalize"):
        code, _, err = run(cmd, store_copy, "--kernel", "atention")
        assert code == 2 and "unknown kernel 'atention' in --kernel" in err and "attention" in err
    for cmd in ("verify", "finalize"):
        code, _, err = run(cmd, tmp_path / "nowhere")
        assert code == 2 and "does not exist" in err
    code, _, err = run("ls", tmp_path / "nowhere")
    assert code == 2


def test_build_progress_shows_elapsed_and_eta(tmp_path, small_manifest):
    code, out, err = run("build", "--manifest", small_manifest, "--out", tmp_path / "s", "--jobs", 1)
    assert code == 0 and "8 built" in out
    steps = [x for x in err.splitlines() if x.startswith("[")]
    assert steps[0].startswith("[1/8] elapsed 00:00:") and ", eta " in steps[0]
    assert steps[-1].startswith("[8/8] elapsed ") and "eta" not in steps[-1]

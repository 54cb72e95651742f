"""benchmarks/gpu/: the FLOP and byte formulas against hand-computed values, the GPU
manifest's plan, and the suite's CPU smoke mode end to end on a tiny store (schema of
gpu_results.json, and the Markdown report made from it)."""
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.gpu import report, roofline as rl, suite
from benchmarks.gpu.timing import time_call

REPO = Path(__file__).resolve().parents[2]
GPU_DIR = REPO / "benchmarks" / "gpu"


# ---------------------------------------------------------------------------------------
# formulas (the numbers worked out by hand in the comments)
# ---------------------------------------------------------------------------------------

def test_flash_flops():
    # 4 * B2 * H16 * 8192 * 8192 * D128 = 2^2 * 2 * 2^4 * 2^26 * 2^7 = 2^40
    assert rl.flash_fwd_flops(2, 16, 8192, 8192, 128, causal=False) == 2.0 ** 40
    assert rl.flash_fwd_flops(2, 16, 8192, 8192, 128, causal=True) == 2.0 ** 39
    # fwd+bwd: the backward counts 2.5 x the forward
    assert rl.flash_fwd_bwd_flops(2, 16, 8192, 8192, 128, causal=True) == 3.5 * 2.0 ** 39
    # 4 * 1 * 32 * 4096 * 4096 * 128 / 2 = 137438953472
    assert rl.flash_fwd_flops(1, 32, 4096, 4096, 128, causal=True) == 137_438_953_472


def test_flash_bytes():
    # B1 S4096 Hq32 Hk8 D128 bf16: q = 4096*32*128 = 16777216, kv = 4096*8*128 = 4194304
    # fwd: (2q + 2kv) * 2 bytes; fwd+bwd: (6q + 6kv) * 2 bytes
    assert rl.flash_fwd_bytes(1, 32, 8, 4096, 4096, 128, "bfloat16") == 83_886_080
    assert rl.flash_fwd_bwd_bytes(1, 32, 8, 4096, 4096, 128, "bfloat16") == 251_658_240
    assert rl.flash_fwd_bytes(1, 32, 8, 4096, 4096, 128, "float32") == 2 * 83_886_080


def test_mla_decode():
    # DeepSeek-V3, batch 64, 128 heads, 4096 tokens: 2 * 64 * 128 * 4096 * (576 + 512)
    assert rl.mla_decode_flops(64, 128, 4096) == 73_014_444_032
    assert rl.mla_decode_flops(128, 16, 4096) == 2 * 128 * 16 * 4096 * 1088
    parts = rl.mla_decode_bytes(64, 128, 4096, 128, 512, 64, "bfloat16")
    assert parts["cache"] == 64 * 4096 * 576 * 2 == 301_989_888          # latent + rope keys, once
    assert parts["weights"] == 2 * 512 * 128 * 128 * 2 == 33_554_432     # w_kc + w_vc
    assert parts["io"] == (2 * 64 * 128 * 128 + 64 * 64) * 2 == 4_202_496  # q, out, b_q
    assert parts["total"] == 339_746_816
    no_rope = rl.mla_decode_bytes(64, 128, 4096, 128, 512, 64, "bfloat16", with_rope=False)
    assert no_rope["cache"] == 64 * 4096 * 512 * 2


def test_paged_decode():
    assert rl.paged_tokens([0, 1, 16, 17, -3], 16) == 0 + 16 + 16 + 32 + 0
    # page_attention, 64 seqs x 4096, Hq32/Hk8 D128 bf16
    ctx = [4096] * 64
    assert rl.paged_decode_flops(ctx, 32, 128) == 4 * 32 * 128 * 262_144 == 2 ** 32
    parts = rl.paged_decode_bytes(ctx, 32, 8, 128, 16, 256, "bfloat16")
    assert parts == {"cache": 2 * 262_144 * 8 * 128 * 2, "io": 2 * 64 * 32 * 128 * 2,
                     "tables": (64 * 256 + 64) * 4, "total": 1_073_741_824 + 1_048_576 + 65_792}
    # a partial last page is read whole
    assert rl.paged_decode_bytes([17], 4, 2, 8, 16, 2, "float32")["cache"] == 2 * 32 * 2 * 8 * 4
    # paged MLA: the same cache bytes as the contiguous form, plus the tables
    mla = rl.paged_mla_decode_bytes(ctx, 128, 128, 512, 64, 64, 64, "bfloat16")
    assert mla["cache"] == 301_989_888 and mla["tables"] == (64 * 64 + 64) * 4
    assert mla["total"] == 301_989_888 + 33_554_432 + 4_202_496 + 16_640


def test_roofline_bound():
    # ridge = 1000 / 100 = 10 FLOP/byte
    assert rl.ridge_point(1000.0, 100.0) == 10.0
    assert rl.bound(100, 10, 1000.0, 100.0) == "compute"      # intensity 10: at the ridge
    assert rl.bound(100, 11, 1000.0, 100.0) == "memory"
    r = rl.roofline(flops=2e12, nbytes=1e9, seconds=0.01, matmul_flops_per_s=400e12, copy_bytes_per_s=2e12)
    assert r["tflops"] == pytest.approx(200.0) and r["gbps"] == pytest.approx(100.0)
    assert r["intensity"] == 2000.0 and r["ridge"] == 200.0 and r["bound"] == "compute"
    assert r["frac_matmul"] == pytest.approx(0.5) and r["frac_copy"] == pytest.approx(0.05)
    assert r["frac_roofline"] == pytest.approx(0.5)
    m = rl.roofline(flops=1e9, nbytes=1e9, seconds=1e-3, matmul_flops_per_s=400e12, copy_bytes_per_s=2e12)
    assert m["bound"] == "memory" and m["frac_roofline"] == pytest.approx(0.5)    # 1 TB/s of 2
    assert "bound" not in rl.roofline(1.0, 1.0, 1.0, None, 2e12)


def test_suite_case_counts_match_the_formulas():
    d = {"batch": 2, "seq": 8192, "kv_seq": 8192, "q_heads": 16, "kv_heads": 16, "head_dim": 128}
    f, b, _ = suite.flops_bytes("flash_attention", "fwd+bwd", d, "bfloat16", {"causal": True})
    assert f == 3.5 * 2.0 ** 39 and b == rl.flash_fwd_bwd_bytes(2, 16, 16, 8192, 8192, 128, "bfloat16")
    d = {"num_seqs": 64, "max_blocks": 256, "page_size": 16, "q_heads": 32, "kv_heads": 8, "head_dim": 128,
         "total_pages": 16384}
    f, b, parts = suite.flops_bytes("page_attention", "decode", d, "bfloat16", {})
    assert f == 2 ** 32 and b == parts["total"] == 1_074_856_192


def test_time_call_reports_median_and_min():
    calls = []

    def fn(x):
        calls.append(x)
        return x
    t = time_call(fn, [(1,), (2,)], warmup=2, iters=5, reps=3)
    assert t["reps"] == 3 and t["iters"] == 5 and len(t["samples_s"]) == 5 and t["arg_sets"] == 2
    assert t["min_s"] <= t["median_s"] and "block_until_ready" in t["method"]
    assert len(calls) == 2 + 5 * 3 and set(calls) == {1, 2}


# ---------------------------------------------------------------------------------------
# the GPU manifest and the smoke run
# ---------------------------------------------------------------------------------------

def test_gpu_manifest_plans_the_suites_buckets():
    from ejaot.build.manifest import load_manifest
    from ejaot.build.plan import plan
    from ejaot.targets import get_target
    target = get_target("gpu-sm90")
    entries, skipped = plan(load_manifest(GPU_DIR / "manifest.toml", target=target), target)
    assert not skipped
    by_kernel = {}
    for e in entries:
        by_kernel.setdefault(e.kernel, []).append(e)
    assert sorted(by_kernel) == sorted(suite.KERNELS)
    assert len(by_kernel["flash_attention"]) == 7
    # every flash_mla_attention bucket has a flash_attention twin (report.flash_twin)
    twins = {(e.dims["batch"], e.dims["seq"], e.dims["q_heads"], e.dims["head_dim"], e.static["causal"])
             for e in by_kernel["flash_attention"] if e.dims["kv_heads"] == e.dims["q_heads"]}
    assert len(by_kernel["flash_mla_attention"]) == 6
    for e in by_kernel["flash_mla_attention"]:
        d = e.dims
        assert (d["batch"], d["seq"], d["heads"], d["head_dim"], e.static["causal"]) in twins, d
        assert e.vjp
    mla = {(e.dims["batch"], e.dims["q_heads"], e.dims["kv_seq"]) for e in by_kernel["mla_attention"]}
    assert mla == {(b, h, 4096) for b in (64, 128) for h in (16, 128)} | {
        (b, h, 32768) for b in (1, 8) for h in (16, 128)}       # few long contexts: split keys
    assert all(e.dims["kv_lora_rank"] == 512 and e.dims["rope_dim"] == 64 for e in by_kernel["mla_attention"])
    # every paged bucket's cache holds all of its sequences' full contexts on distinct pages
    for e in by_kernel["page_attention"] + by_kernel["paged_mla_attention"]:
        assert e.dims["num_seqs"] * e.dims["max_blocks"] <= e.dims["total_pages"]
        assert e.dims["max_blocks"] * e.dims["page_size"] == (32768 if e.dims["num_seqs"] in (1, 8)
                                                               and e.kernel == "paged_mla_attention" else 4096)
    long = [e for e in by_kernel["mla_attention"] + by_kernel["paged_mla_attention"]
            if e.dims.get("kv_seq", e.dims.get("max_blocks", 0) * e.dims.get("page_size", 0)) == 32768]
    assert len(long) == 8 and all(e.config["num_splits"] > 1 for e in long), [e.config for e in long]
    assert all(e.backend == "triton" for e in entries)


TOP_KEYS = {"schema", "mode", "command", "date", "commit", "jax", "jaxlib", "device", "host", "store", "settings",
            "device_rates", "verify", "rows", "errors", "elapsed_s"}
ROW_KEYS = {"id", "kernel", "mode", "entry", "dtype", "dims", "static", "backend", "config_source", "served",
            "flops", "bytes", "time", "tflops", "gbps", "intensity", "frac_matmul", "frac_copy", "ridge", "bound",
            "cudnn", "verify", "warning", "error"}


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    from ejaot.build.builder import build
    tmp = tmp_path_factory.mktemp("gpu_bench")
    manifest = tmp / "smoke.toml"
    shutil.copy(GPU_DIR / "smoke.toml", manifest)
    store = tmp / "store"
    rep = build(manifest, "cpu", store, jobs=1)
    assert rep.ok and len(rep.built) == 6, rep.summary()
    return store


@pytest.fixture(scope="module")
def smoke_results(smoke_store):
    from ejaot.verify import verify_store
    store, tmp = smoke_store, smoke_store.parent
    events = []
    verify_store(store, echo=None, on_event=events.append, max_elements=1 << 20)
    (tmp / "verify.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp / "gpu_results.json"
    rc = suite.main(["--store", str(store), "--out", str(out), "--smoke", "--iters", "2",
                     "--verify-json", str(tmp / "verify.jsonl")])
    return rc, json.loads(out.read_text())


def test_smoke_run_schema(smoke_results):
    rc, doc = smoke_results
    assert TOP_KEYS <= set(doc), TOP_KEYS - set(doc)
    assert doc["schema"] == suite.SCHEMA and doc["mode"] == "smoke" and doc["errors"] == []
    assert doc["device"]["platform"] == "cpu" and doc["jax"] and doc["commit"] and doc["date"].endswith("Z")
    rates = doc["device_rates"]
    assert rates["copy"]["gbps"] > 0 and rates["matmul"]["tflops"] > 0 and rates["matmul"]["n"] in (128, 256)
    assert rates["ridge_flops_per_byte"] == pytest.approx(rates["matmul"]["tflops"] * 1e3 / rates["copy"]["gbps"])
    floor = rates["call_floor"]
    assert 0 < floor["us_best"] <= floor["us"] and floor["time"]["iters"] == doc["settings"]["iters"]
    assert doc["verify"]["ok"] is True
    rows = doc["rows"]
    assert doc["store"]["timed_entries"] == 6 and len(rows) == 9      # flash, flash_mla: fwd and fwd+bwd rows
    assert sorted(r["mode"] for r in rows if r["kernel"] == "flash_mla_attention") == ["fwd", "fwd+bwd"]
    assert sorted(r["mode"] for r in rows if r["kernel"] == "flash_attention") == ["fwd", "fwd", "fwd+bwd", "fwd+bwd"]
    for r in rows:
        assert r["error"] is None, (r["id"], r["error"], r.get("traceback"))
        assert ROW_KEYS <= set(r), (r["id"], ROW_KEYS - set(r))
        assert r["time"]["median_s"] > 0 and r["time"]["min_s"] <= r["time"]["median_s"]
        assert r["bound"] in ("compute", "memory")
        assert r["tflops"] == pytest.approx(r["flops"] / r["time"]["median_s"] / 1e12)
        # the jitted call is the figure; the eager call is timed beside it (not fwd+bwd)
        if r["mode"] == "fwd+bwd":
            assert "eager" not in r
        else:
            e = r["eager"]
            assert e["time"]["median_s"] > 0 and e["time"]["samples_s"] != r["time"]["samples_s"]
            assert e["tflops"] == pytest.approx(r["flops"] / e["time"]["median_s"] / 1e12)
            assert e["gbps"] == pytest.approx(r["bytes"] / e["time"]["median_s"] / 1e9)
        assert r["frac_copy"] == pytest.approx(r["gbps"] / rates["copy"]["gbps"])
        assert r["verify"]["ok"] is True
        # served by the store, or flagged (another process may edit a kernel's source meanwhile)
        assert r["served"]["path"] in ("exact", "padded") or r["warning"], r
        if r["kernel"] == "flash_attention":
            assert r["cudnn"]["status"] == "skipped" and "cpu" in r["cudnn"]["reason"]
        else:
            assert r["cudnn"] is None
        if r["kernel"] == "flash_mla_attention":    # its XLA backend, timed beside it
            assert r["xla"]["status"] == "ok" and r["xla"]["ratio"] > 0, r["xla"]
            assert r["temp_bytes"] >= 0 and r["xla"]["temp_bytes"] > 0
    assert rc == (1 if any(r["warning"] for r in rows) else 0)


def test_smoke_run_counts(smoke_results):
    _, doc = smoke_results
    by_id = {r["id"]: r for r in doc["rows"]}
    # flash B1 S128 Hq4 Hk2 D32: 4 * 1 * 4 * 128 * 128 * 32 = 8388608 full, half causal
    assert by_id["flash_attention fwd B1 S128 Hq4 Hk2 D32 full"]["flops"] == 8_388_608
    assert by_id["flash_attention fwd B1 S128 Hq4 Hk2 D32 causal"]["flops"] == 4_194_304
    assert by_id["flash_attention fwd+bwd B1 S128 Hq4 Hk2 D32 causal"]["flops"] == 3.5 * 4_194_304
    # q = 128*4*32 = 16384, kv = 128*2*32 = 8192: (2q + 2kv) * 2 bytes
    assert by_id["flash_attention fwd B1 S128 Hq4 Hk2 D32 full"]["bytes"] == 98_304
    # page_attention 2 seqs, full 64-token contexts (4 pages of 16), Hq4 Hk2 D32:
    # K+V 2*128 tokens*2 heads*32*2 B = 32768, q+out 2*2*4*32*2 = 1024, tables (2*4 + 2)*4 = 40
    page = by_id["page_attention decode B2 T64 page16 Hq4 Hk2 D32"]
    assert page["bytes"] == 33_832 and page["flops"] == 4 * 4 * 32 * 128
    # mla B2 T128 H4 R64+16 D32: flops 2*2*4*128*(80 + 64); bytes cache 2*128*80*2 = 40960,
    # weights 2*64*4*32*2 = 32768, io (2*2*4*32 + 2*16)*2 = 1088
    mla = by_id["mla_attention decode B2 S1 T128 H4 R64+16 D32"]
    assert mla["flops"] == 2 * 2 * 4 * 128 * 144 and mla["bytes"] == 40_960 + 32_768 + 1_088
    assert mla["bytes_parts"] == {"cache": 40_960, "weights": 32_768, "io": 1_088, "total": 74_816}
    # flash_mla B1 S128 H2 D32 L16 causal: attention 4*2*128*128*16/2 = 1048576, projections
    # 4 * 2*2*128*32*16 = 1048576; fwd+bwd 3.5 x and 3 x those. Bytes (4*8192 + 2*512) * 2.
    fm = "flash_mla_attention {} B1 S128 H2 D32 L16 causal"
    assert by_id[fm.format("fwd")]["flops"] == 2 * 1_048_576
    assert by_id[fm.format("fwd+bwd")]["flops"] == 6.5 * 1_048_576
    assert by_id[fm.format("fwd")]["bytes"] == (4 * 8192 + 1024) * 2


def test_report_tables(smoke_results):
    _, doc = smoke_results
    md = report.render(doc)
    assert doc["command"] in md and doc["commit"] in md and doc["device"]["kind"] in md
    for title in report.TITLES.values():
        assert f"**{title}**" in md
    assert md.count("| case |") == 5
    assert "| XLA TFLOP/s | vs XLA | scratch MiB (ours / XLA) | TFLOP/s vs flash_attention |" in md
    assert ("| case | mode | µs | TFLOP/s | GB/s | % matmul | % copy | bound | eager µs | cuDNN TFLOP/s "
            "| vs cuDNN |") in md
    assert "| case | µs | TFLOP/s | GB/s | % matmul | % copy | bound | eager µs |" in md
    mla = next(r for r in doc["rows"] if r["kernel"] == "mla_attention")
    assert f"| {mla['eager']['time']['median_s'] * 1e6:.1f} |" in md
    assert "cuDNN not run: cuDNN needs an NVIDIA GPU" in md
    assert f"A jitted one-kernel call on a 4 KB array takes {doc['device_rates']['call_floor']['us']:.1f} µs" in md
    # a failed row renders as an error line, not a crash
    broken = json.loads(json.dumps(doc))
    broken["rows"][0].update(error="RuntimeError: boom", time=None, tflops=None)
    broken["rows"][1]["eager"] = {"error": "RuntimeError: eager boom"}
    text = report.render(broken)
    assert "error: RuntimeError: boom" in text and "| error |" in text


def test_the_recorded_commit_is_the_one_given_else_git(monkeypatch):
    monkeypatch.setenv("EJAOT_COMMIT", "abc1234")
    assert suite.git_commit() == "abc1234"     # a copied tree's git metadata may be stale
    monkeypatch.delenv("EJAOT_COMMIT")
    assert suite.git_commit() != "abc1234"


# ---------------------------------------------------------------------------------------
# profile.py (one case inside a profiler range) and ncu_summary.py (its reports)
# ---------------------------------------------------------------------------------------

def test_profile_runs_one_case_and_describes_it(smoke_store, tmp_path):
    from benchmarks.gpu import profile
    meta = tmp_path / "case.json"
    assert profile.main(["--store", str(smoke_store), "--case", "flash_attention fwd+bwd B1 S128 Hq4 Hk2 D32 causal",
                         "--warmup", "1", "--meta", str(meta)]) == 0
    m = json.loads(meta.read_text())
    assert m["case"] == "flash_attention fwd+bwd B1 S128 Hq4 Hk2 D32 causal" and m["mode"] == "fwd+bwd"
    assert m["flops"] == 3.5 * 4_194_304 and m["call"].endswith("under jax.vjp") and not m["twin"]
    # the comparison on the same inputs: flash_mla's XLA backend (cuDNN needs a GPU)
    assert profile.main(["--store", str(smoke_store), "--case", "flash_mla_attention fwd B1", "--twin",
                         "--warmup", "1", "--meta", str(meta)]) == 0
    m = json.loads(meta.read_text())
    assert m["twin"] and "XLA backend" in m["call"] and m["case"].endswith("[twin]")
    assert profile.main(["--store", str(smoke_store), "--case", "mla_attention decode B2 S1", "--warmup", "1",
                         "--meta", str(meta)]) == 0
    assert json.loads(meta.read_text())["mode"] == "decode"


def test_profile_case_must_name_one_row(smoke_store):
    from benchmarks.gpu import profile
    with pytest.raises(SystemExit, match=r"matches 2: flash_attention fwd B1 S128 Hq4 Hk2 D32 causal; "
                                         r"flash_attention fwd\+bwd B1 S128 Hq4 Hk2 D32 causal"):
        profile.main(["--store", str(smoke_store), "--case", "D32 causal"])
    with pytest.raises(SystemExit, match="matches 0: none"):
        profile.main(["--store", str(smoke_store), "--case", "no such case"])
    with pytest.raises(SystemExit, match="have no comparison"):
        profile.main(["--store", str(smoke_store), "--case", "page_attention decode", "--twin"])


NCU_CSV = """==PROF== Disconnected from process 1
"ID","Process ID","Kernel Name","gpu__time_duration.sum","sm__throughput.avg.pct_of_peak_sustained_elapsed",\
"sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active","dram__throughput.avg.pct_of_peak_sustained_elapsed",\
"sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active",\
"launch__registers_per_thread","launch__shared_mem_per_block","launch__grid_size","launch__block_size",\
"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"
"","","","nsecond","%","%","%","%","register/thread","byte","","","ratio","ratio","ratio"
"0","1","void _mla_decode_sm90_ws(Foo<int, 2>, float*)","150,000","61.5","58.25","40","4.9","168","229,888","128","256","3.5","0.25","1.75"
"1","1","nvjet_tst_64x8_64x16_4x1_v_bz_coopA_TNT","10,000","20","n/a","70","0","90","0","512","384","0","","0.5"
"""


def test_ncu_summary_reads_raw_csv(tmp_path):
    from benchmarks.gpu import ncu_summary as ns
    text = NCU_CSV
    case = ns.summarize_case(text, {"case": "mla decode", "call": "whole call", "flops": 73e9, "bytes": 340e6})
    a, b = case["kernels"]
    assert a["name"] == "_mla_decode_sm90_ws" and b["name"].startswith("nvjet_tst")
    assert a["time_ns"] == 150_000 and a["smem_per_block"] == 229_888 and a["tensor_pct"] == 58.25
    assert list(a["stalls"]) == ["barrier", "long_scoreboard", "wait"]      # largest first
    assert b["tensor_pct"] is None and b["stalls"] == {"long_scoreboard": 0.5}   # n/a, blank and 0 dropped
    assert a["tensor_metrics"] == {"sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active": 58.25,
                                   "sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active": 4.9}
    assert case["kernel_time_us"] == 160.0
    assert case["tflops"] == pytest.approx(73e9 / 160e-6 / 1e12)
    assert case["gbps"] == pytest.approx(340e6 / 160e-6 / 1e9)
    md = ns.markdown([case])
    assert "**mla decode** (whole call): 2 kernels, 160.0 µs in all (456 TFLOP/s, 2125 GB/s over that time)" in md
    assert "| _mla_decode_sm90_ws | 150.0 | 62 | 58 | " in md and "barrier 3.5, long_scoreboard 1.8, wait 0.2 |" in md
    csv_path, meta_path = tmp_path / "c.csv", tmp_path / "c.json"
    csv_path.write_text(text)
    meta_path.write_text(json.dumps({"case": "x", "flops": 1.0}))
    assert ns.main([f"{csv_path}:{meta_path}", "--json", str(tmp_path / "s.json"),
                    "--markdown", str(tmp_path / "s.md")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())[0]["kernels"][0]["registers"] == 168
    with pytest.raises(ValueError, match="no ncu raw CSV header"):
        ns.read_raw_csv("==PROF== nothing profiled\n")


def test_decode_periods_time_each_mla_entry_jitted(smoke_store, capsys):
    """The A/B timer: one row per MLA decode entry of the store, the same case ids as the
    suite's rows, every figure a positive time; --floor times a one-kernel program."""
    import json
    from benchmarks.gpu import decode_periods
    assert decode_periods.main([str(smoke_store), "new"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["case"] for r in rows) == ["mla_attention decode B2 S1 T128 H4 R64+16 D32",
                                                "paged_mla_attention decode B2 T64 page16 H4 R64+16 D32"]
    assert all(r["label"] == "new" and min(r["period_us"], r["dispatch_us"], r["drain_us"], r["lone_us"]) > 0
               for r in rows)
    assert decode_periods.main(["--floor"]) == 0
    assert json.loads(capsys.readouterr().out)["floor_us"] > 0

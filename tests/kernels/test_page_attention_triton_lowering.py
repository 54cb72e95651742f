"""The Triton `page_attention` lowers on a CPU-only host for sm90 and sm80: page sizes 16
and 64, head_dim 128, GQA 32/8, with and without split-KV, sliding window and soft cap;
and a gpu-sm90 build of a small page_attention manifest stores exported + PTX + cubin.

Lowering Triton for CUDA here needs the CUDA plugin from the extras folder at the front of
sys.path with JAX_PLATFORMS=cpu set before jax is imported, so each check runs in a fresh
subprocess that does exactly that (as the build does). No GPU is touched: the checks read
the exported StableHLO, the jax-triton custom calls in it, the kernels' names and launch
grids in their protos, and the PTX inside them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from triton_lowering import REPO, lower_cases, requires_cuda_extras

pytestmark = requires_cuda_extras

# Runs in the subprocess: lowers every case, prints one JSON line per exported function.
_SCRIPT = textwrap.dedent(r'''
    import json, os, re, sys, zlib
    import jax
    import jax.numpy as jnp
    from ejaot_kernels.page_attention.triton_gpu import page_attention_impl
    from ejaot_kernels.page_attention.configs import triton_heuristic

    TARGET = "triton_kernel_call_ffi"
    CHECKS = [jax.export.DisabledSafetyCheck.custom_call(TARGET)]

    def opaque_blobs(text):
        """The zlib'd kernel-call protos in the custom calls' backend_config."""
        from ejaot.targets.mlir_text import custom_call_strings
        return [zlib.decompress(b) for b in custom_call_strings(text, TARGET, "opaque")]

    class Target:
        def __init__(self, cc):
            self.facts = {"compute_capability": cc}

    def run(case):
        cc, s, hq, hk, d, ps, mb = (case[k] for k in ("cc", "s", "hq", "hk", "d", "ps", "mb"))
        pages = s * mb + 1
        dt = jnp.dtype(case.get("dtype", "bfloat16"))
        dims = dict(num_seqs=s, q_heads=hq, kv_heads=hk, head_dim=d, total_pages=pages,
                    page_size=ps, max_blocks=mb)
        static = dict(attn_scale=case.get("scale"), attn_logits_soft_cap=case.get("cap"),
                      sliding_window=case.get("window"))
        config = triton_heuristic(dims, static, Target(cc))
        assert config["compute_capability"] == cc, config
        config.update(case.get("config", {}))

        def fn(q, kc, vc, ctx, tables):
            inputs = {"query": q, "key_cache": kc, "value_cache": vc, "context_lens": ctx,
                      "block_tables": tables}
            return page_attention_impl(inputs, jnp.zeros((0,), jnp.int32), config=config, **static)[0]

        av = [jax.ShapeDtypeStruct((s, hq, d), dt), jax.ShapeDtypeStruct((hk, pages, ps, d), dt),
              jax.ShapeDtypeStruct((hk, pages, ps, d), dt), jax.ShapeDtypeStruct((s,), jnp.int32),
              jax.ShapeDtypeStruct((s, mb), jnp.int32)]
        exp = jax.export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=CHECKS)(*av)
        text = exp.mlir_module()
        kernels = []
        for blob in opaque_blobs(text):
            kernels.append({
                "ptx_targets": sorted({t.decode() for t in re.findall(rb"\.target\s+(sm_\w+)", blob)}),
                "entries": sorted({e.decode() for e in re.findall(rb"\.entry\s+([A-Za-z0-9_$]+)", blob)}),
                # 16-byte loads of the caches (cp.async of 16 bytes, or ld.global.v4)
                "vector_loads": len(re.findall(rb"cp\.async\.cg\.shared\.global[^\n]*16;", blob))
                                + len(re.findall(rb"ld\.global(?:\.\w+)*\.v4", blob)),
                "mma": len(re.findall(rb"\b(?:mma\.sync|wgmma)", blob)),
            })
        print("RESULT " + json.dumps({
            "case": case, "config": config, "platforms": list(exp.platforms),
            "calls": text.count("stablehlo.custom_call @" + TARGET),
            "in_serialized": TARGET.encode() in bytes(exp.serialize()),
            "out_avals": [[list(a.shape), str(a.dtype)] for a in exp.out_avals],
            "kernels": kernels}), flush=True)

    for case in CASES:
        run(case)
''')


def _lower(cases: list[dict]) -> list[dict]:
    return lower_cases(_SCRIPT, cases)

def _check(results: list[dict], cases: list[dict]):
    assert len(results) == len(cases), results
    for r, c in zip(results, cases):
        assert r["case"] == c
        s, hq, d = c["s"], c["hq"], c["d"]
        dt = c.get("dtype", "bfloat16")
        assert r["platforms"] == ["cuda"]
        assert r["in_serialized"], r
        assert r["out_avals"] == [[[s, hq, d], dt]], r
        splits = r["config"]["num_splits"]
        if "config" in c and "num_splits" in c["config"]:
            assert splits == c["config"]["num_splits"]
        # one decode kernel, plus the combine kernel when the KV range is split
        assert r["calls"] == (1 if splits == 1 else 2), r
        assert len(r["kernels"]) == r["calls"]
        decode = r["kernels"][0]
        assert decode["entries"] == ["_decode_kernel"], r
        if splits > 1:
            assert r["kernels"][1]["entries"] == ["_combine_kernel"], r
        for k in r["kernels"]:
            # PTX compiled for the requested generation (sm_90a on Hopper)
            assert k["ptx_targets"] and all(p.startswith(f"sm_{c['cc']}") for p in k["ptx_targets"]), r
        # q·kᵀ and p·v on the tensor cores; the pages gathered in 16-byte vectors
        assert decode["mma"] > 0, r
        if dt != "float32":
            assert decode["vector_loads"] > 0, r


GQA = dict(s=4, hq=32, hk=8, d=128)


@pytest.mark.parametrize("cc", [90, 80])
def test_lowers_gqa_page_sizes_splits_window_cap(cc):
    cases = [
        dict(cc=cc, ps=16, mb=64, **GQA, config={"num_splits": 1}),
        dict(cc=cc, ps=16, mb=64, **GQA, config={"num_splits": 4}, window=300, cap=30.0),
        dict(cc=cc, ps=64, mb=16, **GQA, config={"num_splits": 1}, cap=50.0),
        dict(cc=cc, ps=64, mb=16, **GQA, config={"num_splits": 2}, window=100),
        dict(cc=cc, ps=16, mb=256, **GQA),                                 # the heuristic's config
    ]
    _check(_lower(cases), cases)


def test_lowers_other_shapes_and_dtypes():
    """MHA and MQA, head_dim 64/96/256 (96: padded to 128 in the kernel), an odd group and
    page block, float16 and float32 (4-byte tiles: the pipeline shrinks to fit)."""
    cases = [
        dict(cc=90, s=3, hq=8, hk=8, d=64, ps=16, mb=8, dtype="float16"),
        dict(cc=90, s=2, hq=16, hk=1, d=256, ps=32, mb=8, config={"num_splits": 2}, cap=10.0),
        dict(cc=80, s=5, hq=12, hk=2, d=96, ps=8, mb=20, window=50,
             config={"pages_per_block": 3, "num_splits": 3}),
        dict(cc=90, s=2, hq=32, hk=8, d=128, ps=64, mb=8, dtype="float32",
             config={"pages_per_block": 4, "num_stages": 4, "num_splits": 2}),
    ]
    _check(_lower(cases), cases)


def test_heuristic_and_candidates():
    from ejaot.targets import get_target
    from ejaot_kernels.page_attention import SPEC
    from ejaot_kernels.page_attention.configs import triton_candidates, triton_heuristic
    assert "triton" in SPEC.backends
    static = dict(attn_scale=None, attn_logits_soft_cap=None, sliding_window=None)
    keys = {"compute_capability", "pages_per_block", "num_splits", "num_warps", "num_stages"}
    for name, cc in (("gpu-sm90", 90), ("gpu-sm80", 80)):
        target = get_target(name)
        for ps in (16, 64):
            dims = dict(num_seqs=64, q_heads=32, kv_heads=8, head_dim=128, total_pages=64 * 4096 // ps,
                        page_size=ps, max_blocks=4096 // ps)
            cfg = triton_heuristic(dims, static, target)
            assert cfg.keys() == keys and cfg["compute_capability"] == cc
            assert cfg["pages_per_block"] * ps == 64      # 64-token steps at head_dim 128
            cands = triton_candidates(dims, static, target)
            assert cands[0] == cfg and all(c["compute_capability"] == cc for c in cands)
            assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
            # one sequence: split the context so the grid covers the SMs
            one = triton_heuristic(dict(dims, num_seqs=1), static, target)
            assert one["num_splits"] * 8 >= 100 and one["num_splits"] <= dims["max_blocks"]
    # a tiny table: no split shorter than its page blocks allow
    tiny = triton_heuristic(dict(num_seqs=1, q_heads=4, kv_heads=1, head_dim=64, total_pages=4,
                                 page_size=16, max_blocks=2), static, get_target("gpu-sm90"))
    assert tiny["num_splits"] == 1 and tiny["pages_per_block"] == 2


def test_module_imports_without_gpu():
    code = ("import os; os.environ['JAX_PLATFORMS']='cpu'\n"
            "import ejaot_kernels.page_attention.triton_gpu as m\n"
            "assert callable(m.page_attention_impl)\n"
            "import jax; assert jax.default_backend() == 'cpu'\n"
            "import jax.numpy as jnp\n"
            "try:\n"
            "    m.page_attention_impl({'query': jnp.zeros((1, 4, 16)), 'key_cache': jnp.zeros((1, 2, 4, 16)),\n"
            "        'value_cache': jnp.zeros((1, 2, 4, 16)), 'context_lens': jnp.zeros((1,), jnp.int32),\n"
            "        'block_tables': jnp.zeros((1, 2), jnp.int32)}, jnp.zeros((0,), jnp.int32), config={},\n"
            "        attn_scale=None, attn_logits_soft_cap=None, sliding_window=None)\n"
            "except ValueError as e:\n"
            "    assert 'compute_capability' in str(e), e\n"
            "else:\n"
            "    raise AssertionError('an empty config on a host without a GPU must say what is missing')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


MANIFEST = """
format = 1
[[kernel]]
name = "page_attention"
dtypes = ["bfloat16"]
[kernel.dims]
num_seqs = [2, 4]
max_blocks = 8
q_heads = 8
kv_heads = 2
head_dim = 128
page_size = 16
total_pages = 33
[kernel.static]
sliding_window = 64
"""


def test_gpu_sm90_build_of_a_page_attention_manifest(tmp_path):
    """The engine picks the triton backend for gpu-sm90 and stores every Triton kernel's PTX
    and cubin beside the portable module (in a subprocess: the build must set up the CUDA
    plugin before jax is imported)."""
    (tmp_path / "m.toml").write_text(MANIFEST)
    code = textwrap.dedent(f"""
        import json, sys
        from ejaot.build.builder import build
        from ejaot.store.filestore import FileStore
        report = build({str(tmp_path / 'm.toml')!r}, "gpu-sm90", {str(tmp_path / 'store')!r}, jobs=1)
        assert report.ok, report.summary()
        store = FileStore({str(tmp_path / 'store')!r})
        rows = list(store.read_index()["entries"].values())
        print("ROWS " + json.dumps(rows, default=str))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("ROWS ")]
    rows = json.loads(line[len("ROWS "):])
    assert len(rows) == 2, rows
    from ejaot.store.filestore import FileStore
    store = FileStore(tmp_path / "store")
    for r in rows:
        assert r["backend"] == "triton" and r["target"] == "gpu-sm90", r
        assert {"exported", "ptx", "cubin"} <= set(r["payloads"]), r
        assert r["config"]["compute_capability"] == 90
        ptx = store.read_blob(r["payloads"]["ptx"]["sha256"])
        assert b".target sm_90a" in ptx and b"_decode_kernel" in ptx

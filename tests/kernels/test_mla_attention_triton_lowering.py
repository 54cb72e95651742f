"""The Triton `mla_attention` backend lowers on a CPU-only host: DeepSeek-V3 decode shapes
(128 q heads, head_dim 128, kv_lora_rank 512, rope 64, 4096 keys) for sm90 (the Gluon
kernels: warp-specialized and lockstep) and sm80 (the tl.dot kernel), with and without the
rope parts, split-KV
(with its combine kernel) and not, float32 / float16, and the prefill / cu_seqlens
delegation to XLA; plus a gpu-sm90 build of a tiny mla manifest.

Lowering Triton for CUDA here needs the CUDA plugin from the extras folder at the front of
sys.path with JAX_PLATFORMS=cpu set before jax is imported, so each check runs in a fresh
subprocess that does exactly that (as the build does). No GPU is touched: the checks read
the exported StableHLO, the jax-triton custom calls in it, the PTX inside them, and what
ptxas (Triton's) reports when it assembles that PTX.
"""
from __future__ import annotations

import json
import textwrap

import pytest

from triton_lowering import lower_cases, requires_cuda_extras

pytestmark = requires_cuda_extras

# Runs in the subprocess: lowers every case, prints one JSON line per case.
_SCRIPT = textwrap.dedent(r'''
    import json, os, re, sys
    import jax
    import jax.numpy as jnp
    from ejaot_kernels.mla_attention.triton_gpu import mla_attention_impl
    from ejaot_kernels.mla_attention.configs import triton_heuristic
    from ejaot_kernels.paged_mla_attention.triton_gpu import paged_mla_attention_impl
    from ejaot_kernels.paged_mla_attention.configs import triton_heuristic as paged_heuristic
    import zlib
    from ejaot.targets.cuda import custom_call_strings, kernel_binaries, TRITON_CALL

    CHECKS = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]

    class Target:
        def __init__(self, cc):
            self.facts = {"compute_capability": cc}

    def lower_paged(case, dt):
        """paged_mla_attention: t tokens per block table in pages of ps rows."""
        cc, b, t, hq, hk, d, r, e, ps = (case[k] for k in ("cc", "b", "t", "hq", "hk", "d", "r", "e", "ps"))
        mb, pages = t // ps, b * (t // ps) + 3
        dims = dict(num_seqs=b, q_heads=hq, kv_heads=hk, head_dim=d, kv_lora_rank=r, rope_dim=e or 64,
                    total_pages=pages, page_size=ps, max_blocks=mb)
        static = dict(softmax_scale=case.get("scale"))
        config = {**paged_heuristic(dims, static, Target(cc)), **case.get("config", {})}

        def fn(q, cache, wk, wv, ctx, bt, *rest):
            inputs = {"query": q, "latent_cache": cache, "w_kc": wk, "w_vc": wv, "context_lens": ctx,
                      "block_tables": bt, "b_q": rest[0] if e else None, "rope_cache": rest[1] if e else None}
            return paged_mla_attention_impl(inputs, jnp.zeros((0,), jnp.int32), config=config, **static)[0]

        av = [jax.ShapeDtypeStruct((b, hq, d), dt), jax.ShapeDtypeStruct((pages, ps, r), dt),
              jax.ShapeDtypeStruct((r, hk, d), dt), jax.ShapeDtypeStruct((r, hk, d), dt),
              jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((b, mb), jnp.int32)]
        if e:
            av += [jax.ShapeDtypeStruct((b, e), dt), jax.ShapeDtypeStruct((pages, ps, e), dt)]
        return config, jax.export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=CHECKS)(*av)

    def lower(case, dt):
        cc, b, s, t, hq, hk, d, r, e = (case[k] for k in ("cc", "b", "s", "t", "hq", "hk", "d", "r", "e"))
        dims = dict(batch=b, seq=s, kv_seq=t, q_heads=hq, kv_heads=hk, head_dim=d, kv_lora_rank=r,
                    rope_dim=e or 64)
        static = dict(causal=case["causal"], softmax_scale=case.get("scale"))
        config = {**triton_heuristic(dims, static, Target(cc)), **case.get("config", {})}
        assert config["compute_capability"] == cc, config
        rope, cu = bool(e), case.get("cu", False)

        def fn(q, kv, wk, wv, vl, *rest):
            rest = list(rest)
            inputs = {"query": q, "key_value": kv, "w_kc": wk, "w_vc": wv,
                      "b_q": rest.pop(0) if rope else None, "b_k": rest.pop(0) if rope else None,
                      "cu_seqlens": rest.pop(0) if cu else None}
            return mla_attention_impl(inputs, vl, config=config, **static)[0]

        av = [jax.ShapeDtypeStruct((b, s, hq, d), dt), jax.ShapeDtypeStruct((b, t, r), dt),
              jax.ShapeDtypeStruct((r, hk, d), dt), jax.ShapeDtypeStruct((r, hk, d), dt),
              jax.ShapeDtypeStruct((2,), jnp.int32)]
        if rope:
            av += [jax.ShapeDtypeStruct((b, s, e), dt), jax.ShapeDtypeStruct((b, t, e), dt)]
        if cu:
            av.append(jax.ShapeDtypeStruct((3,), jnp.int32))
        return config, jax.export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=CHECKS)(*av)

    def run(case):
        dt = jnp.dtype(case.get("dtype", "bfloat16"))
        config, exp = (lower_paged if "ps" in case else lower)(case, dt)
        text = exp.mlir_module()
        _, meta = kernel_binaries(exp, text, None)
        launches = []    # the warps each kernel is launched with, and the threads its PTX requires
        for opaque in custom_call_strings(text, TRITON_CALL, "opaque"):
            raw = zlib.decompress(opaque)
            # the kernel message: name (field 1), num_warps (2), shared_mem_bytes (3, a varint)
            m = re.search(rb"\n.(_mla_decode_[a-z0-9_]+|_combine_kernel)\x10(.)\x18([\x80-\xff]*[\x00-\x7f])", raw)
            req = re.search(rb"\.reqntid (\d+)", raw)
            smem = sum((byte & 0x7f) << (7 * i) for i, byte in enumerate(m.group(3)))
            launches.append({"name": m.group(1).decode(), "warps": m.group(2)[0], "smem": smem,
                             "reqntid": int(req.group(1)) if req else None})
        print("RESULT " + json.dumps({
            "case": case, "config": config, "platforms": list(exp.platforms),
            "calls": text.count("stablehlo.custom_call @" + TRITON_CALL),
            "in_serialized": TRITON_CALL.encode() in bytes(exp.serialize()),
            "out_avals": [[list(a.shape), str(a.dtype)] for a in exp.out_avals],
            "kernels": meta.get("kernels", []), "launches": launches}), flush=True)

    for case in CASES:
        run(case)
''')


def _lower(cases: list[dict]) -> list[dict]:
    results = lower_cases(_SCRIPT, cases)
    assert len(results) == len(cases), results
    return results

DS3 = dict(hq=128, hk=128, d=128, r=512, e=64, t=4096)


def _check_triton(r, entry: str, calls: int):
    c = r["case"]
    dt = c.get("dtype", "bfloat16")
    assert r["platforms"] == ["cuda"]
    assert r["in_serialized"], r
    assert r["calls"] == calls, r
    shape = [c["b"], c["hq"], c["d"]] if "ps" in c else [c["b"], c["s"], c["hq"], c["d"]]
    assert r["out_avals"] == [[shape, dt]], r
    names = [k["name"] for k in r["kernels"]]
    assert names[0] == entry, names
    assert ("_combine_kernel" in names) == (r["config"]["num_splits"] > 1), (names, r["config"])
    # jaxlib launches num_warps x 32 threads: a kernel whose PTX requires more (a
    # warp-specialized one) must be launched with all its warps, or the launch fails
    assert [x["name"] for x in r["launches"]] == names, r["launches"]
    for x in r["launches"]:
        assert x["reqntid"] in (None, 32 * x["warps"]), x
        # dynamic shared memory within what a block may opt into (sm90 and sm80)
        assert 0 < x["smem"] <= (232448 if c["cc"] == 90 else 166912), x
    for k in r["kernels"]:    # PTX for the requested generation (sm_90a on Hopper), assembled
        assert k["arch"] == ("sm_90a" if c["cc"] == 90 else f"sm_{c['cc']}"), k
        assert "cubin_bytes" in k, k


@pytest.mark.parametrize("rope", [True, False], ids=["rope", "norope"])
def test_sm90_ds3_decode_lowers_to_the_gluon_kernels(rope):
    ds3 = {**DS3, "e": 64 if rope else 0}
    cases = [dict(cc=90, b=2, s=1, causal=True, **ds3),                                    # split-KV
             dict(cc=90, b=64, s=1, causal=False, **ds3),                                  # one wave
             dict(cc=90, b=64, s=1, causal=True, config={"softmax_share": 4}, **ds3),
             dict(cc=90, b=2, s=1, causal=True, config={"kernel": "wgmma"}, **ds3)]        # lockstep
    res = _lower(cases)
    small, big, quarter, lockstep = res
    assert small["config"]["kernel"] == "wgmma_ws" and small["config"]["num_splits"] > 1
    assert big["config"]["num_splits"] == 1
    _check_triton(small, "_mla_decode_sm90_ws", calls=2)      # attention + combine
    _check_triton(big, "_mla_decode_sm90_ws", calls=1)
    _check_triton(quarter, "_mla_decode_sm90_ws", calls=1)
    _check_triton(lockstep, "_mla_decode_sm90", calls=2)
    for r in (small, big, quarter):    # the softmax and the output warpgroup: 8 warps
        assert r["launches"][0]["warps"] == 8 and r["launches"][0]["reqntid"] == 256, r["launches"]
    for r in res:
        k = r["kernels"][0]
        # the 64 x 512 f32 accumulator split over two warpgroups fits in registers
        assert k["spill_store_bytes"] == 0 and k["registers"] <= 255, k


@pytest.mark.parametrize("rope", [True, False], ids=["rope", "norope"])
def test_sm80_ds3_decode_lowers_to_the_dot_kernel(rope):
    cases = [dict(cc=80, b=2, s=1, causal=True, **{**DS3, "e": 64 if rope else 0}),
             dict(cc=80, b=2, s=1, causal=True, config={"num_splits": 1}, **{**DS3, "e": 64 if rope else 0})]
    small, single = _lower(cases)
    assert small["config"]["kernel"] == "dot"
    _check_triton(small, "_mla_decode_kernel", calls=2)
    _check_triton(single, "_mla_decode_kernel", calls=1)


def test_lowers_other_dtypes_shapes_and_the_dot_kernel_on_sm90():
    """float32 (exact-f32 dot kernel even on sm90), float16, a multi-token decode with GQA
    absorption and a rank / rope the wgmma kernel tiles, rows < 64, the tl.dot kernel
    forced on sm90, and rank 64 (the lockstep kernel)."""
    cases = [
        dict(cc=90, b=2, s=1, causal=True, dtype="float32", **DS3),
        dict(cc=90, b=3, s=2, t=777, hq=128, hk=128, d=128, r=512, e=64, causal=True, dtype="float16"),
        dict(cc=90, b=2, s=4, t=640, hq=32, hk=8, d=64, r=256, e=32, causal=True, scale=0.1),
        dict(cc=90, b=2, s=1, causal=False, config={"kernel": "dot", "num_splits": 1}, **DS3),
        dict(cc=90, b=2, s=1, t=256, hq=16, hk=16, d=64, r=64, e=32, causal=True),
    ]
    f32, f16, gqa, dot, rank64 = _lower(cases)
    assert f32["kernels"][0]["name"] == "_mla_decode_kernel"
    _check_triton(f32, "_mla_decode_kernel", calls=1 + (f32["config"]["num_splits"] > 1))
    _check_triton(f16, "_mla_decode_sm90_ws", calls=1 + (f16["config"]["num_splits"] > 1))
    _check_triton(gqa, "_mla_decode_sm90_ws", calls=1 + (gqa["config"]["num_splits"] > 1))
    _check_triton(dot, "_mla_decode_kernel", calls=1)
    # below rank 128 the heuristic and the kernel choice fall back to the lockstep kernel
    assert rank64["config"]["kernel"] == "wgmma", rank64["config"]
    _check_triton(rank64, "_mla_decode_sm90", calls=1 + (rank64["config"]["num_splits"] > 1))


def test_prefill_and_cu_seqlens_delegate_to_xla():
    cases = [dict(cc=90, b=1, s=512, t=512, hq=16, hk=16, d=128, r=512, e=64, causal=True),
             dict(cc=90, b=1, s=64, t=64, hq=16, hk=16, d=64, r=128, e=32, causal=True, cu=True)]
    res = _lower(cases)
    assert res[0]["config"]["form"] == "naive"
    for r in res:
        assert r["calls"] == 0 and not r["kernels"], r
        c = r["case"]
        assert r["out_avals"] == [[[c["b"], c["s"], c["hq"], c["d"]], "bfloat16"]], r


def test_heuristic_carries_compute_capability_and_splits():
    from ejaot.targets import get_target
    from ejaot_kernels.mla_attention.configs import choose_splits, triton_candidates, triton_heuristic
    dims = dict(batch=64, seq=1, kv_seq=4096, q_heads=128, kv_heads=128, head_dim=128,
                kv_lora_rank=512, rope_dim=64)
    static = dict(causal=True, softmax_scale=None)
    for name, cc, kernel in (("gpu-sm90", 90, "wgmma_ws"), ("gpu-sm80", 80, "dot")):
        target = get_target(name)
        cfg = triton_heuristic(dims, static, target)
        assert cfg["compute_capability"] == cc and cfg["kernel"] == kernel and cfg["form"] == "absorbed"
        assert {"block_h", "block_n", "num_splits", "num_warps", "num_stages"} <= cfg.keys()
        cands = triton_candidates(dims, static, target)
        assert cands[0] == cfg and all(c["compute_capability"] == cc for c in cands)
        assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
    # batch 64 x 2 row blocks already fills an H100 (132 SMs): no split; small batches split
    assert triton_heuristic(dims, static, get_target("gpu-sm90"))["num_splits"] == 1
    small = triton_heuristic(dict(dims, batch=2), static, get_target("gpu-sm90"))["num_splits"]
    assert 4 <= small <= 32
    # never more splits than half the kv blocks
    assert choose_splits(1, 128, 256, 64, 64, 512, 132) <= 2
    assert triton_heuristic(dict(dims, seq=1024, kv_seq=1024), static, get_target("gpu-sm90"))["form"] == "naive"


TINY_MANIFEST = """
format = 1
[[kernel]]
name = "mla_attention"
dtypes = ["bfloat16"]
inputs = ["b_q", "b_k"]
[kernel.dims]
batch = 2
seq = 1
kv_seq = [256, 512]
q_heads = 16
kv_heads = 16
head_dim = 64
kv_lora_rank = 128
rope_dim = 32
[kernel.static]
causal = true
"""


def test_gpu_sm90_build_of_a_tiny_mla_manifest(tmp_path):
    from ejaot.build.builder import build
    from ejaot.store.filestore import FileStore
    m = tmp_path / "mla.toml"
    m.write_text(TINY_MANIFEST)
    report = build(m, "gpu-sm90", tmp_path / "gpu", jobs=1)
    assert report.ok and len(report.built) == 2, report.summary()
    store = FileStore(tmp_path / "gpu")
    recs = list(store.read_index()["entries"].values())
    assert len(recs) == 2
    for rec in recs:
        assert rec["kernel"] == "mla_attention" and rec["backend"] == "triton", rec
        assert {"exported", "ptx", "cubin"} <= set(rec["payloads"]), rec["payloads"]
        assert rec["config"]["compute_capability"] == 90 and rec["config"]["kernel"] == "wgmma_ws"
        assert [k["name"] for k in rec["kernels"]][0] == "_mla_decode_sm90_ws", rec["kernels"]
        ptx = store.read_blob(rec["payloads"]["ptx"]["sha256"])
        assert b".target sm_90a" in ptx and b"wgmma.mma_async" in ptx


def test_paged_decode_lowers_to_the_kernel_its_page_size_allows():
    """paged_mla_attention runs the same kernels, reading pages through the block table:
    the Gluon kernels when a 64-key block is one TMA box (pages of 64 and 128) or one box
    per page (pages of 32 and 16; also the lockstep kernel), the tl.dot kernel (a page
    lookup per key) for other page sizes, on sm80 and for float32."""
    ds3 = {**DS3, "hk": 1}
    cases = [dict(cc=90, b=64, s=1, ps=64, **ds3),
             dict(cc=90, b=2, s=1, ps=128, **{**ds3, "e": 0}),
             dict(cc=90, b=2, s=1, ps=32, **ds3),
             dict(cc=90, b=2, s=1, ps=16, **ds3),
             dict(cc=90, b=2, s=1, ps=16, config={"kernel": "wgmma"}, **ds3),
             dict(cc=90, b=2, s=1, ps=48, **{**ds3, "t": 4032}),
             dict(cc=80, b=2, s=1, ps=64, **ds3),
             dict(cc=90, b=2, s=1, ps=64, dtype="float32", **{**ds3, "t": 1024})]
    p64, p128, p32, p16, p16_lockstep, p48, sm80, f32 = _lower(cases)
    assert p64["config"]["num_splits"] == 1 and p128["config"]["num_splits"] > 1
    _check_triton(p64, "_mla_decode_sm90_ws", calls=1)
    _check_triton(p128, "_mla_decode_sm90_ws", calls=2)
    _check_triton(p32, "_mla_decode_sm90_ws", calls=2)
    _check_triton(p16, "_mla_decode_sm90_ws", calls=2)
    _check_triton(p16_lockstep, "_mla_decode_sm90", calls=2)
    _check_triton(p48, "_mla_decode_kernel", calls=2)
    _check_triton(sm80, "_mla_decode_kernel", calls=2)
    _check_triton(f32, "_mla_decode_kernel", calls=1 + (f32["config"]["num_splits"] > 1))
    for r in (p64, p128, p32, p16):
        assert r["launches"][0]["warps"] == 8 and r["launches"][0]["reqntid"] == 256, r["launches"]
    for r in (p64, p128, p32, p16, p16_lockstep):
        k = r["kernels"][0]
        assert k["spill_store_bytes"] == 0 and k["registers"] <= 255, k


@pytest.mark.parametrize("splits, rows, rank", [(2, 16, 512), (3, 16, 96), (16, 128, 512), (64, 16, 512),
                                                (64, 128, 512), (128, 16, 512), (5, 1, 32)])
def test_combine_tiles_cover_every_split_in_one_load(splits, rows, rank):
    """A combine program loads all the splits of its [rows, columns] tile at once: the split
    axis is a power of two at least the count, every block a power of two (Triton ranges),
    the columns at least 32 wide where the rank allows, and the tile at most COMBINE_TILE
    elements up to 64 splits (twice that past them)."""
    from ejaot_kernels._shared.mla_triton import COMBINE_TILE, combine_tiles
    sp, block_m, block_c = combine_tiles(splits, rows, rank)
    pow2 = lambda n: n > 0 and n & (n - 1) == 0
    assert pow2(sp) and splits <= sp < 2 * splits
    assert pow2(block_m) and pow2(block_c) and block_m >= 2
    assert block_c >= min(32, rank) and block_c <= 128
    assert sp * block_m * block_c <= (COMBINE_TILE if splits <= 64 else 2 * COMBINE_TILE)

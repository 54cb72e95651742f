"""The Triton `flash_attention` lowers on a CPU-only host for sm90 and sm80: forward and
backward (jax.vjp), several head dims, causal or not, GQA, and the optional features; on
sm90 the plain-scores forward is the Gluon ping-pong kernel (gluon_sm90.py).

Lowering Triton for CUDA here needs the CUDA plugin from the extras folder at the front of
sys.path with JAX_PLATFORMS=cpu set before jax is imported, so each check runs in a fresh
subprocess that does exactly that (as the build does). No GPU is touched: the checks read
the exported StableHLO, the jax-triton custom calls in it, and the PTX inside them.
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
    from ejaot_kernels.flash_attention.triton_gpu import flash_attention_impl

    SMEM = COMPILED    # triton_lowering.PRELUDE: [name, shared memory] per compiled kernel
    from ejaot_kernels.flash_attention.configs import triton_heuristic
    from ejaot_kernels._shared import gluon_pipeline

    TARGET = "triton_kernel_call_ffi"
    CHECKS = [jax.export.DisabledSafetyCheck.custom_call(TARGET)]

    def opaque_blobs(text):
        """The zlib'd kernel-call protos in the custom calls' backend_config."""
        from ejaot.targets.mlir_text import custom_call_strings
        return [zlib.decompress(b) for b in custom_call_strings(text, TARGET, "opaque")]

    def ptx_targets(text):
        found = set()
        for blob in opaque_blobs(text):
            found.update(m.decode() for m in re.findall(rb"\.target\s+(sm_\w+)", blob))
        return sorted(found)

    class Target:
        def __init__(self, cc):
            self.facts = {"compute_capability": cc}

    def run(case):
        cc, b, s, t, hq, hk, d = (case[k] for k in ("cc", "b", "s", "t", "hq", "hk", "d"))
        dt = jnp.dtype(case.get("dtype", "bfloat16"))
        dims = dict(batch=b, seq=s, kv_seq=t, q_heads=hq, kv_heads=hk, head_dim=d)
        static = dict(causal=case["causal"], sliding_window=case.get("window"),
                      logits_soft_cap=case.get("cap"), softmax_scale=case.get("scale"))
        config = {**triton_heuristic(dims, static, Target(cc)), **case.get("config", {})}
        assert config["compute_capability"] == cc, config
        has_bias, has_seg = case.get("bias", False), case.get("seg", False)

        def fwd(q, k, v, vl, *rest):
            rest = list(rest)
            inputs = {"query": q, "key": k, "value": v,
                      "bias": rest.pop(0) if has_bias else None}
            if has_seg:
                inputs["q_segment_ids"], inputs["kv_segment_ids"] = rest
            return flash_attention_impl(inputs, vl, config=config, **static)[0]

        def bwd(q, k, v, vl, *rest):
            *rest, ct = rest
            if has_bias:
                bias, segs = rest[0], rest[1:]
                return jax.vjp(lambda q, k, v, bias: fwd(q, k, v, vl, bias, *segs), q, k, v, bias)[1](ct)
            return jax.vjp(lambda q, k, v: fwd(q, k, v, vl, *rest), q, k, v)[1](ct)

        av = [jax.ShapeDtypeStruct((b, s, hq, d), dt), jax.ShapeDtypeStruct((b, t, hk, d), dt),
              jax.ShapeDtypeStruct((b, t, hk, d), dt), jax.ShapeDtypeStruct((2,), jnp.int32)]
        if has_bias:
            av.append(jax.ShapeDtypeStruct((b, hq, s, t), dt))
        if has_seg:
            av += [jax.ShapeDtypeStruct((b, s), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.int32)]
        for kind, fn, args in (("fwd", fwd, av), ("bwd", bwd, av + [av[0]])):
            SMEM.clear()   # kernels compiled for this export (a cached one is not recompiled)
            exp = jax.export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=CHECKS)(*args)
            text = exp.mlir_module()
            print("RESULT " + json.dumps({
                "case": case, "kind": kind, "platforms": list(exp.platforms),
                "calls": text.count("stablehlo.custom_call @" + TARGET),
                "in_serialized": TARGET.encode() in bytes(exp.serialize()),
                "out_avals": [[list(a.shape), str(a.dtype)] for a in exp.out_avals],
                "smem": list(SMEM),
                "ptx_targets": ptx_targets(text),
                "tma_loads": any(b"cp.async.bulk.tensor" in blob for blob in opaque_blobs(text)),
                "wgmma": any(b"wgmma." in blob for blob in opaque_blobs(text)),
                "tma_reductions": any(b"cp.reduce.async.bulk.tensor" in blob for blob in opaque_blobs(text)),
                "device_made_descriptors": any(b"tensormap.replace" in blob for blob in opaque_blobs(text)),
                # (output, operand) pairs a kernel call writes in place
                "aliases": [[int(o), int(i)] for o, i in re.findall(
                    r"output_operand_alias<output_tuple_indices = \[(\d+)\], operand_index = (\d+)", text)],
                "launch_warps": dict(gluon_pipeline._TOTAL_WARPS)}),
                flush=True)

    for case in CASES:
        run(case)
''')


def _lower(cases: list[dict]) -> list[dict]:
    return lower_cases(_SCRIPT, cases)

# Largest shared memory a block may use: H100 and B200 227 KB, A100 163 KB, RTX 30 and 50 99 KB.
SMEM_LIMIT = {90: 232448, 80: 166912, 100: 232448, 120: 101376, 86: 101376}


def _check(results: list[dict], cases: list[dict]):
    assert len(results) == 2 * len(cases), results
    # each case compiles at least its forward, dK/dV and dQ kernels (delta kernels get
    # reused; a fused_dq or Gluon backward has no dQ kernel)
    assert sum(len(r["smem"]) for r in results) >= sum(2 if fused_dq(c) or gluon_bwd(c) else 3 for c in cases)
    for r in results:
        c = r["case"]
        b, s, t, hq, hk, d = (c[k] for k in ("b", "s", "t", "hq", "hk", "d"))
        dt = c.get("dtype", "bfloat16")
        assert r["platforms"] == ["cuda"]
        assert r["in_serialized"], r
        for name, smem in r["smem"]:
            assert smem <= SMEM_LIMIT[c["cc"]], (name, smem, c)
        # PTX compiled for the requested generation (sm_90a on Hopper)
        assert r["ptx_targets"] and all(p.startswith(f"sm_{c['cc']}") for p in r["ptx_targets"]), r
        if c["cc"] // 10 != 9:     # Hopper's warpgroup MMA (the Gluon kernels) nowhere else
            assert not r["wgmma"], (c, r["kind"])
        if r["kind"] == "fwd":
            assert r["calls"] == 1, r
            assert r["out_avals"] == [[[b, s, hq, d], dt]], r
        else:
            # forward (saves lse), delta, dK/dV, dQ; fused_dq: dK/dV with dQ, no dQ kernel;
            # the Gluon backward: dK, dV and dQ in one kernel
            assert r["calls"] == (3 if fused_dq(c) or gluon_bwd(c) else 4), r
            want = [[[b, s, hq, d], dt], [[b, t, hk, d], dt], [[b, t, hk, d], dt]]
            if c.get("bias"):
                want.append([[b, hq, s, t], dt])
            assert r["out_avals"] == want, r


def fused_dq(case) -> bool:
    """Whether a case's backward reduces dQ in its dK/dV kernel (sm90, 16-bit inputs)."""
    return bool(case.get("config", {}).get("fused_dq")) and case["cc"] >= 90 \
        and case.get("dtype", "bfloat16") != "float32"


def gluon_bwd(case) -> bool:
    """Whether a case's backward is the Gluon kernel (gluon_sm90_bwd.py): asked for by its
    config, given or the heuristic's (as the lowering script merges them), sm90, 16-bit
    inputs, head_dim 64 or 128, plain scores, whole 64-row query tiles."""
    from ejaot_kernels.flash_attention.configs import triton_heuristic

    class Target:
        facts = {"compute_capability": case["cc"]}
    dims = dict(batch=case["b"], seq=case["s"], kv_seq=case["t"], q_heads=case["hq"],
                kv_heads=case["hk"], head_dim=case["d"])
    static = dict(causal=case["causal"], sliding_window=case.get("window"),
                  logits_soft_cap=case.get("cap"), softmax_scale=case.get("scale"))
    config = {**triton_heuristic(dims, static, Target()), **case.get("config", {})}
    return bool(config.get("gluon_bwd")) and case["cc"] >= 90 \
        and case.get("dtype", "bfloat16") != "float32" and case["d"] in (64, 128) \
        and case["s"] % 64 == 0 and not any(case.get(k) for k in ("bias", "seg", "cap", "window")) \
        and (case.get("scale") is None or case["scale"] > 0)


@pytest.mark.parametrize("cc", [90, 80, 100, 120, 86])
def test_lowers_fwd_and_bwd_for_head_dims_causal_and_gqa(cc):
    """Hopper and Ampere, and the two Blackwells (a JIT call on one reads its compute
    capability): off Hopper no Gluon kernel (compiling its warpgroup MMA for another
    generation aborts the process in LLVM), tiles within that generation's shared memory
    and, on sm100, within its tensor memory (Triton refuses the kernel otherwise)."""
    cases = [dict(cc=cc, b=2, s=256, t=256, hq=8, hk=2, d=d, causal=causal)
             for d in (64, 128, 256) for causal in (True, False)]
    _check(_lower(cases), cases)


def test_tma_forward_reads_through_host_made_descriptors():
    """With tma, the forward's K/V loads are TMA copies through descriptors jaxlib encodes
    on the host: no descriptor is made on the device, and (lower_cases) no kernel needs
    the global scratch buffer that would take, which XLA's command buffers cannot hold."""
    cases = [dict(cc=90, b=2, s=512, t=512, hq=4, hk=2, d=128, causal=causal,
                  config=dict(tma=True, block_m=128, block_n=64, num_warps=4, num_stages=2))
             for causal in (False, True)]
    results = _lower(cases)
    _check(results, cases)
    fwd = [r for r in results if r["kind"] == "fwd"]
    assert len(fwd) == 2 and all(r["tma_loads"] and not r["device_made_descriptors"] for r in fwd), fwd


def test_warp_specialized_candidates_lower():
    """Every tuning candidate with Triton's warp specialization lowers: `ejaot tune build`
    builds each one, and one that Triton's pass rejects (it fails at 4 warps) fails that
    build."""
    from ejaot.targets import get_target
    from ejaot_kernels.flash_attention.configs import triton_candidates
    dims = dict(batch=2, seq=2048, kv_seq=2048, q_heads=4, kv_heads=2, head_dim=128)
    static = dict(causal=True, sliding_window=None, logits_soft_cap=None, softmax_scale=None)
    ws = [c for c in triton_candidates(dims, static, get_target("gpu-sm90")) if c.get("warp_specialize")]
    assert ws and all(c["tma"] and not c["gluon"] for c in ws), ws
    cases = [dict(cc=90, b=2, s=2048, t=2048, hq=4, hk=2, d=128, causal=True, config=c) for c in ws]
    results = _lower(cases)         # forward and backward of each; a pass failure fails the lowering
    assert len(results) == 2 * len(cases), results
    assert all(r["tma_loads"] for r in results if r["kind"] == "fwd"), results


def test_hopper_plain_forward_is_the_gluon_pingpong_kernel():
    """On sm90 the heuristic's forward for plain scores (causal or not, GQA/MQA, head_dim 64,
    128 or 256, lengths that are no multiple of a block) is the Gluon kernel: TMA loads
    through host-made descriptors, launched with its 12 warps (4 producer + 2 x 4
    consumer), its shared memory within the H100's (head_dim 256: Q and rings of 2 K and 2 V
    slots). Segment ids, a soft cap or sm80 keep the Triton forward. The backward is the
    Triton one in every case (too few programs for the heuristic's Gluon backward)."""
    gluon = [dict(cc=90, b=2, s=256, t=256, hq=8, hk=2, d=128, causal=True),
             dict(cc=90, b=1, s=200, t=328, hq=4, hk=1, d=64, causal=False),
             dict(cc=90, b=1, s=328, t=200, hq=4, hk=4, d=128, causal=True, dtype="float16"),
             dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=256, causal=False),
             dict(cc=90, b=1, s=200, t=328, hq=4, hk=2, d=256, causal=True)]
    triton = [dict(cc=90, b=1, s=200, t=328, hq=4, hk=1, d=64, causal=True, seg=True),
              dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=True, cap=30.0),
              dict(cc=80, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=False)]
    results = _lower(gluon + triton)
    _check(results, gluon + triton)
    fwd = {json.dumps(r["case"], sort_keys=True): r for r in results if r["kind"] == "fwd"}
    for case in gluon:
        r = fwd[json.dumps(case, sort_keys=True)]
        assert [name for name, _ in r["smem"]] == ["_fwd_sm90"], r
        assert r["tma_loads"] and not r["device_made_descriptors"], r
        assert r["launch_warps"].get("_fwd_sm90") == 12, r
    for case in triton:
        r = fwd[json.dumps(case, sort_keys=True)]
        assert [name for name, _ in r["smem"]] == ["_fwd_kernel"], r


def test_gluon_forward_needs_two_slots_per_ring():
    """Q's 128 rows plus at least 2 K and 2 V slots must fit the 227 KB a Hopper block may
    use; a config past that (head_dim 256 with 128-key blocks) runs the Triton forward
    instead of failing to compile."""
    from ejaot_kernels.flash_attention.triton_gpu import gluon_ring_slots
    assert [gluon_ring_slots(d, bn) for d, bn in ((64, 128), (128, 128), (128, 64), (256, 64), (256, 128))] \
        == [6, 3, 6, 2, 1]
    case = dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=256, causal=True,
                config={"block_m": 128, "block_n": 128, "num_stages": 1, "gluon": True})
    results = _lower([case])
    _check(results, [case])
    fwd = [r for r in results if r["kind"] == "fwd"]
    assert [name for name, _ in fwd[0]["smem"]] == ["_fwd_kernel"], fwd


def test_2byte_tiles_shrink_only_when_they_do_not_fit():
    """2-byte inputs: a kernel keeps tiles that fit (the sm90 table's rows, e.g. the Triton
    forward's 128 x 128 tiles in 3 stages at head_dim 128) and shrinks those that do not:
    stages first, to 2, then the streamed block (a bias adds a tile per stage). The backward
    configs below requested 262,656 and 262,144 bytes on an H200 and did not launch
    (BENCHMARKS.md); fitted, they take what the table's head_dim-256 rows take or less.
    float32 tiles are _fit_smem's and pass through."""
    from ejaot_kernels.flash_attention.triton_gpu import _fit_2byte as fit
    # (kind, tiles, head_dim, itemsize, cc, bias, fused_dq) -> tiles
    cases = [
        (("fwd", (128, 128, 8, 3), 128, 2, 90, False), (128, 128, 8, 3)),
        (("fwd", (128, 128, 8, 3), 128, 2, 90, True), (128, 128, 8, 2)),
        (("fwd", (128, 128, 8, 3), 256, 2, 90, False), (128, 64, 8, 2)),
        (("fwd", (128, 64, 8, 2), 256, 2, 90, True), (128, 64, 8, 2)),
        (("fwd", (128, 128, 8, 2), 256, 2, 90, True), (128, 64, 8, 2)),
        (("fwd", (128, 128, 8, 3), 128, 2, 80, False), (128, 128, 8, 2)),
        (("fwd", (64, 64, 4, 2), 128, 4, 90, True), (64, 64, 4, 2)),
        # the backward: the table's rows as they are; keys resident in dK/dV, queries in dQ
        (("dkdv", (64, 64, 4, 2), 128, 2, 90, True), (64, 64, 4, 2)),
        (("dkdv", (64, 64, 8, 2), 256, 2, 90, False), (64, 64, 8, 2)),
        (("dq", (128, 32, 8, 2), 256, 2, 90, False), (128, 32, 8, 2)),
        (("dkdv", (64, 128, 8, 2), 256, 2, 90, False), (32, 128, 8, 2)),
        (("dq", (128, 64, 8, 2), 256, 2, 90, False), (128, 32, 8, 2)),
        # fused_dq stages a float32 dQ tile per step: 32 queries per step at head_dim 256
        (("dkdv", (64, 64, 8, 2), 256, 2, 90, False, True), (32, 64, 8, 2)),
        (("dkdv", (64, 128, 8, 2), 128, 2, 90, False, True), (64, 128, 8, 2)),
    ]
    assert [fit(*args) for args, _ in cases] == [want for _, want in cases]


def test_fused_dq_backward_reduces_dq_by_tma():
    """fused_dq: no dQ kernel; the dK/dV kernel adds its dQ partials into a float32 buffer
    by TMA reductions through a host-made descriptor (none made on the device), at head
    dims 64-256, causal or not, GQA, lengths that are no multiple of a block, with a bias
    (whose gradient it still writes) and segment ids; its shared memory fits. A float32
    config asking for it keeps the dQ kernel."""
    on = dict(fused_dq=True)
    cases = [dict(cc=90, b=2, s=256, t=256, hq=8, hk=2, d=d, causal=causal, config=on)
             for d in (64, 128) for causal in (True, False)]
    cases += [dict(cc=90, b=1, s=200, t=328, hq=4, hk=2, d=256, causal=True, config=on),
              dict(cc=90, b=1, s=200, t=328, hq=4, hk=1, d=64, causal=True, seg=True, config=on),
              dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=False, bias=True, config=on),
              dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=64, causal=True, dtype="float32", config=on)]
    results = _lower(cases)
    _check(results, cases)
    bwd = [r for r in results if r["kind"] == "bwd"]
    assert len(bwd) == len(cases)
    for r in bwd:
        names = [name for name, _ in r["smem"]]
        if fused_dq(r["case"]):
            assert r["tma_reductions"] and not r["device_made_descriptors"], r
            assert "_bwd_dq_kernel" not in names, r
        else:
            assert not r["tma_reductions"] and "_bwd_dq_kernel" in names, r


def test_gluon_backward_is_one_kernel_with_tma_reductions():
    """gluon_bwd: dK, dV and dQ in one Gluon kernel (no dK/dV or dQ Triton kernel), launched
    with its 12 warps, adding dQ by TMA reductions through a host-made descriptor (none made
    on the device), its shared memory within the H100's: head_dim 64 and 128, causal or
    not, GQA and MQA, float16, key lengths that are no multiple of a block, fewer or more
    queries than keys. Where it does not apply (head_dim 256, a bias, segment ids, a soft
    cap, a window, a scale that is not positive, float32, sm80, a query length that is no
    multiple of 64) the config's request falls back to the Triton kernels."""
    on = dict(gluon_bwd=True)
    cases = [dict(cc=90, b=2, s=256, t=256, hq=8, hk=2, d=d, causal=causal, config=on)
             for d in (64, 128) for causal in (True, False)]
    cases += [dict(cc=90, b=1, s=192, t=328, hq=4, hk=1, d=128, causal=True, config=on),
              dict(cc=90, b=1, s=128, t=777, hq=4, hk=4, d=64, causal=False, dtype="float16", config=on),
              dict(cc=90, b=1, s=256, t=128, hq=2, hk=2, d=128, causal=True, config=on)]   # more queries
    # the heuristic's own choice at 256 programs (8 kv heads x 32 key blocks)
    cases += [dict(cc=90, b=1, s=4096, t=4096, hq=32, hk=8, d=128, causal=True)]
    fallback = [dict(cc=90, b=1, s=200, t=328, hq=4, hk=2, d=128, causal=True, config=on),
                dict(cc=90, b=1, s=192, t=328, hq=4, hk=2, d=256, causal=True, config=on),
                dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=False, bias=True, config=on),
                dict(cc=90, b=1, s=200, t=328, hq=4, hk=1, d=64, causal=True, seg=True, config=on),
                dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=True, cap=30.0, config=on),
                dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=64, causal=True, dtype="float32", config=on),
                dict(cc=80, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=True, config=on),
                dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=True, window=[64, 0], config=on),
                dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=64, causal=False, scale=-0.1, config=on)]
    results = _lower(cases + fallback)
    _check(results, cases + fallback)
    bwd = {json.dumps(r["case"], sort_keys=True): r for r in results if r["kind"] == "bwd"}
    for case in cases:
        r = bwd[json.dumps(case, sort_keys=True)]
        names = [name for name, _ in r["smem"]]
        assert "_bwd_sm90" in names and not {"_bwd_dkdv_kernel", "_bwd_dq_kernel"} & set(names), r
        assert r["launch_warps"].get("_bwd_sm90") == 12, r
        assert r["tma_reductions"] and not r["device_made_descriptors"], r
        # the zeroed float32 dQ buffer (the 8th operand) is the call's 3rd output, in place
        assert r["aliases"] == [[2, 7]], r["aliases"]
    for case in fallback:
        r = bwd[json.dumps(case, sort_keys=True)]
        names = [name for name, _ in r["smem"]]
        assert "_bwd_sm90" not in names and "_bwd_dq_kernel" in names, r


def test_heuristic_takes_the_gluon_backward_from_a_wave_of_programs():
    """The sm90 heuristic asks for the Gluon backward at head_dim 64 and 128 from 256 programs
    (batch x kv heads x 128-key blocks: where it measured faster), and keeps the two Triton
    kernels below that, at head_dim 256, with a soft cap, for a query length that is no
    multiple of 64, and on sm80. flash_mla_attention, which runs flash_attention's kernels
    in the latent space, keeps them everywhere (not measured there)."""
    from ejaot.targets import get_target
    from ejaot_kernels.flash_attention.configs import triton_heuristic
    static = dict(causal=True, sliding_window=None, logits_soft_cap=None, softmax_scale=None)

    def pick(target="gpu-sm90", cap=None, **kw):
        dims = dict(dict(batch=1, seq=4096, kv_seq=4096, q_heads=32, kv_heads=8, head_dim=128), **kw)
        cfg = triton_heuristic(dims, dict(static, logits_soft_cap=cap), get_target(target))
        return bool(cfg.get("gluon_bwd"))
    assert pick() and pick(head_dim=64) and pick(batch=2, seq=8192, kv_seq=8192, q_heads=16, kv_heads=16)
    assert not pick(seq=2048, kv_seq=2048)                       # 8 x 16 = 128 programs
    assert not pick(q_heads=16, kv_heads=4)                      # 4 x 32 = 128 programs
    assert not pick(batch=2, seq=384, kv_seq=384, q_heads=4, kv_heads=2)
    assert not pick(head_dim=256) and not pick("gpu-sm80") and not pick(cap=30.0)
    assert not pick(seq=4000, kv_seq=4000)                       # no whole 64-row tiles
    from ejaot_kernels.flash_mla_attention.configs import triton_heuristic as mla_heuristic
    mla = mla_heuristic(dict(batch=2, seq=8192, heads=16, head_dim=128, latent_dim=128),
                        dict(causal=True), get_target("gpu-sm90"))
    assert mla["gluon"] and mla.get("gluon_bwd") is False


def test_lowers_optional_features():
    """Sliding window, soft cap, bias (with its gradient), segment ids, unequal and
    non-multiple-of-block lengths, MQA, float16, and float32 (whose tiles are shrunk to fit
    shared memory) up to head_dim 256. A bias on sm90 sends the heuristic's Gluon-sized
    forward config to the Triton forward, whose stages shrink to fit (_check: shared memory
    within the limit), as do hand-written 2-byte tiles too large as given, forward and
    backward."""
    cases = [
        dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=128, causal=False, bias=True),
        dict(cc=90, b=1, s=200, t=328, hq=2, hk=1, d=256, causal=True, bias=True),
        dict(cc=90, b=1, s=256, t=256, hq=2, hk=2, d=256, causal=True, seg=True,
             config={"block_m": 128, "block_n": 128, "num_stages": 3, "gluon": False,
                     "bwd_block_m": 64, "bwd_block_n": 128, "dq_block_m": 128, "dq_block_n": 64}),
        dict(cc=90, b=1, s=200, t=328, hq=4, hk=1, d=64, causal=True, window=[64, 0], cap=30.0,
             bias=True, seg=True),
        dict(cc=80, b=2, s=96, t=160, hq=4, hk=2, d=128, causal=False, window=[32, 16], scale=0.1,
             dtype="float16"),
        dict(cc=90, b=1, s=128, t=128, hq=2, hk=2, d=32, causal=True, dtype="float32"),
        dict(cc=90, b=1, s=96, t=96, hq=2, hk=1, d=256, causal=True, dtype="float32"),
        dict(cc=80, b=1, s=96, t=96, hq=2, hk=1, d=256, causal=False, dtype="float32"),
        dict(cc=80, b=1, s=64, t=64, hq=2, hk=2, d=128, causal=True, dtype="float32"),
    ]
    _check(_lower(cases), cases)


def test_heuristic_carries_compute_capability():
    from ejaot.targets import get_target
    from ejaot_kernels.flash_attention.configs import triton_candidates, triton_heuristic
    dims = dict(batch=2, seq=8192, kv_seq=8192, q_heads=16, kv_heads=16, head_dim=128)
    static = dict(causal=True, sliding_window=None, logits_soft_cap=None, softmax_scale=None)
    for name, cc in (("gpu-sm90", 90), ("gpu-sm80", 80)):
        target = get_target(name)
        cfg = triton_heuristic(dims, static, target)
        assert cfg["compute_capability"] == cc
        assert {"block_m", "block_n", "num_warps", "num_stages"} <= cfg.keys()
        cands = triton_candidates(dims, static, target)
        assert cands and all(c["compute_capability"] == cc for c in cands)
    small = triton_heuristic(dict(dims, seq=16, kv_seq=24), static, get_target("gpu-sm90"))
    assert small["block_m"] == 16 and small["block_n"] == 32


def test_candidates_name_their_forward_kernel():
    """A config's missing keys come from the heuristic (resolve_config), whose sm90 forward
    is the Gluon one: every Triton candidate must say gluon=False, or tuning would time the
    Gluon kernel under a Triton candidate's name. Where the Gluon forward does not apply,
    no config carries the key."""
    from ejaot.targets import get_target
    from ejaot_kernels.flash_attention.configs import triton_candidates, triton_heuristic
    from ejaot_kernels.triton_support import resolve_config
    dims = dict(batch=2, seq=8192, kv_seq=8192, q_heads=16, kv_heads=16, head_dim=128)
    static = dict(causal=True, sliding_window=None, logits_soft_cap=None, softmax_scale=None)
    cands = triton_candidates(dims, static, get_target("gpu-sm90"))
    resolved = [resolve_config("flash_attention", c, triton_heuristic, dims, static) for c in cands]
    assert [r["gluon"] for r in resolved] == [c["gluon"] for c in cands]
    assert sum(c["gluon"] for c in cands) == 5 and sum(not c["gluon"] for c in cands) >= 30
    assert triton_heuristic(dims, static, get_target("gpu-sm90"))["gluon"] is True
    for target, extra in (("gpu-sm80", {}), ("gpu-sm90", {"logits_soft_cap": 30.0}),
                          ("gpu-sm90", {"sliding_window": (128, 0)})):
        st = dict(static, **extra)
        assert all("gluon" not in c for c in triton_candidates(dims, st, get_target(target)))
        assert "gluon" not in triton_heuristic(dims, st, get_target(target))


def test_module_imports_without_gpu():
    code = ("import os; os.environ['JAX_PLATFORMS']='cpu'\n"
            "import ejaot_kernels.flash_attention.triton_gpu as m\n"
            "assert callable(m.flash_attention_impl)\n"
            "import jax; assert jax.default_backend() == 'cpu'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

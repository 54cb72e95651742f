"""`flash_mla_attention`'s Triton backend lowers on a CPU-only host for sm90: forward and
backward (jax.vjp over every input), with flash attention's kernels in the latent space
(the Gluon forward where it applies, a latent dim of 48 padded to 64), and no seq × seq
array anywhere in the exported program: memory linear in seq. See triton_lowering.py for
why each check runs in a subprocess."""
from __future__ import annotations

import re
import textwrap

from triton_lowering import lower_cases, requires_cuda_extras

pytestmark = requires_cuda_extras

_SCRIPT = textwrap.dedent(r'''
    import json
    import jax
    import jax.numpy as jnp
    from ejaot.targets import get_target
    from ejaot_kernels.flash_mla_attention import SPEC

    TARGET = "triton_kernel_call_ffi"
    CHECKS = [jax.export.DisabledSafetyCheck.custom_call(TARGET)]
    NAMES = ("query", "key", "value", "latent_key", "latent_value", "bias")
    impl = SPEC.backends["triton"].load()

    for case in CASES:
        b, h, s, d, lat = (case[k] for k in ("b", "h", "s", "d", "lat"))
        dims = dict(batch=b, heads=h, seq=s, head_dim=d, latent_dim=lat)
        static = dict(causal=case["causal"], softmax_scale=None)
        config = case["config"] if "config" in case else \
            SPEC.backends["triton"].config_for(dims, static, get_target("gpu-sm90"))
        n_in = 6 if case["bias"] else 5

        def fwd(*a):
            *arrays, valid = a
            return impl(dict(zip(NAMES, arrays)), valid, config=config, **static)[0]

        def bwd(*a):
            *arrays, valid, ct = a
            return jax.vjp(lambda *x: fwd(*x, valid), *arrays)[1](ct)

        bf = jnp.bfloat16
        av = [jax.ShapeDtypeStruct((b, h, s, d), bf)] * 3 + [jax.ShapeDtypeStruct((d, lat), bf)] * 2
        if case["bias"]:
            av.append(jax.ShapeDtypeStruct((b, h, s, s), bf))
        av.append(jax.ShapeDtypeStruct((1,), jnp.int32))
        for kind, fn, args in (("fwd", fwd, av), ("bwd", bwd, av + [av[0]])):
            COMPILED.clear()    # triton_lowering.PRELUDE's record of compiled kernels
            exp = jax.export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=CHECKS)(*args)
            text = exp.mlir_module()
            print("RESULT " + json.dumps({
                "case": case, "kind": kind, "config_gluon": bool(config.get("gluon")),
                "calls": text.count("stablehlo.custom_call @" + TARGET),
                "kernels": [name for name, _ in COMPILED], "text": text,
                "out_avals": [[list(x.shape), str(x.dtype)] for x in exp.out_avals]}), flush=True)
''')


def _has_square(text: str, s: int) -> bool:
    return re.search(rf"tensor<(?:\d+x)*{s}x{s}x", text) is not None


def test_keeps_the_two_triton_backward_kernels():
    """flash_attention's heuristic gives its one-kernel Gluon backward to buckets this large
    (2 x 16 x 64 programs of 128 keys); in the latent space it is not measured or verified,
    so flash_mla_attention keeps the Triton dK/dV and dQ kernels, with its own heuristic's
    config and with an empty one (a JIT call's; the rest is then flash_attention's
    heuristic), unless a config asks for it."""
    big = dict(b=2, h=16, s=8192, d=128, lat=128, causal=True, bias=False)
    cases = [big, dict(big, config={"compute_capability": 90}),
             dict(big, config={"compute_capability": 90, "gluon_bwd": True})]
    results = [r for r in lower_cases(_SCRIPT, cases) if r["kind"] == "bwd"]
    assert len(results) == 3, results
    # forward, delta, dK/dV, dQ; the Gluon backward: forward, delta, one kernel (a kernel an
    # earlier case compiled is not compiled again, so the names are the first case's)
    assert [r["calls"] for r in results] == [4, 4, 3], [r["kernels"] for r in results]
    assert "_bwd_dq_kernel" in results[0]["kernels"] and "_bwd_sm90" not in results[0]["kernels"]
    assert "_bwd_sm90" in results[2]["kernels"], results[2]["kernels"]


def test_takes_the_triton_forward_off_hopper():
    """A JIT call on a Blackwell GPU (its compute capability in the config): flash
    attention's Triton kernels, not the Hopper-only Gluon forward, whose warpgroup MMA
    would abort the process in LLVM."""
    cases = [dict(b=1, h=2, s=256, d=128, lat=64, causal=True, bias=False, config={"compute_capability": cc})
             for cc in (100, 120)]
    results = lower_cases(_SCRIPT, cases)
    assert len(results) == 4, results
    for r in results:
        assert not r["config_gluon"]
        assert "_fwd_sm90" not in r["kernels"] and "_bwd_sm90" not in r["kernels"], r["kernels"]
        assert r["calls"] == (1 if r["kind"] == "fwd" else 4), r["kernels"]


def test_lowers_through_flash_kernels_without_a_score_matrix():
    cases = [dict(b=1, h=4, s=1024, d=128, lat=64, causal=True, bias=False),
             dict(b=2, h=2, s=1024, d=128, lat=48, causal=False, bias=False),
             dict(b=1, h=2, s=256, d=64, lat=128, causal=True, bias=True)]
    results = lower_cases(_SCRIPT, cases)
    assert len(results) == 2 * len(cases), results
    for r in results:
        c = r["case"]
        b, h, s, d, lat = (c[k] for k in ("b", "h", "s", "d", "lat"))
        if r["kind"] == "fwd":
            assert r["calls"] == 1, r["kernels"]
            assert r["out_avals"] == [[[b, h, s, d], "bfloat16"]]
            # plain scores take the Gluon ping-pong forward; a bias the Triton one
            assert r["kernels"] == (["_fwd_kernel"] if c["bias"] else ["_fwd_sm90"]), r["kernels"]
            assert r["config_gluon"]
        else:
            assert r["calls"] == 4, r["kernels"]   # forward (saving lse), delta, dK/dV, dQ
            want = [[[b, h, s, d], "bfloat16"]] * 3 + [[[d, lat], "bfloat16"]] * 2
            if c["bias"]:
                want.append([[b, h, s, s], "bfloat16"])
            assert r["out_avals"] == want, r["out_avals"]
        if not c["bias"]:   # a bias argument (and its gradient) is itself seq × seq
            assert not _has_square(r["text"], s), (c, r["kind"])

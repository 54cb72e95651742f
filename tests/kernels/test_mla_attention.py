"""`mla_attention` (XLA naive/absorbed forms, Pallas TPU in interpret mode, TPU export) and
`flash_mla_attention` against float64 NumPy references written here, plus a cpu store
built and served end to end."""
import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ejaot
from conftest import TINY_FLASH_MLA_TABLE, build_cpu_store
from reference import flash_mla_reference, softmax_rows
from ejaot.errors import CallError
from ejaot_kernels.flash_mla_attention import SPEC as FLASH_SPEC, flash_mla_attention
from ejaot_kernels.flash_mla_attention.xla import flash_mla_attention_impl
from ejaot_kernels.mla_attention import SPEC, mla_attention
from ejaot_kernels.mla_attention import pallas_tpu, xla
from ejaot_kernels.mla_attention.configs import choose_form, tpu_heuristic

BF16 = ml_dtypes.bfloat16
TOL = {np.float32: 2e-5, BF16: 3e-2}


# -- float64 references --------------------------------------------------------------

def mla_reference(query, key_value, w_kc, w_vc, b_q=None, b_k=None, cu_seqlens=None, *,
                  causal=False, softmax_scale=None):
    f = lambda x: None if x is None else np.asarray(x, np.float64)
    q, kv, wk, wv, bq, bk = map(f, (query, key_value, w_kc, w_vc, b_q, b_k))
    rope = 0 if bq is None else bq.shape[-1]
    scale = (q.shape[-1] + rope) ** -0.5 if softmax_scale is None else softmax_scale
    if cu_seqlens is not None:
        # packed sequences are independent problems: solve each alone; tokens outside every
        # sequence see nothing (zeros)
        out = np.zeros(q.shape)
        cu = np.asarray(cu_seqlens)
        for a, e in zip(cu[:-1], cu[1:]):
            if e > a:
                part = lambda x: None if x is None else x[:, a:e]
                out[:, a:e] = mla_reference(q[:, a:e], kv[:, a:e], wk, wv, part(bq), part(bk),
                                            causal=causal, softmax_scale=scale)
        return out
    b, s, hq, d = q.shape
    t, hk = kv.shape[1], wk.shape[1]
    keep = np.ones((s, t), bool)
    if causal:
        keep = np.arange(t)[None, :] <= np.arange(s)[:, None] + (t - s)
    out = np.zeros((b, s, hq, d))
    for h in range(hq):
        kh = h // (hq // hk)
        key, value = kv @ wk[:, kh], kv @ wv[:, kh]                     # [b, t, d]
        logits = np.einsum("bsd,btd->bst", q[:, :, h], key)
        if bq is not None:
            logits = logits + np.einsum("bse,bte->bst", bq, bk)
        p = softmax_rows(logits * scale, keep[None])
        out[:, :, h] = np.einsum("bst,btd->bsd", p, value)
    return out


def close(got, want, dtype):
    assert np.all(np.isfinite(np.asarray(got, np.float64)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=TOL[dtype], rtol=TOL[dtype])


# -- inputs ------------------------------------------------------------------------------

def mla_inputs(rng, *, b=2, s=8, t=None, hq=4, hk=2, d=16, r=32, e=8, rope=True, dtype=np.float32,
               cu=None):
    dims = dict(batch=b, seq=s, kv_seq=s if t is None else t, q_heads=hq, kv_heads=hk, head_dim=d,
                kv_lora_rank=r, rope_dim=e, num_seqs_plus_one=2)
    present = ("b_q", "b_k") if rope else ()
    x = SPEC.make_inputs(dims, np.dtype(dtype), present, {}, rng)
    if cu is not None:
        x["cu_seqlens"] = np.asarray(cu, np.int32)
    return x


ORDER = ("query", "key_value", "w_kc", "w_vc", "b_q", "b_k", "cu_seqlens")


def args(x):
    return [x.get(n) for n in ORDER]


def full_inputs(x):
    return {n: (None if x.get(n) is None else jnp.asarray(x[n])) for n in ORDER}


def run_xla(x, form, valid=None, **static):
    valid = jnp.array(valid if valid is not None else (x["query"].shape[1], x["key_value"].shape[1]), jnp.int32)
    static = {"causal": False, "softmax_scale": None, **static}
    fn = jax.jit(lambda i, v: xla.mla_attention_impl(i, v, config={"form": form}, **static)[0])
    return fn(full_inputs(x), valid)


def run_pallas(x, form, valid=None, block_q=8, block_k=8, **static):
    valid = jnp.array(valid if valid is not None else (x["query"].shape[1], x["key_value"].shape[1]), jnp.int32)
    static = {"causal": False, "softmax_scale": None, **static}
    cfg = {"form": form, "block_q": block_q, "block_k": block_k, "interpret": True}
    return pallas_tpu.mla_attention_impl(full_inputs(x), valid, config=cfg, **static)[0]


CASES = {
    "mha_plain": dict(hq=4, hk=4, rope=False),
    "rope_causal": dict(causal=True),
    "gqa_rope_causal": dict(hq=8, hk=2, causal=True),
    "mqa_decode": dict(s=1, t=24, hq=4, hk=1, causal=True),
    "q_shorter_than_kv": dict(s=3, t=20, causal=True),            # bottom-right alignment
    "q_longer_than_kv": dict(s=12, t=8, causal=True),             # first rows see no key -> 0
    "explicit_scale": dict(softmax_scale=0.2),
}


def _split(case):
    static = {k: case[k] for k in ("causal", "softmax_scale") if k in case}
    shape = {k: v for k, v in case.items() if k not in static}
    return shape, static


# -- mla_attention: XLA ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("form", ["naive", "absorbed"])
@pytest.mark.parametrize("name", list(CASES))
def test_mla_xla_forms_match_reference(rng, name, form, dtype):
    shape, static = _split(CASES[name])
    x = mla_inputs(rng, dtype=dtype, **shape)
    got = run_xla(x, form, **static)
    assert got.dtype == jnp.dtype(dtype) and got.shape == x["query"].shape
    close(got, mla_reference(*args(x), **static), dtype)


def test_mla_q_longer_rows_without_keys_are_zero(rng):
    x = mla_inputs(rng, s=12, t=8)
    for form in ("naive", "absorbed"):
        out = np.asarray(run_xla(x, form, causal=True))
        assert np.all(out[:, :4] == 0) and np.all(np.abs(out[:, 4:]).sum(-1) > 0)


@pytest.mark.parametrize("name", ["rope_causal", "mqa_decode", "q_shorter_than_kv"])
def test_mla_public_function_auto_form(rng, name):
    shape, static = _split(CASES[name])
    x = mla_inputs(rng, **shape)
    close(mla_attention(*args(x)[:6], **static), mla_reference(*args(x), **static), np.float32)


def test_form_choice_follows_cost():
    ds = dict(batch=1, q_heads=128, kv_heads=128, head_dim=128, kv_lora_rank=512)
    assert choose_form({**ds, "seq": 1, "kv_seq": 4096}) == "absorbed"
    assert choose_form({**ds, "seq": 1024, "kv_seq": 1024}) == "naive"
    assert choose_form({**ds, "seq": 128, "q_heads": 16, "kv_heads": 16}) == "naive"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("form", ["naive", "absorbed"])
def test_mla_cu_seqlens_packing(rng, form, causal):
    # an empty sequence (7, 7) and trailing tokens 18, 19 outside every sequence
    cu = [0, 7, 7, 12, 18]
    x = mla_inputs(rng, b=1, s=20, hq=4, hk=2, cu=cu)
    want = mla_reference(*args(x), causal=causal)
    assert np.all(want[:, 18:] == 0)
    close(run_xla(x, form, causal=causal), want, np.float32)
    if form == "naive":       # also through the public function and the Pallas routing
        close(mla_attention(*args(x), causal=causal), want, np.float32)
        close(run_pallas(x, None, causal=causal), want, np.float32)


def test_mla_call_checks(rng):
    x = mla_inputs(rng, b=2, s=6)
    with pytest.raises(CallError, match="both b_q and b_k"):
        mla_attention(x["query"], x["key_value"], x["w_kc"], x["w_vc"], b_q=x["b_q"])
    with pytest.raises(CallError, match="cu_seqlens needs batch 1"):
        mla_attention(*args(x)[:6], cu_seqlens=np.array([0, 3, 6], np.int32))
    with pytest.raises(CallError, match="not a multiple of kv_heads"):
        mla_attention(*args(mla_inputs(rng, hq=3, hk=2))[:6])


def _pad_mla(rng, x, s_pad, t_pad):
    """Pads along seq/kv_seq with random garbage: masking, not zeros, must hide it."""
    def pad(a, axis, n):
        extra = list(a.shape)
        extra[axis] = n - a.shape[axis]
        return np.concatenate([a, rng.standard_normal(extra).astype(a.dtype) * 3], axis=axis)
    y = dict(x)
    y["query"], y["key_value"] = pad(x["query"], 1, s_pad), pad(x["key_value"], 1, t_pad)
    if x.get("b_q") is not None:
        y["b_q"], y["b_k"] = pad(x["b_q"], 1, s_pad), pad(x["b_k"], 1, t_pad)
    return y


@pytest.mark.parametrize("runner", ["xla", "pallas"])
@pytest.mark.parametrize("form", ["naive", "absorbed"])
def test_mla_padded_valid_lens(rng, runner, form):
    # causal alone would hide padded keys from real queries; the full case needs the kv_len mask
    for s, t, sp, tp, causal in ((5, 13, 8, 24, True), (1, 17, 4, 32, True), (6, 11, 8, 20, False)):
        x = mla_inputs(rng, s=s, t=t, hq=4, hk=2)
        want = mla_reference(*args(x), causal=causal)
        y = _pad_mla(rng, x, sp, tp)
        run = run_xla if runner == "xla" else run_pallas
        got = np.asarray(run(y, form, valid=(s, t), causal=causal))
        assert got.shape[1] == sp
        close(got[:, :s], want, np.float32)


# -- mla_attention: Pallas TPU (interpret mode) ------------------------------------------

PALLAS_CASES = ["mha_plain", "gqa_rope_causal", "mqa_decode", "q_longer_than_kv"]


@pytest.mark.parametrize("form", ["naive", "absorbed"])
@pytest.mark.parametrize("name", PALLAS_CASES)
def test_mla_pallas_interpret_matches_reference(rng, name, form):
    shape, static = _split(CASES[name])
    x = mla_inputs(rng, **shape)
    # small blocks: several q and kv blocks, so the online softmax and block skip both run
    got = run_pallas(x, form, **static)
    assert got.dtype == jnp.float32
    close(got, mla_reference(*args(x), **static), np.float32)


def test_mla_pallas_interpret_bf16_and_uneven_blocks(rng):
    x = mla_inputs(rng, s=9, t=21, hq=8, hk=2, dtype=BF16)
    want = mla_reference(*args(x), causal=True)
    for form in ("naive", "absorbed"):
        got = run_pallas(x, form, block_q=16, block_k=16, causal=True)
        assert got.dtype == jnp.bfloat16
        close(got, want, BF16)


@pytest.mark.parametrize("form,s,t,hq,r", [("naive", 128, 128, 4, 128), ("absorbed", 1, 512, 16, 512),
                                           ("absorbed", 128, 128, 2, 128)])
def test_mla_pallas_exports_for_tpu(form, s, t, hq, r):
    """The entry function build lowers, exported for TPU on this CPU host (Mosaic lowering)."""
    from ejaot.artifact.function import kernel_function
    dims = dict(batch=2, seq=s, kv_seq=t, q_heads=hq, kv_heads=hq, head_dim=128, kv_lora_rank=r,
                rope_dim=64, num_seqs_plus_one=2)
    config = {**tpu_heuristic(dims, {}, None), "form": form}
    fn = kernel_function(SPEC, "pallas_tpu", ("b_q", "b_k"), {"causal": True, "softmax_scale": None}, config)
    bf = jnp.bfloat16
    avals = [jax.ShapeDtypeStruct(SPEC.shape_of(a, dims), bf) for a in SPEC.inputs if a.name != "cu_seqlens"]
    exported = jax.export.export(jax.jit(fn), platforms=("tpu",))(*avals, jax.ShapeDtypeStruct((2,), jnp.int32))
    assert exported.platforms == ("tpu",)
    assert "tpu_custom_call" in exported.mlir_module()
    assert exported.out_avals[0].shape == (2, s, hq, 128) and exported.out_avals[0].dtype == bf
    assert len(exported.serialize()) > 0


# -- flash_mla_attention ------------------------------------------------------------------

def flash_inputs(rng, *, b=2, h=3, s=10, d=16, lat=8, bias=False, dtype=np.float32):
    dims = dict(batch=b, heads=h, seq=s, head_dim=d, latent_dim=lat)
    return FLASH_SPEC.make_inputs(dims, np.dtype(dtype), ("bias",) if bias else (), {}, rng)


FLASH_ORDER = ("query", "key", "value", "latent_key", "latent_value", "bias")


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_mla_matches_reference(rng, causal, bias, dtype):
    x = flash_inputs(rng, bias=bias, dtype=dtype)
    a = [x.get(n) for n in FLASH_ORDER]
    got = flash_mla_attention(*a, causal=causal)
    assert got.dtype == jnp.dtype(dtype) and got.shape == x["query"].shape
    close(got, flash_mla_reference(*a, causal=causal), dtype)


def test_flash_mla_scale_and_padded_valid_len(rng):
    x = flash_inputs(rng, s=7, bias=True)
    a = [x.get(n) for n in FLASH_ORDER]
    want = flash_mla_reference(*a, causal=True, softmax_scale=0.5)
    close(flash_mla_attention(*a, causal=True, softmax_scale=0.5), want, np.float32)
    pad = lambda v, w: np.pad(v, w, constant_values=5.0)
    inputs = {n: jnp.asarray(v) for n, v in x.items()}
    for n in ("query", "key", "value"):
        inputs[n] = jnp.asarray(pad(x[n], [(0, 0), (0, 0), (0, 5), (0, 0)]))
    inputs["bias"] = jnp.asarray(pad(x["bias"], [(0, 0), (0, 0), (0, 5), (0, 5)]))
    out = flash_mla_attention_impl(inputs, jnp.array([7], jnp.int32), config={}, causal=False, softmax_scale=0.5)[0]
    close(out[:, :, :7], flash_mla_reference(*a, causal=False, softmax_scale=0.5), np.float32)


# -- end to end through a built store ------------------------------------------------------

TINY_MANIFEST = """
format = 1
[[kernel]]
name = "mla_attention"
dtypes = ["float32"]
inputs = ["b_q", "b_k"]
[kernel.dims]
batch = 1
seq = 16
q_heads = 4
kv_heads = 2
head_dim = 16
kv_lora_rank = 32
rope_dim = 8
[kernel.static]
causal = true
""" + TINY_FLASH_MLA_TABLE


def test_store_serves_mla_exact_padded_and_fallback(tmp_path, rng):
    out, bundle = build_cpu_store(tmp_path, TINY_MANIFEST, entries=2)
    for s, t in ((16, 16), (5, 13), (20, 20)):        # exact, padded, no covering bucket
        x = mla_inputs(rng, b=1, s=s, t=t, hq=4, hk=2, d=16, r=32, e=8)
        got = bundle.call("mla_attention", *args(x)[:6], causal=True)
        assert got.shape == (1, s, 4, 16)
        close(got, mla_reference(*args(x), causal=True), np.float32)
    assert bundle.stats()["calls"] == {"exact": 1, "padded": 1, "fallback": 1}

    flash = ejaot.load(out)
    x = flash_inputs(rng, b=1, h=2, s=11, d=16, lat=8)
    a = [x.get(n) for n in FLASH_ORDER]
    close(flash.call("flash_mla_attention", *a, causal=True), flash_mla_reference(*a, causal=True), np.float32)
    assert flash.stats()["calls"]["padded"] == 1


def test_mla_manifest_plans_each_form_where_it_is_cheaper():
    from pathlib import Path
    from ejaot.build.manifest import load_manifest
    from ejaot.build.plan import plan
    from ejaot.targets import get_target
    m = load_manifest(Path(__file__).resolve().parents[2] / "manifests" / "default.toml")
    for target in ("cpu", "tpu-v5e"):
        entries, skipped = plan(m, get_target(target))
        assert not skipped
        mla = [e for e in entries if e.kernel == "mla_attention"]
        assert len(mla) == 24
        for e in mla:
            if e.kernel == "mla_attention":
                assert e.config["form"] == ("absorbed" if e.dims["seq"] == 1 else "naive"), e.describe()

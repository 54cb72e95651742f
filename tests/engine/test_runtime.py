"""Loading a store and dispatching calls: exact, padded, fallback, strict, jit, threads."""
import json
import threading

import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ejaot
import ejaot_kernels.attention
import ejaot_kernels.page_attention
from ejaot.errors import BucketMissError, CallError
from conftest import qkv
from reference import attention_reference


def check(out, q, k, v, dtype=np.float32, **static):
    tol = 2e-5 if dtype == np.float32 else 3e-2
    want = attention_reference(q, k, v, **static)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=tol, rtol=tol)


def test_exact_padded_and_fallback_each_counted_once(store_copy, rng):
    bundle = ejaot.load(store_copy)
    assert bundle.stats()["rejected"] == []
    q, k, v = qkv(rng, 2, 32)
    check(bundle.call("attention", q, k, v, causal=True), q, k, v, causal=True)
    q, k, v = qkv(rng, 1, 21)                    # padded into batch=1 seq=32
    out = bundle.call("attention", q, k, v, causal=True)
    assert out.shape == (1, 21, 4, 16)
    check(out, q, k, v, causal=True)
    q, k, v = qkv(rng, 3, 40)                    # larger than every bucket
    check(bundle.call("attention", q, k, v, causal=True), q, k, v, causal=True)
    s = bundle.stats()
    assert s["calls"] == {"exact": 1, "padded": 1, "fallback": 1}
    assert s["tiers"] == {"compiled": 2, "portable": 0, "jit": 1}
    assert s["fallback_backend"] == {"attention": ["xla"]}


def test_stats_list_every_backend_a_kernels_fallbacks_ran(store_copy, rng, monkeypatch):
    """A backend may take only some shapes (Backend.supports), so one kernel's fallbacks can
    run on several backends: stats names each, not the last one."""
    from ejaot.artifact import function
    from ejaot.runtime import dispatch
    chosen = lambda spec, platform, dims, static: "xla" if dims["seq"] < 40 else "other"
    monkeypatch.setattr(dispatch, "fallback_backend", chosen)
    monkeypatch.setattr(dispatch, "jitted", lambda spec, backend, present, static:
                        function.jitted(spec, "xla", present, static))
    bundle = ejaot.load(store_copy)
    for seq in (40, 48, 40):                      # both larger than every bucket
        q, k, v = qkv(rng, 1, seq)
        check(bundle.call("attention", q, k, v, causal=True), q, k, v, causal=True)
    assert bundle.stats()["fallback_backend"] == {"attention": ["other"]}
    q, k, v = qkv(rng, 3, 33)                     # batch 3: no bucket either
    check(bundle.call("attention", q, k, v, causal=True), q, k, v, causal=True)
    assert bundle.stats()["fallback_backend"] == {"attention": ["other", "xla"]}


def test_padded_picks_the_smallest_covering_bucket(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 9)
    bundle.call("attention", q, k, v, causal=True)
    plan = next(iter(bundle._plans.values()))
    assert plan.path == "padded" and plan.entry.record["dims"]["seq"] == 16
    assert plan.entry.record["dims"]["batch"] == 1


def test_bf16_and_kv_longer_than_queries(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 2, 16, dtype=ml_dtypes.bfloat16)
    out = bundle.call("attention", q, k, v, causal=True)
    assert out.dtype == jnp.bfloat16
    check(out, q, k, v, dtype=ml_dtypes.bfloat16, causal=True)
    # seq 5 over kv 20: pads to the seq=kv=32 bucket; bottom-right causal stays exact
    q, k, v = qkv(rng, 1, 5, t=20)
    out = bundle.call("attention", q, k, v, causal=True)
    check(out, q, k, v, causal=True)
    assert bundle.stats()["calls"]["padded"] == 1


def test_static_mismatch_goes_to_fallback(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 16)
    check(bundle.call("attention", q, k, v, causal=False), q, k, v)
    assert bundle.stats()["calls"]["fallback"] == 1


def test_numpy_scalar_and_dtype_statics_each_get_their_own_plan(store_copy, rng):
    """1 / np.sqrt(d) is an np.float64 (np.float32(d) ** -0.5 an np.float32) and jnp.bfloat16
    is callable: all are static values, so a call with another value must not reuse the
    first one's plan (eager and under jit)."""
    bundle = ejaot.load(store_copy, miss_log=False)
    q, k, v = qkv(rng, 2, 32)
    for scale in (np.float64(0.05), np.float64(1.0), np.float32(0.25), np.float64(0.05), np.float32(0.5)):
        check(bundle.call("attention", q, k, v, causal=True, softmax_scale=scale), q, k, v, causal=True,
              softmax_scale=float(scale))
        jitted = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True, softmax_scale=scale))
        check(jitted(q, k, v), q, k, v, causal=True, softmax_scale=float(scale))
    # a NumPy bool is a static's value too: it reaches the stored causal entry
    before = bundle.stats()["calls"]["exact"]
    check(bundle.call("attention", q, k, v, causal=np.True_), q, k, v, causal=True)
    assert bundle.stats()["calls"]["exact"] == before + 1
    # under jit: two functions (arrays by keyword; key and value closed over), two traces
    # each (32 and 16 tokens), np.True_ and np.float32 statics; then eager again
    by_keyword = jax.jit(lambda q, k, v: bundle.call("attention", query=q, key=k, value=v, causal=np.True_,
                                                     softmax_scale=np.float32(0.25)))
    for s in (32, 16, 32):
        qs, ks, vs = q[:, :s], k[:, :s], v[:, :s]
        closed = jax.jit(lambda q: bundle.call("attention", q, ks, vs, causal=np.True_))
        check(by_keyword(qs, ks, vs), qs, ks, vs, causal=True, softmax_scale=0.25)
        check(closed(qs), qs, ks, vs, causal=True)
    assert bundle.stats()["calls"]["exact"] > before + 1          # the 32-token traces hit the entry
    check(bundle.call("attention", q, k, v, causal=np.True_), q, k, v, causal=True)
    want = {d: np.asarray(ejaot_kernels.attention.attention(q, k, v, causal=True, softmax_dtype=d))
            for d in (jnp.float32, jnp.bfloat16)}
    assert np.abs(want[jnp.float32] - want[jnp.bfloat16]).max() > 1e-4     # the two differ
    for d in (jnp.float32, jnp.bfloat16, jnp.float32):
        got = bundle.call("attention", q, k, v, causal=True, softmax_dtype=d)
        np.testing.assert_allclose(np.asarray(got), want[d], atol=1e-6, rtol=1e-6)


def test_call_keywords_key_plans_by_presence_not_value(store_copy, rng):
    """page_attention drops ejkernel's scheduling keywords (max_context_len, ...) at every
    call: a decode loop passing a new value each step reuses one plan and logs one miss."""
    bundle = ejaot.load(store_copy)
    kc = rng.standard_normal((2, 32, 4, 16)).astype(np.float32)
    want = None
    for step in range(12):
        ctx = np.full((3,), 1 + step, np.int32)
        q = rng.standard_normal((3, 4, 16)).astype(np.float32)
        out = bundle.call("page_attention", q, kc, kc, ctx, np.zeros((3, 4), np.int32),
                          max_context_len=int(ctx.max()))
        want = ejaot_kernels.page_attention.page_attention(q, kc, kc, ctx, np.zeros((3, 4), np.int32))
        np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-6, rtol=1e-6)
    assert len(bundle._plans) == 1, list(bundle._plans)
    bundle.misses.flush()
    lines = [json.loads(x) for x in (store_copy / "misses.jsonl").read_text().splitlines()]
    assert sum(x["count"] for x in lines) == 12 and len({json.dumps(x["dims"]) for x in lines}) == 1
    # under jit: keyword arrays, the cache closed over, two traces (3 and 2 sequences), a new
    # max_context_len per step; then eager again
    for n in (3, 2, 3):
        for step in range(3):
            ctx = np.full((n,), 2 + step, np.int32)
            q = rng.standard_normal((n, 4, 16)).astype(np.float32)
            f = jax.jit(lambda q, ctx, m=int(ctx.max()): bundle.call(
                "page_attention", query=q, key_cache=kc, value_cache=kc, context_lens=ctx,
                block_tables=np.zeros((n, 4), np.int32), max_context_len=m))
            want = ejaot_kernels.page_attention.page_attention(q, kc, kc, ctx, np.zeros((n, 4), np.int32))
            np.testing.assert_allclose(np.asarray(f(q, ctx)), np.asarray(want), atol=1e-6, rtol=1e-6)
    out = bundle.call("page_attention", q, kc, kc, ctx, np.zeros((3, 4), np.int32), max_context_len=99)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-6, rtol=1e-6)
    assert len(bundle._plans) == 1, list(bundle._plans)     # still the one eager plan


def test_a_call_keyword_given_as_none_is_not_given(store_copy, rng):
    """init_bias=None adds no bias, init_bias=fn does: the two are different plans (one
    plan would serve the second call without its bias); np.float32 as a dtype argument is
    cached like jnp.float32."""
    bundle = ejaot.load(store_copy, miss_log=False)
    q, k, v = qkv(rng, 2, 32)
    bias = rng.standard_normal((2, 4, 32, 32)).astype(np.float32)
    check(bundle.call("attention", q, k, v, causal=True, init_bias=None), q, k, v, causal=True)
    check(bundle.call("attention", q, k, v, causal=True, init_bias=lambda: bias), q, k, v, bias=bias, causal=True)
    for given in (None, lambda: bias, None):          # under jit too, then eager again
        f = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True, init_bias=given))
        check(f(q, k, v), q, k, v, causal=True, **({} if given is None else {"bias": bias}))
    check(bundle.call("attention", q, k, v, causal=True, init_bias=lambda: bias), q, k, v, bias=bias, causal=True)
    for _ in range(2):
        bundle.call("attention", q, k, v, causal=True, softmax_dtype=np.float32)
    assert len(bundle._plans) == 3, list(bundle._plans)


def test_inside_jit_uses_portable_tier(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 2, 20)
    f = jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True) * 2)
    out = f(q, k, v)
    np.testing.assert_allclose(np.asarray(out) / 2, attention_reference(q, k, v, causal=True), atol=2e-5, rtol=2e-5)
    s = bundle.stats()
    assert s["tiers"]["portable"] == 1 and s["calls"]["padded"] == 1


def test_strict_mode_raises_naming_nearest_buckets(store_copy, rng):
    bundle = ejaot.load(store_copy, strict=True)
    q, k, v = qkv(rng, 1, 16)
    bundle.call("attention", q, k, v, causal=True)
    q, k, v = qkv(rng, 1, 64)
    with pytest.raises(BucketMissError, match=r"seq=64.*nearest buckets: .*seq=32"):
        bundle.call("attention", q, k, v, causal=True)
    with pytest.raises(BucketMissError, match="no stored entry"):
        bundle.call("attention", *qkv(rng, 1, 16), causal=False)


def test_strict_miss_on_a_static_argument_shows_both_statics(store_copy, rng):
    bundle = ejaot.load(store_copy, strict=True, miss_log=False)
    with pytest.raises(BucketMissError) as e:
        bundle.call("attention", *qkv(rng, 1, 16), causal=False)
    call, stored = str(e.value).split("stored entries of this kernel:")
    assert "causal=False" in call and "causal=True" in stored, str(e.value)


def test_misses_are_logged_once_per_signature(store_copy, rng):
    bundle = ejaot.load(store_copy)
    for _ in range(3):
        bundle.call("attention", *qkv(rng, 1, 48), causal=True)
    bundle.call("attention", *qkv(rng, 1, 50), causal=True)
    lines = (store_copy / "misses.jsonl").read_text().splitlines()
    assert [json.loads(x)["dims"]["seq"] for x in lines] == [48, 50]
    assert bundle.stats()["calls"]["fallback"] == 4


def test_one_miss_line_across_traces_and_argument_layouts(store_copy, rng):
    """The same uncovered shape called eagerly by position and by keyword and from two
    jitted functions: one first line in the miss log, every call counted."""
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 40)
    bundle.call("attention", q, k, v, causal=True)
    bundle.call("attention", query=q, key=k, value=v, causal=True)
    jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True))(q, k, v)
    jax.jit(lambda q, k, v: bundle.call("attention", q, k, v, causal=True) + 1)(q, k, v)
    bundle.misses.flush()
    lines = [json.loads(x) for x in (store_copy / "misses.jsonl").read_text().splitlines()]
    assert len({json.dumps(x["dims"], sort_keys=True) for x in lines}) == 1
    assert [x["count"] for x in lines][0] == 1 and sum(x["count"] for x in lines) == 4, lines
    assert len(lines) == 2      # the first line, then one line of the counts since


def test_bad_arguments_get_clear_errors(store_copy, rng):
    bundle = ejaot.load(store_copy)
    q, k, v = qkv(rng, 1, 16)
    with pytest.raises(CallError, match="unknown kernel 'atention'"):
        bundle.call("atention", q, k, v)
    with pytest.raises(CallError, match=r"'query' must have 4 dimensions"):
        bundle.call("attention", q[0], k, v)
    with pytest.raises(CallError, match=r"dimension 'batch' is 1 in 'query' but 2 in 'key'"):
        bundle.call("attention", q, np.concatenate([k, k]), v)
    with pytest.raises(CallError, match="unexpected argument 'casual'"):
        bundle.call("attention", q, k, v, casual=True)
    with pytest.raises(CallError, match="sliding_window must be"):
        bundle.call("attention", q, k, v, sliding_window="wide")
    with pytest.raises(CallError, match="not a multiple of kv_heads"):
        bundle.call("attention", *qkv(rng, 1, 16, hq=3, hk=2))


def test_concurrent_calls_from_threads(store_copy, rng):
    bundle = ejaot.load(store_copy)
    shapes = [(2, 32), (1, 21), (1, 40), (2, 7)]
    cases = [(qkv(rng, b, s)) for b, s in shapes]
    wants = [attention_reference(*c, causal=True) for c in cases]
    errors = []

    def worker(i):
        try:
            for j in range(12):
                c = (i + j) % len(cases)
                out = bundle.call("attention", *cases[c], causal=True)
                np.testing.assert_allclose(np.asarray(out), wants[c], atol=2e-5, rtol=2e-5)
        except Exception as e:   # collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    s = bundle.stats()["calls"]
    assert sum(s.values()) == 96 and s["fallback"] == 24
    assert len((store_copy / "misses.jsonl").read_text().splitlines()) == 1


def test_eager_load_materializes_every_entry(store_copy):
    bundle = ejaot.load(store_copy, eager=True)
    assert all(e._compiled is not None and e._compiled is not False for e in bundle.entries.values())
    assert bundle.warmup() == {"compiled": 8}


def _count_loads(bundle) -> list:
    """Wraps every entry's compiled-tier loader; returns the keys in the order loads start."""
    started = []
    for e in bundle.entries.values():
        orig = e._load_compiled
        e._load_compiled = (lambda e=e, orig=orig: (started.append(e.key), orig())[1])
    return started


def test_warmup_on_threads_and_in_background(store_copy, rng):
    serial = ejaot.load(store_copy)
    assert serial.warmup(threads=1) == {"compiled": 8}
    bundle = ejaot.load(store_copy, eager="background")
    q, k, v = qkv(rng, 2, 32)         # may run while the warm-up threads are still loading
    check(bundle.call("attention", q, k, v, causal=True), q, k, v, causal=True)
    assert bundle.wait_warm(timeout=120)
    entries = bundle.entries.values()
    assert len(entries) == 8
    loads = _count_loads(bundle)
    # every compiled tier was loaded by the warm-up: asking for it loads nothing, and
    # warming up again loads nothing a second time
    assert all(e.compiled() is not None for e in entries) and loads == []
    assert bundle.warmup(threads=4) == {"compiled": 8} and loads == []
    s = bundle.stats()
    assert s["calls"] == {"exact": 1, "padded": 0, "fallback": 0} and s["warmup_errors"] == []
    with pytest.raises(ValueError, match="eager must be"):
        ejaot.load(store_copy, eager="yes")
    assert ejaot.load(store_copy, eager=None).entries     # falsy: lazy


def test_background_warmup_survives_an_immediate_exit(store_copy):
    """The process may end right after load: the warm-up threads exist by then (they are
    never created during interpreter shutdown) and the exit waits for them."""
    import subprocess
    import sys
    code = ("import sys, ejaot; b = ejaot.load(sys.argv[1], eager='background', miss_log=False)")
    r = subprocess.run([sys.executable, "-c", code, str(store_copy)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_warmup_of_named_kernels_only(store_copy):
    bundle = ejaot.load(store_copy)
    assert bundle.warmup(kernels=["attention"]) == {"compiled": 8}
    assert bundle.warmup(kernels="page_attention") == {}      # installed, none stored
    with pytest.raises(ValueError, match=r"unknown kernel\(s\) \['atention'\]"):
        bundle.warmup(kernels=["atention"])


def test_warmup_starts_no_entry_while_a_call_loads_one(store_copy, rng):
    bundle = ejaot.load(store_copy)
    started = _count_loads(bundle)
    with bundle._calls_first.loading():       # a call is resolving its plan
        warm = threading.Thread(target=bundle.warmup, kwargs={"threads": 2})
        warm.start()
        warm.join(0.5)
        assert warm.is_alive() and started == []
    warm.join(60)
    assert not warm.is_alive() and len(started) == 8


def test_nothing_sees_a_kernel_another_thread_is_opening(store_copy, rng, monkeypatch):
    """Neither a kernel's first call nor `entries` may see its records half accepted by
    another thread (a warm-up, or a concurrent first call): the call would miss."""
    import time
    bundle = ejaot.load(store_copy)
    accept, started = bundle.catalog.accept, threading.Event()

    def slow_accept(kernel, records):
        started.set()
        time.sleep(0.3)
        accept(kernel, records)
    monkeypatch.setattr(bundle.catalog, "accept", slow_accept)
    opener = threading.Thread(target=bundle.catalog.ensure_kernel, args=("attention",))
    opener.start()
    assert started.wait(10)
    assert len(bundle.entries) == 8
    q, k, v = qkv(rng, 2, 32)
    check(bundle.call("attention", q, k, v, causal=True), q, k, v, causal=True)
    opener.join()
    assert bundle.stats()["calls"] == {"exact": 1, "padded": 0, "fallback": 0}


def test_read_only_store_still_serves(store_copy, rng):
    import os
    os.chmod(store_copy, 0o555)
    try:
        bundle = ejaot.load(store_copy)
        q, k, v = qkv(rng, 1, 50)
        check(bundle.call("attention", q, k, v, causal=True), q, k, v, causal=True)
        if os.geteuid() != 0:  # root ignores permissions
            assert "not writable" in bundle.stats()["miss_log_error"]
    finally:
        os.chmod(store_copy, 0o755)

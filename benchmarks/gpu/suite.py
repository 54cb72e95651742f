"""The GPU kernel benchmark suite: times the kernels of a store made by `ejaot build` (and, on
the GPU host, `ejaot finalize`) through `ejaot.load(store).call(...)`, against the card's own
measured copy bandwidth and matmul rate, and writes one JSON document.

    python -m benchmarks.gpu.suite --store DIR --out gpu_results.json [--verify-json F]
    python -m benchmarks.gpu.suite --store DIR --out F --smoke     # CPU, tiny shapes

(benchmarks/gpu/run.sh does build/reuse -> finalize -> verify -> this; report.py turns the
JSON into BENCHMARKS.md tables.)

What it measures, in one process:

1. The device's rates, never a constant: copy bandwidth, a jitted `jnp.copy` of a large
   buffer (1 GiB on a GPU, less when memory is short), bytes = 2 x size (read + write);
   dense matmul rate, jitted `a @ b` of n x n bfloat16 matrices (float32 accumulation) at a
   couple of sizes (4096, 8192, 16384 on a GPU), FLOPs = 2 n^3, the best size kept. Both
   timed like the kernels (timing.py), median per call.
2. Every entry of flash_attention, flash_mla_attention, mla_attention, paged_mla_attention
   and page_attention in the store (or those of --kernel), called through the bundle on device-made random inputs
   (paged kernels: every sequence a full context, max_blocks x page_size tokens, on distinct
   shuffled pages): the whole call, as a server makes it: `jax.jit` of `bundle.call` (the
   stored program inlined into the caller's, one dispatch per call). The same call made
   eagerly, which runs the compiled tier (the portable one when the store has none usable
   here) and pays the bundle's Python dispatch on every call, is timed beside it
   ("eager"). flash_attention also gets a
   forward+backward row (so does flash_mla_attention, differentiated in every input but the
   bias): `jax.jit` of `jax.vjp` through `bundle.call`, where the forward is
   the stored portable tier inlined and the backward is the entry's stored VJP when it was
   built with `vjp = true` (the kernel's own backward kernels, recomputing the forward), else
   the kernel's JIT function (recomputing the forward there, on the backend named in the
   row's "backward" field: triton where jax_triton is importable, else xla).
3. Per row: FLOPs and minimum bytes (roofline.py), TFLOP/s, GB/s, their fractions of the
   measured matmul rate and copy bandwidth, the bound (arithmetic intensity against the
   measured ridge point) and, for flash_attention, cuDNN on the same inputs
   (`jax.nn.dot_product_attention(..., implementation="cudnn")`) and our rate over its rate;
   for flash_mla_attention, its XLA backend (which materializes the scores) likewise, and
   both programs' compiled scratch memory ("temp_bytes"); where cuDNN is not tried (not a CUDA device, statics it cannot express) or fails, the
   reason is recorded. One row's failure is recorded in that row and the others go on; the
   JSON is rewritten after every row.

Input sets rotate (timing.py) so that the bytes touched across consecutive calls exceed
--rotate-mib (256 MiB on a GPU): a small case's inputs are not served from L2.

Output schema (schema "ejaot.gpu_bench/1"): one JSON object

    schema        "ejaot.gpu_bench/1"
    mode          "gpu" | "smoke"
    command       the command line as given (run.sh passes its own with --command)
    date          UTC, ISO 8601, when the run started
    commit        $EJAOT_COMMIT when set (a copied tree's git metadata can be stale), else
                  `git rev-parse --short HEAD` (+ "-dirty" when tracked files changed), else
                  "unknown"
    jax, jaxlib   versions
    device        {kind, platform, count, memory_bytes (bytes_limit, or null)}
    host          hostname
    store         {path, target, entries (all), timed_entries}
    settings      {iters, warmup, min_sample_s, rotate_bytes, cudnn}
    device_rates  {copy: {gbps, gbps_best, bytes, time, method},
                   matmul: {tflops, tflops_best, n, dtype, sizes: [{n, tflops, time} | {n, error}],
                            method},
                   call_floor: {us, us_best, time, method},
                   ridge_flops_per_byte}
                  ("gbps"/"tflops" from median times, "_best" from the fastest sample;
                   a failed measurement is {error})
    verify        {ok, summary} from `ejaot verify --json` (--verify-json), else null
    rows          one per kernel case:
        id          readable name, e.g. "flash_attention fwd B2 S8192 Hq16 Hk16 D128 causal"
        kernel, mode    mode: "fwd" | "fwd+bwd" (flash_attention, flash_mla_attention) | "decode"
        entry       the store entry's key
        dtype, dims, static, backend, config_source (the record's)
        served      {path: exact|padded|fallback, tier: compiled|portable|jit} of the timed call
        backward    (fwd+bwd rows) what ran the backward
        flops, bytes, bytes_parts (paged/MLA: cache, weights, io, tables)
        time        timing.time_call's result for the call under jax.jit: median_s, min_s,
                    samples_s, reps, iters, ...
        eager       fwd and decode rows: {time, tflops, gbps} of the same call made eagerly
        tflops, gbps, intensity, frac_matmul, frac_copy, ridge, bound ("compute"|"memory"),
                    frac_roofline   (roofline.roofline, from the median time)
        cudnn       flash rows: {status: "ok", time, tflops, ratio (ours/cuDNN rate)} |
                    {status: "skipped", reason} | {status: "error", error}; else null
        xla         flash_mla_attention rows: as cudnn, for its XLA backend, plus temp_bytes
        temp_bytes  flash_mla_attention rows: the timed program's compiled scratch memory
        verify      {ok, numerics, tiers, error} from the verify JSON for this entry, else null
        warning     null, or why the timed call was not served by the store's entry (a JIT
                    fallback still runs and is timed, but measures the wrong thing)
        error       null, or "Type: message" (then the rate fields may be missing)
    errors        run-level problems (a device-rate measurement that failed, ...)
    elapsed_s     wall time of the run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import json
import math
import os
import platform as _platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "ejaot.gpu_bench/1"
KERNELS = ("flash_attention", "flash_mla_attention", "mla_attention", "paged_mla_attention", "page_attention")
# Kernels timed forward and forward+backward, with the inputs their VJP differentiates (the
# leading ones of the argument list); the rest are decode kernels, timed as one call.
DIFFERENTIATED = {"flash_attention": ("query", "key", "value"),
                  "flash_mla_attention": ("query", "key", "value", "latent_key", "latent_value")}
SHARED = {"key_cache", "value_cache", "latent_cache", "rope_cache", "w_kc", "w_vc",   # same in every input set
          "latent_key", "latent_value"}
MAX_SETS = 16

GPU_DEFAULTS = dict(iters=20, warmup=3, min_sample_s=0.02, rotate_mib=256.0, copy_mib=1024.0,
                    matmul_sizes="4096,8192,16384")
SMOKE_DEFAULTS = dict(iters=3, warmup=1, min_sample_s=0.002, rotate_mib=1.0, copy_mib=8.0,
                      matmul_sizes="128,256")


def ensure_kernel_collection() -> None:
    """ejaot_kernels importable: installed (pip/-e), else this tree's kernels/ folder."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if importlib.util.find_spec("ejaot_kernels") is None:
        spec = importlib.util.spec_from_file_location(
            "ejaot_kernels", REPO / "kernels" / "__init__.py", submodule_search_locations=[str(REPO / "kernels")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["ejaot_kernels"] = mod
        spec.loader.exec_module(mod)


def git_commit() -> str:
    if os.environ.get("EJAOT_COMMIT"):
        return os.environ["EJAOT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0][:400] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"


def _timing_record(t: dict) -> dict:
    return {k: t[k] for k in ("median_s", "min_s", "samples_s", "reps", "iters", "warmup", "arg_sets", "method")}


# ---------------------------------------------------------------------------------------
# the device's own rates
# ---------------------------------------------------------------------------------------

def measure_copy(nbytes: int, timing: dict) -> dict:
    """Device-to-device copy bandwidth: jax.jit(jnp.copy) of an nbytes float32 buffer,
    counted as 2 x nbytes (read + write) per call."""
    import jax
    import jax.numpy as jnp
    from .timing import time_call
    n = max(1, nbytes // 4)
    x = jnp.arange(n, dtype=jnp.float32)
    copy = jax.jit(jnp.copy)
    t = time_call(copy, [(x,)], **timing)
    moved = 2 * n * 4
    out = {"gbps": moved / t["median_s"] / 1e9, "gbps_best": moved / t["min_s"] / 1e9, "bytes": n * 4,
           "time": _timing_record(t),
           "method": "jax.jit(jnp.copy) of a float32 buffer of `bytes`; GB/s = 2 x bytes (read + write) / time"}
    del x
    return out


def measure_matmul(sizes, timing: dict, dtype: str = "bfloat16") -> dict:
    """Dense matmul rate: jax.jit(a @ b), n x n `dtype` matrices (XLA's default precision:
    float32 accumulation on GPUs), 2 n^3 FLOPs per call; the best size is kept."""
    import jax
    import jax.numpy as jnp
    from .timing import time_call
    rows = []
    mm = jax.jit(jnp.matmul)
    for n in sizes:
        try:
            ka, kb = jax.random.split(jax.random.key(n))
            a = jax.random.normal(ka, (n, n), dtype)
            b = jax.random.normal(kb, (n, n), dtype)
            t = time_call(mm, [(a, b)], **timing)
            rows.append({"n": n, "tflops": 2.0 * n ** 3 / t["median_s"] / 1e12,
                         "tflops_best": 2.0 * n ** 3 / t["min_s"] / 1e12, "time": _timing_record(t)})
            del a, b
        except Exception as e:  # noqa: BLE001 - a size that does not fit is reported, the others count
            rows.append({"n": n, "error": _err(e)})
    ok = [r for r in rows if "tflops" in r]
    if not ok:
        raise RuntimeError("no matmul size ran: " + "; ".join(r["error"] for r in rows))
    best = max(ok, key=lambda r: r["tflops"])
    return {"tflops": best["tflops"], "tflops_best": max(r["tflops_best"] for r in ok), "n": best["n"],
            "dtype": dtype, "sizes": rows,
            "method": f"jax.jit(jnp.matmul) of n x n {dtype} matrices; TFLOP/s = 2 n^3 / time; best n kept"}


def measure_call_floor(timing: dict) -> dict:
    """The host's cost of one jitted call: jax.jit of a one-kernel program (a * 2 + 1, fused)
    on a 4 KB float32 array, back to back (4 arrays in turn). A decode row whose time is
    near this is paced by the host, not by its kernels."""
    import jax
    import jax.numpy as jnp
    from .timing import time_call
    xs = [jnp.full((1024,), float(i), jnp.float32) for i in range(4)]
    f = jax.jit(lambda a: a * 2.0 + 1.0)
    t = time_call(f, [(a,) for a in xs], **timing)
    return {"us": t["median_s"] * 1e6, "us_best": t["min_s"] * 1e6, "time": _timing_record(t),
            "method": "jax.jit(a * 2 + 1) of a 1024-element float32 array, back-to-back calls"}


# ---------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------

def case_id(kernel: str, mode: str, dims: dict, static: dict, dtype: str) -> str:
    d = dims
    if kernel == "flash_attention":
        s = f"B{d['batch']} S{d['seq']}" + (f" T{d['kv_seq']}" if d["kv_seq"] != d["seq"] else "")
        s += f" Hq{d['q_heads']} Hk{d['kv_heads']} D{d['head_dim']} " + ("causal" if static.get("causal") else "full")
        extra = [f"{k}={static[k]}" for k in ("sliding_window", "logits_soft_cap", "softmax_scale")
                 if static.get(k) is not None]
        s += "".join(" " + x for x in extra)
    elif kernel == "flash_mla_attention":
        s = (f"B{d['batch']} S{d['seq']} H{d['heads']} D{d['head_dim']} L{d['latent_dim']} "
             + ("causal" if static.get("causal") else "full"))
    elif kernel == "mla_attention":
        s = (f"B{d['batch']} S{d['seq']} T{d['kv_seq']} H{d['q_heads']} R{d['kv_lora_rank']}+{d['rope_dim']} "
             f"D{d['head_dim']}")
    elif kernel == "paged_mla_attention":
        s = (f"B{d['num_seqs']} T{d['max_blocks'] * d['page_size']} page{d['page_size']} H{d['q_heads']} "
             f"R{d['kv_lora_rank']}+{d['rope_dim']} D{d['head_dim']}")
    else:
        s = (f"B{d['num_seqs']} T{d['max_blocks'] * d['page_size']} page{d['page_size']} Hq{d['q_heads']} "
             f"Hk{d['kv_heads']} D{d['head_dim']}")
    return f"{kernel} {mode} {s}" + ("" if dtype == "bfloat16" else f" {dtype}")


def make_arg_sets(spec, record, n_sets: int, seed: int):
    """n_sets dicts {argument name: device array} for the entry's present arguments. Floats:
    normal, made on the device (w_kc, w_vc scaled by 1/sqrt(rank), latent_key, latent_value by
    1/sqrt(head_dim), as the kernels' examples do); caches and weights shared by all sets;
    context_lens full (max_blocks x page_size);
    block tables of distinct pages, shuffled, across sets while the cache has enough."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    dims, dtype = record["dims"], record["dtype"]
    present = set(record["present"])
    args = [a for a in spec.inputs if not a.optional or a.name in present]
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    shared: dict = {}
    example = None
    sets = []
    if "block_tables" in {a.name for a in args}:
        b, mb, pages = dims["num_seqs"], dims["max_blocks"], dims["total_pages"]
        order = rng.permutation(pages)
        need = b * mb
        tables = [np.resize(np.roll(order, -i * need), need).reshape(b, mb).astype(np.int32) for i in range(n_sets)]
    for i in range(n_sets):
        one = {}
        for a in args:
            if a.name in SHARED and a.name in shared:
                one[a.name] = shared[a.name]
                continue
            shape = spec.shape_of(a, dims)
            adt = spec.dtype_of(a, dtype)
            if a.name == "context_lens":
                x = jnp.full(shape, dims["max_blocks"] * dims["page_size"], jnp.int32)
            elif a.name == "block_tables":
                x = jnp.asarray(tables[i])
            elif np.issubdtype(np.dtype(jnp.dtype(adt)), np.floating):
                key, sub = jax.random.split(key)
                scale = (1.0 / math.sqrt(dims["kv_lora_rank"]) if a.name in ("w_kc", "w_vc")
                         else 1.0 / math.sqrt(dims["head_dim"]) if a.name in ("latent_key", "latent_value")
                         else 1.0)
                x = (jax.random.normal(sub, shape, jnp.float32) * scale).astype(adt)
            else:   # any other integer input: the kernel's own example generator
                if example is None:
                    example = spec.make_inputs(dims, dtype, tuple(record["present"]), record["static"], rng)
                x = jnp.asarray(example[a.name])
            one[a.name] = x
            if a.name in SHARED:
                shared[a.name] = x
        sets.append(one)
    jax.block_until_ready(sets)
    return sets


def flops_bytes(kernel: str, mode: str, dims: dict, dtype: str, static: dict, present=(), context_lens=None):
    """(flops, bytes, bytes_parts or None) of one call, by roofline.py's formulas. Paged
    kernels: context_lens None means every sequence a full table (max_blocks x page_size)."""
    from . import roofline as rl
    d = dims
    if context_lens is None and "max_blocks" in d:
        context_lens = [d["max_blocks"] * d["page_size"]] * d["num_seqs"]
    with_rope = "b_q" in present
    if kernel == "flash_attention":
        a = (d["batch"], d["q_heads"], d["seq"], d["kv_seq"], d["head_dim"])
        causal = bool(static.get("causal"))
        if mode == "fwd":
            return (rl.flash_fwd_flops(*a, causal),
                    rl.flash_fwd_bytes(d["batch"], d["q_heads"], d["kv_heads"], d["seq"], d["kv_seq"],
                                       d["head_dim"], dtype), None)
        return (rl.flash_fwd_bwd_flops(*a, causal),
                rl.flash_fwd_bwd_bytes(d["batch"], d["q_heads"], d["kv_heads"], d["seq"], d["kv_seq"],
                                       d["head_dim"], dtype), None)
    if kernel == "flash_mla_attention":
        a = (d["batch"], d["heads"], d["seq"], d["head_dim"], d["latent_dim"])
        back = mode != "fwd"
        return (rl.flash_mla_flops(*a, bool(static.get("causal")), backward=back),
                rl.flash_mla_bytes(*a, dtype, backward=back), None)
    if kernel == "mla_attention":
        e = d["rope_dim"] if with_rope else 0
        parts = rl.mla_decode_bytes(d["batch"], d["q_heads"], d["kv_seq"], d["head_dim"], d["kv_lora_rank"],
                                    d["rope_dim"], dtype, seq=d["seq"], kv_heads=d["kv_heads"], with_rope=with_rope)
        flops = rl.mla_decode_flops(d["batch"], d["q_heads"], d["kv_seq"], d["kv_lora_rank"], e, seq=d["seq"])
        if static.get("causal") and d["seq"] > 1:    # bottom-right causal: query i sees T - S + i + 1 keys
            flops *= (d["kv_seq"] - (d["seq"] - 1) / 2) / d["kv_seq"]
        return flops, parts["total"], parts
    if kernel == "paged_mla_attention":
        e = d["rope_dim"] if with_rope else 0
        parts = rl.paged_mla_decode_bytes(context_lens, d["q_heads"], d["head_dim"], d["kv_lora_rank"],
                                          d["rope_dim"], d["page_size"], d["max_blocks"], dtype,
                                          kv_heads=d["kv_heads"], with_rope=with_rope)
        flops = rl.mla_decode_flops(1, d["q_heads"], sum(int(c) for c in context_lens), d["kv_lora_rank"], e)
        return flops, parts["total"], parts
    parts = rl.paged_decode_bytes(context_lens, d["q_heads"], d["kv_heads"], d["head_dim"], d["page_size"],
                                  d["max_blocks"], dtype)
    return rl.paged_decode_flops(context_lens, d["q_heads"], d["head_dim"]), parts["total"], parts


class Suite:
    """The results document, rewritten (atomically) whenever it changes."""

    def __init__(self, out_path: Path, doc: dict, verify_entries: dict):
        self.out_path, self.doc, self.verify_entries = out_path, doc, verify_entries

    def add_row(self, row: dict) -> dict:
        row["verify"] = self.verify_entries.get(row["entry"])
        self.doc["rows"].append(row)
        return row

    def save(self):
        tmp = self.out_path.with_name(self.out_path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str))
        os.replace(tmp, self.out_path)


def served_delta(before: dict, after: dict) -> dict:
    """{path, tier} of the calls made between two bundle.stats() snapshots."""
    def moved(key):
        return [k for k, v in after[key].items() if v > before[key].get(k, 0)]
    paths, tiers = moved("calls"), moved("tiers")
    return {"path": paths[0] if len(paths) == 1 else (paths or None), "tier": tiers[0] if len(tiers) == 1 else (tiers or None)}


def check_served(row: dict, bundle, key: str) -> None:
    """A call the store did not serve is still timed, but flagged: row["warning"] says why
    (the bundle's rejection of that entry, where it has one)."""
    served = row.get("served") or {}
    if served.get("path") in ("exact", "padded"):
        return
    why = [f"{r.get('tier')}: {r.get('reason')}" for r in bundle.rejections_of(row["kernel"])
           if str(r.get("entry")) == key]
    row["warning"] = (f"served by {served.get('path')} ({served.get('tier')}), not by the store's entry"
                      + (": " + "; ".join(why) if why else ""))


def cudnn_skip_reason(platform: str, record: dict) -> str | None:
    static = record["static"]
    if platform != "cuda":     # ejaot's name for jax's "gpu" platform on NVIDIA devices
        return f"cuDNN needs an NVIDIA GPU; this run's device platform is {platform}"
    if record["dtype"] not in ("bfloat16", "float16"):
        return f"cuDNN flash attention takes bfloat16/float16, not {record['dtype']}"
    if record.get("present"):
        return f"not compared: optional inputs {list(record['present'])} are not passed to jax.nn.dot_product_attention here"
    unsupported = [k for k in ("sliding_window", "logits_soft_cap", "softmax_scale") if static.get(k) is not None]
    if unsupported:
        return f"not compared: static arguments {unsupported} are not passed to jax.nn.dot_product_attention here"
    if record["dims"]["seq"] != record["dims"]["kv_seq"] and static.get("causal"):
        return "not compared: causal with seq != kv_seq (ejaot aligns bottom-right, cuDNN top-left)"
    return None


def compiled_temp_bytes(fn, args) -> int | None:
    """The scratch memory XLA allocates for jax.jit(fn) at these arguments (None where the
    backend does not say, or the analysis fails: it only annotates a timed row)."""
    import jax
    try:
        analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def forward_backward(fn, n_diff: int):
    """(*arrays, cotangent) -> the gradients of fn's output in its first n_diff arrays:
    the forward+backward a training step runs (jax.vjp; the rest of the arrays held)."""
    import jax

    def fwd_bwd(*a):
        *arrays, ct = a
        _, pull = jax.vjp(lambda *d: fn(*d, *arrays[n_diff:]), *arrays[:n_diff])
        return pull(ct)
    return fwd_bwd


def comparison(spec, record):
    """(name, description, forward) of what a forward row is compared with: cuDNN for
    flash_attention (on q, k, v), the kernel's XLA backend for flash_mla_attention."""
    import jax
    from ejaot.artifact.function import jitted
    static = record["static"]
    if record["kernel"] == "flash_attention":
        causal = bool(static.get("causal"))

        def cudnn_fwd(q, k, v, *_):
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
        return ("cudnn", f"jax.nn.dot_product_attention(q, k, v, is_causal={causal}, implementation='cudnn')",
                cudnn_fwd)
    xla_fn = jitted(spec, "xla", tuple(record["present"]), static)

    def xla_fwd(*arrays):
        return xla_fn(*arrays)[0]
    return "xla", "the kernel's XLA backend (jax.jit, scores materialized)", xla_fwd


def run_flash(suite, bundle, spec, key, record, sets, timing, rates, platform, want_cudnn):
    """flash_attention and flash_mla_attention: a forward row and a forward+backward row,
    each beside its comparison (cuDNN; the XLA backend)."""
    import jax
    import jax.numpy as jnp
    from . import roofline as rl
    from .timing import time_call
    from ejaot.artifact.function import fallback_backend
    from ejaot.runtime.dispatch import has_stored_vjp
    kernel = record["kernel"]
    static = {k: v for k, v in record["static"].items() if v is not None}
    names = [a.name for a in spec.inputs if not a.optional or a.name in record["present"]]
    n_diff = len(DIFFERENTIATED[kernel])
    assert tuple(names[:n_diff]) == DIFFERENTIATED[kernel], names
    arg_sets = [tuple(s[n] for n in names) for s in sets]
    rows = []
    if kernel == "flash_attention":
        skip = cudnn_skip_reason(platform, record) if want_cudnn else "disabled (--no-cudnn)"
    else:
        skip = None

    def call(*arrays):
        return bundle.call(kernel, *arrays, **static)

    other, other_call, other_fwd = comparison(spec, record)

    cts = None
    for mode in ("fwd", "fwd+bwd"):
        row = suite.add_row(base_row(record, key, kernel, mode))
        rows.append(row)
        try:
            flops, nbytes, _ = flops_bytes(kernel, mode, record["dims"], record["dtype"], static)
            row.update(flops=flops, bytes=nbytes, bytes_parts=None)
            if mode == "fwd":
                fn, fargs = jax.jit(call), arg_sets
                before = bundle.stats()
                jax.block_until_ready(fn(*fargs[0]))
                row["served"] = served_delta(before, bundle.stats())
                check_served(row, bundle, key)
            else:
                if cts is None:
                    ks = jax.random.split(jax.random.key(7), len(arg_sets))
                    cts = [jax.random.normal(k, a[0].shape, jnp.float32).astype(a[0].dtype) for k, a in zip(ks, arg_sets)]
                fn = jax.jit(forward_backward(call, n_diff))
                fargs = [(*a, ct) for a, ct in zip(arg_sets, cts)]
                before = bundle.stats()
                jax.block_until_ready(fn(*fargs[0]))
                row["served"] = served_delta(before, bundle.stats())
                check_served(row, bundle, key)
                row["backward"] = (
                    "the entry's stored VJP (built with vjp = true: the kernel's own backward, "
                    "recomputing its forward inside the VJP)" if has_stored_vjp(bundle.entries[key].record)
                    else f"the kernel's JIT function on the "
                         f"{fallback_backend(spec, bundle.platform, record['dims'], static)} "
                         "backend (jax.vjp through bundle.call: the stored forward inlined, the "
                         "backward differentiates the JIT function, recomputing its forward)")
            t = time_call(fn, fargs, **timing)
            row["time"] = _timing_record(t)
            row.update(rl.roofline(flops, nbytes, t["median_s"], rates.get("matmul_flops_per_s"),
                                   rates.get("copy_bytes_per_s")))
            if mode == "fwd":
                time_eager(row, call, fargs, timing)
            if other == "xla":
                row["temp_bytes"] = compiled_temp_bytes(fn, fargs[0])
        except Exception as e:  # noqa: BLE001 - the row records it, the suite goes on
            row["error"] = _err(e)
            row["traceback"] = traceback.format_exc(limit=8)
        # the comparison on the same inputs
        if skip is not None:
            row[other] = {"status": "skipped", "reason": skip}
        else:
            try:
                if mode == "fwd":
                    cfn, cargs = jax.jit(other_fwd), [a if other == "xla" else a[:3] for a in arg_sets]
                else:
                    cfn, cargs = jax.jit(forward_backward(other_fwd, n_diff)), fargs
                c = {"call": other_call + (" under jax.vjp" if mode != "fwd" else "")}
                if other == "xla":
                    c["temp_bytes"] = compiled_temp_bytes(cfn, cargs[0])
                ct_ = time_call(cfn, cargs, **timing)
                c.update(status="ok", time=_timing_record(ct_), tflops=row["flops"] / ct_["median_s"] / 1e12)
                if "tflops" in row:
                    c["ratio"] = row["tflops"] / c["tflops"]
                row[other] = c
            except Exception as e:  # noqa: BLE001 - e.g. the XLA backend out of memory
                row[other] = {"status": "error", "error": _err(e)}
        suite.save()
    return rows


def run_decode(suite, bundle, spec, key, record, sets, timing, rates):
    import jax
    from . import roofline as rl
    from .timing import time_call
    kernel = record["kernel"]
    static = {k: v for k, v in record["static"].items() if v is not None}
    names = [a.name for a in spec.inputs if not a.optional or a.name in record["present"]]
    row = suite.add_row(base_row(record, key, kernel, "decode"))
    try:
        ctx = None
        if "context_lens" in names:
            import numpy as np
            ctx = [int(c) for c in np.asarray(sets[0]["context_lens"])]
        flops, nbytes, parts = flops_bytes(kernel, "decode", record["dims"], record["dtype"], static,
                                           tuple(record["present"]), ctx)
        row.update(flops=flops, bytes=nbytes, bytes_parts=parts)

        def call(**arrays):
            return bundle.call(kernel, **arrays, **static)

        kw_sets = [dict((n, s[n]) for n in names) for s in sets]
        jitted = jax.jit(call)

        def fn(i):
            return jitted(**kw_sets[i])

        def eager(i):
            return call(**kw_sets[i])
        idx = [(i,) for i in range(len(kw_sets))]
        before = bundle.stats()
        jax.block_until_ready(fn(0))
        row["served"] = served_delta(before, bundle.stats())
        check_served(row, bundle, key)
        t = time_call(fn, idx, **timing)
        row["time"] = _timing_record(t)
        row.update(rl.roofline(flops, nbytes, t["median_s"], rates.get("matmul_flops_per_s"),
                               rates.get("copy_bytes_per_s")))
        time_eager(row, eager, idx, timing)
    except Exception as e:  # noqa: BLE001
        row["error"] = _err(e)
        row["traceback"] = traceback.format_exc(limit=8)
    suite.save()
    return [row]


def time_eager(row: dict, fn, arg_sets, timing: dict) -> None:
    """The eager figure beside a row's jitted one: the same call through the bundle's
    Python dispatch on every call (what a server that does not jit its step pays)."""
    from .timing import time_call
    try:
        t = time_call(fn, arg_sets, **timing)
        row["eager"] = {"time": _timing_record(t), "tflops": row["flops"] / t["median_s"] / 1e12,
                        "gbps": row["bytes"] / t["median_s"] / 1e9}
    except Exception as e:  # noqa: BLE001 - the jitted figure stands without it
        row["eager"] = {"error": _err(e)}


def base_row(record, key, kernel, mode) -> dict:
    return {"id": case_id(kernel, mode, record["dims"], record["static"], record["dtype"]), "kernel": kernel,
            "mode": mode, "entry": key, "dtype": record["dtype"], "dims": record["dims"],
            "static": record["static"], "present": record["present"], "backend": record.get("backend"),
            "config_source": (record.get("config_source") or {}).get("kind"), "served": None, "cudnn": None,
            "verify": None, "warning": None, "error": None}


def _order(item):
    key, rec = item
    d = rec["dims"]
    return (KERNELS.index(rec["kernel"]), sorted(rec["static"].items(), key=str).__str__(),
            tuple(sorted((k, v) for k, v in d.items() if isinstance(v, int))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Times a store's kernels against the device's measured rates.")
    p.add_argument("--store", required=True, help="a store built by `ejaot build` (finalized on the GPU host)")
    p.add_argument("--out", default="gpu_results.json", help="JSON results (rewritten after every row)")
    p.add_argument("--smoke", action="store_true", help="tiny device-rate sizes and few iterations (CPU smoke test)")
    p.add_argument("--kernel", action="append", default=[], choices=KERNELS, help="only these kernels (repeatable)")
    p.add_argument("--iters", type=int, help="timed samples per measurement (default 20; smoke 3)")
    p.add_argument("--warmup", type=int, help="waited-for warm-up calls (default 3; smoke 1)")
    p.add_argument("--min-sample-s", type=float, help="seconds one sample lasts, about (default 0.02)")
    p.add_argument("--rotate-mib", type=float, help="input sets rotate until they span this many MiB (default 256)")
    p.add_argument("--copy-mib", type=float, help="copy-bandwidth buffer size (default 1024, at most 1/8 of memory)")
    p.add_argument("--matmul-sizes", help="comma-separated n for the n x n bf16 matmul (default 4096,8192,16384)")
    p.add_argument("--no-cudnn", action="store_true", help="skip the cuDNN comparison")
    p.add_argument("--verify-json", help="`ejaot verify --json` output to attach per entry")
    p.add_argument("--command", help="the command line to record (default: this process's)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def read_verify(path: str | None) -> tuple[dict | None, dict]:
    if not path or not Path(path).exists():
        return None, {}
    entries, summary = {}, None
    for line in Path(path).read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("type") == "entry":
            entries[ev.get("key")] = {"ok": ev.get("ok"), "numerics": ev.get("numerics"),
                                      "tiers": ev.get("tiers"), "error": ev.get("error")}
        elif ev.get("type") == "summary":
            summary = ev
    return ({"ok": summary.get("ok") if summary else None, "summary": summary}, entries)


def main(argv=None) -> int:
    args = parse_args(argv)
    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    t_start = time.perf_counter()
    ensure_kernel_collection()
    import jax
    import jaxlib
    import ejaot
    from ejaot.artifact import compat
    from ejaot.spec.registry import all_kernels
    from ejaot.store.filestore import FileStore

    dev = jax.devices()[0]
    platform = compat.local_platform(dev)
    try:
        mem = (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - a backend without memory stats
        mem = None
    timing = dict(warmup=args.warmup, iters=args.iters, min_sample_s=args.min_sample_s)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    verify, verify_entries = read_verify(args.verify_json)
    doc = {
        "schema": SCHEMA, "mode": "smoke" if args.smoke else "gpu",
        "command": args.command or " ".join(shlex.quote(a) for a in [sys.executable, "-m", "benchmarks.gpu.suite",
                                                                      *(argv if argv is not None else sys.argv[1:])]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "device": {"kind": dev.device_kind, "platform": platform, "count": jax.device_count(), "memory_bytes": mem},
        "host": _platform.node(), "store": {"path": str(args.store)},
        "settings": {**timing, "rotate_bytes": int(args.rotate_mib * 2 ** 20), "cudnn": not args.no_cudnn},
        "device_rates": {}, "verify": verify, "rows": [], "errors": [], "elapsed_s": None,
    }
    suite = Suite(out_path, doc, verify_entries)
    suite.save()

    # 1. the device's rates
    copy_bytes = int(args.copy_mib * 2 ** 20)
    if mem:
        copy_bytes = min(copy_bytes, mem // 8)
    rates = {}
    try:
        doc["device_rates"]["copy"] = measure_copy(copy_bytes, timing)
        rates["copy_bytes_per_s"] = doc["device_rates"]["copy"]["gbps"] * 1e9
    except Exception as e:  # noqa: BLE001
        doc["device_rates"]["copy"] = {"error": _err(e)}
        doc["errors"].append(f"copy bandwidth: {_err(e)}")
    gc.collect()
    try:
        sizes = [int(s) for s in str(args.matmul_sizes).split(",") if s]
        doc["device_rates"]["matmul"] = measure_matmul(sizes, timing)
        rates["matmul_flops_per_s"] = doc["device_rates"]["matmul"]["tflops"] * 1e12
    except Exception as e:  # noqa: BLE001
        doc["device_rates"]["matmul"] = {"error": _err(e)}
        doc["errors"].append(f"matmul rate: {_err(e)}")
    try:
        doc["device_rates"]["call_floor"] = measure_call_floor(timing)
    except Exception as e:  # noqa: BLE001
        doc["device_rates"]["call_floor"] = {"error": _err(e)}
        doc["errors"].append(f"call floor: {_err(e)}")
    if len(rates) == 2:
        doc["device_rates"]["ridge_flops_per_byte"] = rates["matmul_flops_per_s"] / rates["copy_bytes_per_s"]
    gc.collect()
    suite.save()
    print(f"# {dev.device_kind} ({platform}), jax {jax.__version__}: copy "
          f"{doc['device_rates']['copy'].get('gbps', float('nan')):.1f} GB/s, bf16 matmul "
          f"{doc['device_rates']['matmul'].get('tflops', float('nan')):.2f} TFLOP/s", flush=True)

    # 2. the store's entries
    try:
        index = FileStore(args.store).read_index()
    except Exception as e:  # noqa: BLE001
        doc["errors"].append(f"store: {_err(e)}")
        doc["elapsed_s"] = round(time.perf_counter() - t_start, 2)
        suite.save()
        print(f"cannot read the store: {_err(e)}", file=sys.stderr)
        return 2
    wanted = set(args.kernel or KERNELS)
    picked = sorted(((k, r) for k, r in index["entries"].items()
                     if isinstance(r, dict) and r.get("kernel") in wanted), key=_order)
    doc["store"].update(target=index.get("target"), entries=len(index["entries"]), timed_entries=len(picked))
    bundle = ejaot.load(args.store, miss_log=False)
    specs = all_kernels()
    rotate_bytes = doc["settings"]["rotate_bytes"]
    for n, (key, record) in enumerate(picked):
        spec = specs[record["kernel"]]
        sets = None
        try:
            # input sets: enough that consecutive calls touch rotate_bytes of distinct data
            mode = "fwd" if record["kernel"] in DIFFERENTIATED else "decode"
            _, touched, _ = flops_bytes(record["kernel"], mode, record["dims"], record["dtype"], record["static"],
                                        tuple(record["present"]))
            n_sets = min(MAX_SETS, max(1, math.ceil(rotate_bytes / touched)))
            sets = make_arg_sets(spec, record, n_sets, args.seed + n)
            if record["kernel"] in DIFFERENTIATED:
                rows = run_flash(suite, bundle, spec, key, record, sets, timing, rates, platform, not args.no_cudnn)
            else:
                rows = run_decode(suite, bundle, spec, key, record, sets, timing, rates)
        except Exception as e:  # noqa: BLE001 - inputs that could not be made: one row says so
            row = suite.add_row(base_row(record, key, record["kernel"],
                                          "fwd" if record["kernel"] in DIFFERENTIATED else "decode"))
            row["error"] = _err(e)
            row["traceback"] = traceback.format_exc(limit=8)
            rows = [row]
        for row in rows:
            print(summary_line(row), flush=True)
        del sets
        gc.collect()
        doc["elapsed_s"] = round(time.perf_counter() - t_start, 2)
        suite.save()
    doc["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    suite.save()
    n_err = sum(1 for r in doc["rows"] if r["error"])
    print(f"wrote {out_path}: {len(doc['rows'])} rows, {n_err} with errors, {doc['elapsed_s']} s", flush=True)
    n_warn = sum(1 for r in doc["rows"] if r.get("warning"))
    if n_warn:
        print(f"{n_warn} rows were not served by the store (their 'warning' says why)", flush=True)
    return 0 if doc["rows"] and not n_err and not n_warn and not doc["errors"] else 1


def summary_line(row: dict) -> str:
    if row.get("error"):
        return f"  {row['id']}: ERROR {row['error']}"
    if row.get("warning"):
        print(f"  WARNING {row['id']}: {row['warning']}", flush=True)
    s = f"  {row['id']}: {row['time']['median_s'] * 1e6:.1f} us, {row['tflops']:.2f} TFLOP/s, {row['gbps']:.1f} GB/s"
    if "bound" in row:
        s += f" ({row['bound']}-bound; {100 * row['frac_matmul']:.0f}% matmul, {100 * row['frac_copy']:.0f}% copy)"
    for name, label in (("cudnn", "cuDNN"), ("xla", "XLA")):
        c = row.get(name) or {}
        if c.get("status") == "ok" and "ratio" in c:
            s += f"; {c['ratio']:.2f}x {label}"
        elif c.get("status") in ("skipped", "error"):
            s += f"; {label} {c['status']}"
    return s


if __name__ == "__main__":
    sys.exit(main())

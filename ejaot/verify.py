"""`ejaot verify`: integrity (sha256 of every payload), this host's compatibility with each
tier, and numerics against the reference wherever this host's device can run the entry."""
from __future__ import annotations

import numpy as np

from . import toolchain as tc
from .errors import EjaotError
from .registry import all_kernels, find_kernel
from .artifact import compat
from .store.filestore import FileStore

# atol = rtol per entry dtype, against a float32 reference on the same inputs.
TOLERANCE = {"float32": 2e-4, "float64": 1e-8, "bfloat16": 3e-2, "float16": 6e-3}


def compare(got, want, dtype: str) -> tuple[bool, float]:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    tol = TOLERANCE.get(dtype, 3e-2)
    err = float(np.max(np.abs(got - want) / (tol + tol * np.abs(want)))) if want.size else 0.0
    return bool(np.all(np.isfinite(got)) and err <= 1.0), err


def entry_arguments(spec, record, rng) -> tuple[dict, list]:
    """Fresh random inputs for a stored entry (the kernel's example generator), and the
    arguments its artifacts take, in order: the present arrays, then the valid lengths
    (the bucket's own dims)."""
    import jax
    inputs = spec.make_inputs(record["dims"], record["dtype"], tuple(record["present"]),
                              record["static"], rng)
    names = [a.name for a in spec.inputs if not a.optional or a.name in record["present"]]
    valid = np.array([record["dims"][d] for d in spec.valid_length_dims], np.int32)
    # the artifacts take a tree argument's leaves, flat
    return inputs, jax.tree_util.tree_leaves([inputs[n] for n in names]) + [valid]


def reference_outputs(spec, record, inputs: dict):
    """The kernel's XLA implementation in float32 on the same inputs (a tree's outputs flat)."""
    import jax
    import jax.numpy as jnp
    from .artifact.function import jitted
    present = tuple(record["present"])
    names = [a.name for a in spec.inputs if not a.optional or a.name in present]
    def widen(x):
        x = np.asarray(x) if not hasattr(x, "dtype") else x
        floating = np.issubdtype(x.dtype, np.floating) or str(x.dtype) == "bfloat16"
        return jnp.asarray(x, jnp.float32) if floating else jnp.asarray(x)
    arrays = [jax.tree_util.tree_map(widen, inputs[n]) for n in names]
    static = dict(spec.canonical_static(record["static"]))
    # A float32 entry is held to float32 tolerance, so its reference needs full float32
    # products (a GPU would otherwise use tf32, ~1e-3 off). Lower-precision entries keep the
    # default: tf32 is far inside their tolerance and compiles several times faster. (The
    # inputs above are float32 either way, so kernels whose XLA path sets full precision
    # for float32 itself, attention and flash_attention, get it in both cases; this matters
    # for the others.)
    import contextlib
    full = record["dtype"] in ("float32", "float64")
    with jax.default_matmul_precision("highest") if full else contextlib.nullcontext():
        return tuple(jax.tree_util.tree_leaves(jitted(spec, "xla", present, static)(*arrays)))


CPU_MAX_ELEMENTS = 1 << 26


def default_max_elements(device) -> int:
    """The largest reference intermediate (kernel footprint, elements) numerics run for by
    default: 2^26 on a CPU (a few float32 copies of it stay around a gigabyte); on an
    accelerator, its memory limit over 16 bytes (room for about four float32
    intermediates of that size; a reference that still does not fit is reported as
    skipped, not failed), and never less than the CPU's."""
    limit = None
    if getattr(device, "platform", "cpu") != "cpu":
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - a backend without memory stats keeps the CPU default
            limit = None
    return max(CPU_MAX_ELEMENTS, int(limit) // 16) if limit else CPU_MAX_ELEMENTS


def verify_store(root, numerics=True, max_elements=None, echo=print, seed=None, kernels=None) -> bool:
    """kernels: only entries of these kernels (None: all). max_elements: None for the
    device's default (default_max_elements)."""
    import jax
    store = FileStore(root)
    device = jax.local_devices()[0]
    platform = compat.local_platform(device)
    if max_elements is None:
        max_elements = default_max_elements(device)
    echo(f"host: jax {tc.version_of('jax')}, jaxlib {tc.version_of('jaxlib')}, platform {platform}, "
         f"device {device.device_kind}; numerics up to {max_elements:.3g}-element intermediates")
    try:
        index = store.read_index()
    except FileNotFoundError:
        echo(f"FAIL store: no index at {store.index_path}")
        return False
    except EjaotError as e:
        echo(f"FAIL store: {e}")
        return False
    echo(f"store: target {index.get('target')}, {len(index['entries'])} entries")
    ok = True
    rng = np.random.default_rng(seed)
    counts = {"numerics_ok": 0, "numerics_skipped": 0, "failed": 0}
    import ejaot
    # an operator's tool: the model packages the store names may be imported
    modules = {r.get("module") for r in index["entries"].values() if isinstance(r, dict)}
    bundle = ejaot.load(root, miss_log=False, kernel_modules=modules - {None})
    installed = all_kernels()
    def order(kv):
        return str(kv[1].get("dims")) if isinstance(kv[1], dict) else ""
    for key, record in sorted(index["entries"].items(), key=order):
        if kernels is not None and isinstance(record, dict) and record.get("kernel") not in kernels:
            continue
        if not isinstance(record, dict):
            echo(f"FAIL {str(key)[:12]}: record is not a table")
            ok = False
            counts["failed"] += 1
            continue
        label = f"{str(key)[:12]} {record.get('kernel')} {record.get('dtype')} {record.get('dims')}"
        problems = []
        problem = compat.record_problem(key, record)
        if problem:
            echo(f"FAIL {label}: {problem}")
            ok = False
            counts["failed"] += 1
            continue
        for kind, ref in record["payloads"].items():
            try:
                store.read_blob(ref.get("sha256"), ref.get("size"))
            except EjaotError as e:
                problems.append(f"{kind}: {e}")
        if problems:
            echo(f"FAIL {label}: " + "; ".join(problems))
            ok = False
            counts["failed"] += 1
            continue
        tiers = []
        why = compat.entry_problem(record, platform)
        if why:
            echo(f"ok   {label}: sha256 ok; not runnable here: {why}")
            counts["numerics_skipped"] += 1
            continue
        c = compat.compiled_problem(record, device)
        p = compat.portable_problem(record)
        tiers.append("compiled " + ("usable" if not c else f"skipped ({c})"))
        tiers.append("portable " + ("usable" if not p else f"skipped ({p})"))
        entry = bundle.entries.get(key)
        spec = installed.get(record["kernel"]) or find_kernel(record["kernel"], record.get("module"))
        if not numerics or entry is None:
            echo(f"ok   {label}: sha256 ok; " + "; ".join(tiers))
            continue
        if spec.footprint and spec.footprint(record["dims"]) > max_elements:
            echo(f"ok   {label}: sha256 ok; " + "; ".join(tiers) + f"; numerics skipped (over --max-elements)")
            counts["numerics_skipped"] += 1
            continue
        inputs, args = entry_arguments(spec, record, rng)
        try:
            want = jax.block_until_ready(reference_outputs(spec, record, inputs))
        except Exception as e:  # e.g. the XLA reference does not fit the device's memory
            echo(f"ok   {label}: sha256 ok; " + "; ".join(tiers)
                 + f"; numerics skipped: the reference failed ({type(e).__name__}: {str(e)[:120]})")
            counts["numerics_skipped"] += 1
            continue
        results = []
        for tier, fn in (("compiled", entry.compiled() if not c else None),
                         ("portable", entry.portable() if not p else None)):
            if fn is None:
                continue
            try:
                got = jax.block_until_ready(fn(*args))
            except Exception as e:  # a tier that cannot run here is a failure of that entry
                results.append(f"{tier} FAILED to run ({type(e).__name__}: {str(e)[:120]})")
                ok = False
                counts["failed"] += 1
                continue
            passed, err = all_close(got, want, record["dtype"])
            results.append(f"{tier} {'ok' if passed else 'MISMATCH'} (err/tol {err:.3f})")
            ok &= passed
            if not passed:
                counts["failed"] += 1
        good = all("MISMATCH" not in r and "FAILED" not in r for r in results)
        if results:
            counts["numerics_ok"] += good
        echo(("ok   " if good else "FAIL ") + f"{label}: sha256 ok; "
             + "; ".join(tiers) + "; numerics: " + ("; ".join(results) or "no usable tier"))
    for r in bundle.stats()["rejected"]:
        if kernels is not None and r["kernel"] not in kernels:
            continue
        what = "entry" if r["tier"] == "entry" else f"{r['tier']} tier of"
        echo(f"note: {what} {str(r['entry'])[:12]} rejected: {r['reason']}")
    echo(f"summary: {counts['numerics_ok']} entries numerically verified, {counts['numerics_skipped']} "
         f"not run here, {counts['failed']} failures")
    return ok


def all_close(got, want, dtype) -> tuple[bool, float]:
    worst, passed = 0.0, True
    for g, w in zip(got, want):
        p, e = compare(g, w, dtype)
        passed &= p
        worst = max(worst, e)
    return passed, worst

"""`ejaot verify`: integrity (sha256 of every payload), this host's compatibility with each
tier, and numerics against the reference wherever this host's device can run the entry."""
from __future__ import annotations

import numpy as np

from . import toolchain as tc
from .errors import EjaotError
from .spec.registry import all_kernels, find_kernel
from .artifact import compat
from .backends import reference_backend
from .store.filestore import FileStore

# atol = rtol per entry dtype, against a float32 reference on the same inputs.
TOLERANCE = {"float32": 2e-4, "float64": 1e-8, "bfloat16": 3e-2, "float16": 6e-3}


def compare(got, want, dtype: str, scaled: bool = False) -> tuple[bool, float]:
    """Within the dtype's tolerance, relative and absolute. scaled: the absolute part is
    relative to the array's RMS (where above 1), for sums over many products, such as a
    gradient of a weight shared by every token: an element that cancels to near zero still
    carries the whole sum's rounding."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    tol = TOLERANCE.get(dtype, 3e-2)
    floor = max(1.0, float(np.sqrt(np.mean(want ** 2)))) if scaled and want.size else 1.0
    err = float(np.max(np.abs(got - want) / (tol * floor + tol * np.abs(want)))) if want.size else 0.0
    return bool(np.all(np.isfinite(got)) and err <= 1.0), err


def entry_arguments(spec, record, rng, timing: bool = False) -> tuple[dict, list]:
    """Fresh random inputs for a stored entry (the kernel's example generator; timing: its
    timing inputs), and the arguments its artifacts take, in order: the present arrays,
    then the valid lengths (the bucket's own dims)."""
    import jax
    inputs = spec.make_inputs(record["dims"], record["dtype"], tuple(record["present"]),
                              record["static"], rng, timing=timing)
    names = [a.name for a in spec.inputs if not a.optional or a.name in record["present"]]
    valid = np.array([record["dims"][d] for d in spec.valid_length_dims], np.int32)
    # the artifacts take a tree argument's leaves, flat
    return inputs, jax.tree_util.tree_leaves([inputs[n] for n in names]) + [valid]


def _floating(x) -> bool:
    return np.issubdtype(np.asarray(x).dtype, np.floating) or str(x.dtype) == "bfloat16"


def _reference(spec, record, inputs: dict):
    """(the kernel's XLA implementation, its arguments widened to float32)."""
    import jax
    import jax.numpy as jnp
    from .artifact.function import jitted
    present = tuple(record["present"])
    names = [a.name for a in spec.inputs if not a.optional or a.name in present]
    def widen(x):
        x = np.asarray(x) if not hasattr(x, "dtype") else x
        return jnp.asarray(x, jnp.float32) if _floating(x) else jnp.asarray(x)
    arrays = [jax.tree_util.tree_map(widen, inputs[n]) for n in names]
    static = dict(spec.canonical_static(record["static"]))
    return jitted(spec, reference_backend(), present, static), arrays


def _full_precision(record):
    import contextlib
    import jax
    return (jax.default_matmul_precision("highest") if record["dtype"] in ("float32", "float64")
            else contextlib.nullcontext())


def reference_outputs(spec, record, inputs: dict):
    """The kernel's XLA implementation in float32 on the same inputs (a tree's outputs flat)."""
    import jax
    fn, arrays = _reference(spec, record, inputs)
    # A float32 entry is held to float32 tolerance, so its reference needs full float32
    # products (a GPU would otherwise use tf32, ~1e-3 off). Lower-precision entries keep the
    # default: tf32 is far inside their tolerance and compiles several times faster. (The
    # inputs above are float32 either way, so kernels whose XLA path sets full precision
    # for float32 itself, attention and flash_attention, get it in both cases; this matters
    # for the others.)
    with _full_precision(record):
        return tuple(jax.tree_util.tree_leaves(fn(*arrays)))


def check_stored_vjp(spec, record, stored, inputs: dict, args: list, rng) -> dict:
    """The entry's stored VJP (jax.grad through its portable tier, `stored`) against jax.vjp of
    the float32 reference, on random cotangents: the gradient of every floating input, held to
    the entry dtype's tolerance with its absolute part scaled to each gradient's RMS
    (compare). Arrays only (no tree arguments)."""
    import jax
    import jax.numpy as jnp
    fn, arrays = _reference(spec, record, inputs)
    wrt = [i for i, a in enumerate(arrays) if _floating(a)]
    outs = jax.eval_shape(stored, *args)
    cts = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]

    def select(f, base):
        def g(*xs):
            full = list(base)
            for i, x in zip(wrt, xs):
                full[i] = x
            return tuple(f(*full))
        return g
    _, pull = jax.vjp(select(stored, args), *[args[i] for i in wrt])
    got = pull(tuple(jnp.asarray(c, o.dtype) for c, o in zip(cts, outs)))
    with _full_precision(record):
        _, pull_ref = jax.vjp(select(fn, arrays), *[arrays[i] for i in wrt])
        want = pull_ref(tuple(jnp.asarray(c) for c in cts))
    passed, err = all_close(jax.block_until_ready(got), want, record["dtype"], scaled=True)
    return {"ok": passed, "err_over_tol": err}


CPU_MAX_ELEMENTS = 1 << 26
# A reference's backward holds about four forward-sized intermediates (probabilities, their
# gradient, the scores' gradient, the logits): a stored VJP is checked up to max_elements / 4.
BACKWARD_MEMORY_FACTOR = 4


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


def verify_store(root, numerics=True, max_elements=None, echo=print, seed=None, kernels=None,
                 on_event=None) -> bool:
    """Returns whether every checked entry is fine. Reports as events (dicts with a "type":
    host, store, entry, note, summary; see `render`) to on_event, and as text lines to
    echo (None: no text). kernels: only entries of these kernels (None: all). max_elements:
    None for the device's default (default_max_elements)."""
    import jax

    def emit(event: dict) -> None:
        if on_event is not None:
            on_event(event)
        if echo is not None:
            echo(render(event))

    store = FileStore(root)
    device = jax.local_devices()[0]
    platform = compat.local_platform(device)
    if max_elements is None:
        max_elements = default_max_elements(device)
    emit({"type": "host", "jax": tc.version_of("jax"), "jaxlib": tc.version_of("jaxlib"), "platform": platform,
          "device": device.device_kind, "max_elements": max_elements})
    try:
        index = store.read_index()
    except (FileNotFoundError, EjaotError) as e:
        why = f"no index at {store.index_path}" if isinstance(e, FileNotFoundError) else str(e)
        emit({"type": "store", "ok": False, "error": why})
        emit({"type": "summary", "ok": False, "numerically_verified": 0, "not_run": 0, "failures": 1})
        return False
    emit({"type": "store", "ok": True, "target": index.get("target"), "entries": len(index["entries"])})
    rng = np.random.default_rng(seed)
    import ejaot
    # an operator's tool: the model packages the store names may be imported
    modules = {r.get("module") for r in index["entries"].values() if isinstance(r, dict)}
    bundle = ejaot.load(root, miss_log=False, kernel_modules=modules - {None})
    check = _EntryCheck(store, bundle, device, platform, numerics, max_elements, rng)
    results = []
    for key, record in sorted(index["entries"].items(), key=_by_dims):
        if kernels is not None and isinstance(record, dict) and record.get("kernel") not in kernels:
            continue
        results.append(check(key, record))
        emit(results[-1])
    for r in bundle.stats()["rejected"]:
        if kernels is None or r["kernel"] is None or r["kernel"] in kernels:   # the store's own: always
            if r["tier"] == "store":    # the whole store, or one kernel's section of its index
                what = "store" if r["kernel"] is None else f"{r['kernel']} entries of the store"
            else:
                what = f"{'entry' if r['tier'] == 'entry' else r['tier'] + ' tier of'} {str(r['entry'])[:12]}"
            emit({"type": "note", "text": f"{what} rejected: {r['reason']}"})
    ok = all(r["ok"] for r in results)
    emit({"type": "summary", "ok": ok,
          "numerically_verified": sum(r["numerics"] == "ok" for r in results),
          "not_run": sum(r["numerics"] in ("skipped", "not run") for r in results),
          "failures": sum(r["failures"] for r in results)})
    return ok


def _by_dims(item):
    return str(item[1].get("dims")) if isinstance(item[1], dict) else ""


class _EntryCheck:
    """One entry's verdict as an "entry" event: sha256 of every payload, each tier's
    usability on this host, and (where it runs here) numerics of each usable tier."""

    def __init__(self, store, bundle, device, platform, numerics, max_elements, rng):
        self.store, self.bundle, self.device, self.platform = store, bundle, device, platform
        self.numerics, self.max_elements, self.rng = numerics, max_elements, rng
        self.installed = all_kernels()

    def __call__(self, key, record) -> dict:
        event = {"type": "entry", "ok": False, "key": str(key), "kernel": None, "dtype": None, "dims": None,
                 "static": None, "sha256_ok": False, "error": None, "not_runnable": None,
                 "compiled": None, "portable": None, "numerics": None, "numerics_detail": None,
                 "backward_detail": None, "tiers": {}, "failures": 1}
        if not isinstance(record, dict):
            return {**event, "error": "record is not a table"}
        event.update(kernel=record.get("kernel"), dtype=record.get("dtype"), dims=record.get("dims"),
                     static=record.get("static"))
        problem = compat.record_problem(key, record)
        if problem:
            return {**event, "error": problem}
        problems = []
        for kind, ref in record["payloads"].items():
            try:
                self.store.read_blob(ref.get("sha256"), ref.get("size"))
            except EjaotError as e:
                problems.append(f"{kind}: {e}")
        if problems:
            return {**event, "error": "; ".join(problems)}
        event.update(sha256_ok=True, ok=True, failures=0)
        why = compat.entry_problem(record, self.platform)
        if why:
            return {**event, "not_runnable": why, "numerics": "not run"}
        c = compat.compiled_problem(record, self.device)
        p = compat.portable_problem(record)
        event.update(compiled=c or "usable", portable=p or "usable")
        entry = self.bundle.entries.get(key)
        spec = self.installed.get(record["kernel"]) or find_kernel(record["kernel"], record.get("module"))
        rejected = {}
        if entry is not None and "mesh" not in record:
            for tier, usable, load in (("compiled", not c, entry.compiled), ("portable", not p, entry.portable)):
                # usable by the record, refused by the runtime when it loads the bytes: a failure
                if usable and load() is None:
                    why = getattr(entry, f"{tier}_block", None) or "not loaded"
                    rejected[tier] = {"ok": False, "error": f"the runtime rejects it: {why}"}
                    event[tier] = f"rejected: {why}"
        if rejected:
            event.update(ok=False, failures=len(rejected), tiers=dict(rejected))
        if not self.numerics or entry is None:
            return event
        if spec.footprint and spec.footprint(record["dims"]) > self.max_elements:
            return {**event, "numerics": "skipped", "numerics_detail": "over --max-elements"}
        import jax
        inputs, args = entry_arguments(spec, record, self.rng)
        try:
            want = jax.block_until_ready(reference_outputs(spec, record, inputs))
        except Exception as e:  # e.g. the XLA reference does not fit the device's memory
            _release()
            return {**event, "numerics": "skipped",
                    "numerics_detail": f"the reference failed ({type(e).__name__}: {str(e)[:120]})"}
        tiers = dict(rejected)
        runners = (("compiled", entry.compiled() if not c else None),
                   ("portable", entry.portable() if not p else None))
        if "mesh" in record:              # a multi-chip entry runs on a mesh of this host's devices
            from .runtime.meshed import verify_tiers
            runners, why = verify_tiers(entry, spec, record, not c, not p)
            if why:
                return {**event, "not_runnable": f"needs {why}", "numerics": "not run"}
        for tier, fn in runners:
            if fn is None:
                continue
            try:
                got = jax.block_until_ready(fn(*args))
            except Exception as e:  # a tier that cannot run here is a failure of that entry
                tiers[tier] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:120]}"}
                continue
            passed, err = all_close(got, want, record["dtype"])
            tiers[tier] = {"ok": passed, "err_over_tol": err}
        if record["exported"].get("vjp_order", 0) >= 1:       # what grad through this entry runs
            why = ("its portable tier is not usable here" if p else "tree arguments" if spec.has_trees
                   else "a multi-chip entry" if "mesh" in record
                   else "its reference's backward is over the memory limit (--max-elements / "
                        f"{BACKWARD_MEMORY_FACTOR})" if spec.footprint and
                   spec.footprint(record["dims"]) * BACKWARD_MEMORY_FACTOR > self.max_elements else None)
            if why:
                event["backward_detail"] = f"stored VJP not checked: {why}"
            else:
                try:
                    tiers["backward"] = check_stored_vjp(spec, record, entry.portable(), inputs, args,
                                                         self.rng)
                except Exception as e:
                    tiers["backward"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:120]}"}
                    _release()
        failures = sum(not t["ok"] for t in tiers.values())
        return {**event, "ok": failures == 0, "failures": failures, "tiers": tiers,
                "numerics": ("failed" if failures else "ok") if tiers else "none"}


def _release() -> None:
    """After a failed reference: device buffers a failure's traceback cycle still holds are
    freed now, not at the next garbage collection, so the next entry has the memory."""
    import gc
    gc.collect()


def render(event: dict) -> str:
    """An event of verify_store as its line of text."""
    kind = event["type"]
    if kind == "host":
        return (f"host: jax {event['jax']}, jaxlib {event['jaxlib']}, platform {event['platform']}, "
                f"device {event['device']}; numerics up to {event['max_elements']:.3g}-element intermediates")
    if kind == "store":
        return (f"store: target {event['target']}, {event['entries']} entries" if event["ok"]
                else f"FAIL store: {event['error']}")
    if kind == "note":
        return f"note: {event['text']}"
    if kind == "summary":
        return (f"summary: {event['numerically_verified']} entries numerically verified, {event['not_run']} "
                f"not run here, {event['failures']} failures")
    key = event["key"][:12]
    if event["kernel"] is None and event["error"]:
        return f"FAIL {key}: {event['error']}"
    label = f"{key} {event['kernel']} {event['dtype']} {event['dims']}"
    if event["error"]:
        return f"FAIL {label}: {event['error']}"
    if event["not_runnable"]:
        return f"ok   {label}: sha256 ok; not runnable here: {event['not_runnable']}"
    parts = ["sha256 ok"] + [f"{tier} " + ("usable" if event[tier] == "usable" else f"skipped ({event[tier]})")
                             for tier in ("compiled", "portable")]
    if event["numerics"] == "skipped":
        detail = event["numerics_detail"]
        parts.append(f"numerics skipped ({detail})" if detail.startswith("over") else f"numerics skipped: {detail}")
    elif event["numerics"] == "none":
        parts.append("numerics: no usable tier")
    elif event["numerics"] is not None:
        parts.append("numerics: " + "; ".join(
            f"{tier} FAILED to run ({t['error']})" if "error" in t
            else f"{tier} {'ok' if t['ok'] else 'MISMATCH'} (err/tol {t['err_over_tol']:.3f})"
            for tier, t in event["tiers"].items()))
    if event.get("backward_detail"):
        parts.append(event["backward_detail"])
    return ("ok   " if event["ok"] else "FAIL ") + f"{label}: " + "; ".join(parts)


def all_close(got, want, dtype, scaled: bool = False) -> tuple[bool, float]:
    worst, passed = 0.0, True
    for g, w in zip(got, want):
        p, e = compare(g, w, dtype, scaled)
        passed &= p
        worst = max(worst, e)
    return passed, worst

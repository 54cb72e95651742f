"""ejaot command line: build, inspect and verify artifact stores.

`--json` output (ls, verify, kernels, targets: JSON Lines, one object per line; inspect and
misses: one JSON document) is described in README.md's "Command line" section."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import EjaotError


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _store_fail(e: EjaotError):
    """A command on an existing store: a store that cannot be read as one (StoreError: a
    damaged index, a file that is not what it should be) is a failed check, exit 1; other
    errors are usage errors, exit 2."""
    from .errors import StoreError
    _fail(str(e), 1 if isinstance(e, StoreError) else 2)


def _default_manifest() -> str:
    """The manifest `build` and `tune build` use without --manifest: manifests/default.toml
    as shipped in the package (the repository's manifests/ folder is package data
    `ejaot/manifests/`), or the repository's own file in a checkout or editable install."""
    here = Path(__file__).resolve().parent
    for path in (here / "manifests" / "default.toml", here.parent / "manifests" / "default.toml"):
        if path.is_file():
            return str(path)
    return "manifests/default.toml"


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=_jsonable))


def _jsonable(v):
    """What json.dumps cannot write by itself: bytes (signatures) as hex, the rest as text."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ejaot")
def main():
    """Ahead-of-time compiled JAX kernel artifacts: build a store once, load it at
    server start-up in milliseconds."""


@main.command()
@click.option("--manifest", "manifest", default=None, type=click.Path(dir_okay=False),
              help="Manifest (TOML) listing kernels, buckets, dtypes [default: the packaged "
                   "manifests/default.toml].")
@click.option("--target", default="cpu", show_default=True, help="Target, e.g. cpu, gpu-sm90, tpu-v5e.")
@click.option("--out", default=None, help="Store directory [default: artifacts/<target>].")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Parallel build processes [default: all cores].")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Sign every entry with this ed25519 private key (PEM).")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--max-entries", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Refuse a manifest that plans more entries than this for the target.")
@click.option("--shard", default=None, metavar="I/N",
              help="Build only the I-th of N deterministic, cost-balanced shares (merge with `ejaot merge`).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where entries are lowered: processes here, or Ray tasks (pip install 'ejaot[ray]').")
@click.option("--ray-address", default=None, help="An existing Ray cluster [default: a local Ray instance].")
@click.option("--prune", is_flag=True,
              help="Remove the store's entries for TARGET that the manifest no longer plans (then `ejaot gc`).")
def build(manifest, target, out, jobs, sign_key, quiet, max_entries, shard, executor, ray_address, prune):
    """Lower every manifest entry for TARGET and write them to the store.

    Incremental: entries already stored under the same key are reused. Exits non-zero
    naming each entry that failed; the others are kept."""
    from .build.builder import build as run_build
    from .targets import get_target
    try:
        tgt = get_target(target)
    except KeyError as e:
        _fail(e.args[0])
    out = out or os.path.join("artifacts", tgt.name)
    manifest = manifest or _default_manifest()
    signer = _signer(sign_key)
    progress = None if quiet else _Progress("build")
    try:
        from .build.shard import parse_shard
        report = run_build(manifest, tgt.name, out, jobs=jobs, progress=progress, signer=signer,
                           max_entries=max_entries, shard=parse_shard(shard) if shard else None,
                           executor=executor, ray_address=ray_address, prune=prune)
    except EjaotError as e:
        _fail(str(e))
    if progress:
        progress.finish()
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("stores", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--trusted-keys", "trusted_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Refuse entries not signed by one of these ed25519 public keys (repeatable).")
def merge(out, stores, trusted_keys):
    """Merge shard stores (of one target) into OUT: every record and payload verified before
    it is copied, identical keys kept once, conflicts refused, the index written once."""
    from .build.merge import merge_stores
    for store_dir in stores:
        _require_store(store_dir)
    try:
        report = merge_stores(out, stores, trusted_keys=list(trusted_keys) or None)
    except EjaotError as e:
        _fail(str(e))
    except ValueError as e:       # an unreadable or wrong --trusted-keys file
        _fail(f"--trusted-keys: {e}")
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


class _Progress:
    """Progress on stderr, with elapsed time and ETA: click's progress bar on a terminal;
    elsewhere (a CI log) one line per step, or nothing with lines=False, for commands that
    already print a line per step. Called as progress(done, total, description) by the
    build, or advanced step by step."""

    def __init__(self, label: str, total: int | None = None, lines: bool = True):
        self.label, self.total, self.lines = label, total, lines
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.done = 0
        self.bar = None

    def __call__(self, done: int, total: int, desc: str = "") -> None:
        self.total = total
        self.advance(done - self.done, desc)

    def advance(self, n: int = 1, desc: str = "") -> None:
        self.done += n
        if self.tty:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=max(self.total or self.done, 1), label=self.label, file=sys.stderr,
                    show_eta=True, show_pos=True, width=24,
                    item_show_func=lambda d: f"elapsed {_clock(time.monotonic() - self.t0)}  {(d or '')[:60]}")
                self.bar.render_progress()
            self.bar.update(n, desc)
        elif self.lines:
            elapsed = time.monotonic() - self.t0
            left = (self.total or 0) - self.done
            eta = f", eta {_clock(elapsed / self.done * left)}" if self.done and left > 0 else ""
            click.echo(f"[{self.done}/{self.total}] elapsed {_clock(elapsed)}{eta}  {desc}", err=True)

    def echo(self, line: str = "") -> None:
        """Prints a line on stdout without tearing the bar."""
        if self.bar is not None:
            click.echo("\r\033[K", nl=False, err=True)
        click.echo(line)
        if self.bar is not None:
            self.bar.render_progress()

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()
            self.bar.render_progress()
            self.bar.render_finish()
            self.bar = None


def _clock(seconds: float) -> str:
    """HH:MM:SS, as click's ETA."""
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _signer(sign_key):
    """The --sign key's Signer, None without one; a file that is not an ed25519 private
    key is a usage error."""
    if not sign_key:
        return None
    from .artifact.signing import Signer
    try:
        return Signer.from_file(sign_key)
    except ValueError as e:
        _fail(f"--sign: {e}")


def _require_store(store_dir) -> None:
    """A usage error (exit 2) when there is no store: no directory, or no index in it (an
    index that is there but damaged is for the command to report)."""
    from .store.filestore import FileStore
    if not os.path.isdir(store_dir):
        _fail(f"{store_dir}: no store (the directory does not exist)")
    index = FileStore(store_dir).index_path
    if not index.exists():
        _fail(f"{store_dir}: no store index ({index} not found)")


def _open_index(store_dir):
    from .store.filestore import FileStore
    store = FileStore(store_dir)
    try:
        return store, store.read_index()
    except FileNotFoundError:
        _fail(f"{store_dir}: no store index ({store.index_path} not found)")
    except EjaotError as e:
        _store_fail(e)


_TIER_OF_PAYLOAD = {"executable": "compiled", "exported": "portable"}


def _entry_summary(key, r) -> dict:
    payloads = r.get("payloads", {})
    return {
        "key": key, "kernel": r.get("kernel"), "target": r.get("target"), "backend": r.get("backend"),
        "shapes": {n: s for n, s, _ in r.get("inputs", [])},
        "dtypes": {n: d for n, _, d in r.get("inputs", [])},
        "dtype": r.get("dtype"), "present": r.get("present"),
        "dims": r.get("dims"), "static": r.get("static"), "config": r.get("config"),
        "config_source": r.get("config_source"),
        "payloads": {k: v.get("size") for k, v in payloads.items()},
        # the payloads a server runs (tiers), and the kernels' own binaries (ptx, cubin, mosaic)
        "tiers": sorted(_TIER_OF_PAYLOAD[k] for k in payloads if k in _TIER_OF_PAYLOAD),
        "binaries": sorted(k for k in payloads if k not in _TIER_OF_PAYLOAD),
        # the portable tier carries the VJP (`vjp = true`): grad runs the stored backward
        "vjp": isinstance(r.get("exported"), dict) and bool(r["exported"].get("vjp_order")),
        "toolchain": r.get("toolchain"), "built_at": r.get("built_at"),
        **_mesh_summary(r),          # mesh (None: one device), devices, shard
    }


def _mesh_summary(r) -> dict:
    from .spec.mesh import summary
    return summary(r)


def _numeric_order(row: dict):
    """kernel, dtype, then the dims as numbers in the kernel's order (seq 512 before 1024)."""
    dims = row["dims"] or {}
    return (str(row["kernel"]), str(row["dtype"]),
            tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in dims.values()),
            json.dumps(row["static"], sort_keys=True, default=str))


@main.command("ls")
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per entry.")
def ls_cmd(store_dir, as_json):
    """List the entries of a store, sorted by kernel, dtype and dims (a malformed record:
    a FAIL line, exit status 1). BACKEND: the implementation built (one kernel's buckets
    may differ: a backend can leave some to the next). TIERS: what a server runs
    (compiled: a deserialized executable; portable: the jax.export module, +vjp with its
    stored VJP); BINARIES: the kernels' own binaries stored beside them (ptx, cubin,
    mosaic)."""
    from .artifact.record import problem
    _, index = _open_index(store_dir)
    rows, failed = [], []
    for key, r in index["entries"].items():
        why = problem(key, r)
        if why:
            failed.append({"key": str(key), "error": why})
        else:
            rows.append(_entry_summary(key, r))
    rows.sort(key=_numeric_order)
    if as_json:
        for row in rows + failed:
            _echo_json(row)
        sys.exit(1 if failed else 0)
    click.echo(f"target {index.get('target')}: {len(rows) + len(failed)} entries")
    meshed = any(row["mesh"] for row in rows)      # a MESH column only for a multi-chip store
    table = [("KEY", "KERNEL", "BACKEND", "DTYPE", "DIMS", "STATIC") + (("MESH",) if meshed else ())
             + ("TIERS", "BINARIES")]
    for row in rows:
        table.append((
            row["key"][:12], row["kernel"], str(row["backend"]), str(row["dtype"]),
            " ".join(f"{k}={v}" for k, v in (row["dims"] or {}).items()),
            ",".join(f"{k}={v}" for k, v in (row["static"] or {}).items() if v not in (None, False)) or "-",
            *([",".join(f"{a}={n}" for a, n in (row["mesh"] or {}).items()) or "-"] if meshed else []),
            ",".join(t + ("+vjp" if t == "portable" and row["vjp"] else "") for t in row["tiers"]) or "-",
            ",".join(row["binaries"]) or "-"))
    if rows:
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for r in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for row in failed:
        click.echo(f"FAIL {row['key'][:12]}: {row['error']}")
    sys.exit(1 if failed else 0)


def _find_entry(index, prefix):
    hits = [k for k in index["entries"] if isinstance(k, str) and k.startswith(prefix)]
    if not hits:
        _fail(f"no entry with key starting {prefix!r}")
    if len(hits) > 1:
        _fail(f"{prefix!r} is ambiguous: {len(hits)} entries match")
    return hits[0]


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.argument("entry")
@click.option("--hlo", is_flag=True, help="Also print the StableHLO of the portable tier.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON document: {"key", "summary", "record", "hlo"}.')
def inspect(store_dir, entry, hlo, as_json):
    """Everything about one entry (ENTRY: a key or a unique prefix of one)."""
    from .inspection import describe_entry
    from .artifact.record import problem
    store, index = _open_index(store_dir)
    key = _find_entry(index, entry)
    record = index["entries"][key]
    why = problem(key, record)
    if why:
        if as_json:
            _echo_json({"key": key, "error": why})
        else:
            click.echo(f"FAIL {key[:12]}: {why}")
        sys.exit(1)
    try:
        if as_json:
            text = None
            if hlo:
                import jax
                ref = record["payloads"]["exported"]
                text = jax.export.deserialize(bytearray(store.read_blob(ref["sha256"], ref["size"]))).mlir_module()
            _echo_json({"key": key, "summary": _entry_summary(key, record), "record": record, "hlo": text})
        else:
            click.echo(describe_entry(store, record, hlo=hlo))
    except EjaotError as e:
        _store_fail(e)


def _index_or_none(store_dir):
    from .store.filestore import FileStore
    try:
        return FileStore(store_dir).read_index()
    except (FileNotFoundError, EjaotError, OSError):
        return None


def _check_kernel_filter(kernels, index) -> set | None:
    """The --kernel filter, refused (exit 2) when it names a kernel that is neither
    installed nor in the store."""
    if not kernels:
        return None
    from .spec.registry import all_kernels
    known = set(all_kernels())
    if index is not None:
        known |= {r.get("kernel") for r in index["entries"].values() if isinstance(r, dict)}
    unknown = sorted(set(kernels) - known)
    if unknown:
        _fail(f"unknown kernel{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in --kernel; "
              f"known: {', '.join(sorted(k for k in known if isinstance(k, str)))}")
    return set(kernels)


def _matching(index, kernels) -> list[tuple]:
    if index is None:
        return []
    return [(k, r) for k, r in index["entries"].items()
            if kernels is None or not isinstance(r, dict) or r.get("kernel") in kernels]


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--numerics/--no-numerics", default=True, show_default=True,
              help="Run each entry on fresh random inputs against the reference where this device can.")
@click.option("--max-elements", type=click.IntRange(min=0), default=None,
              help="Skip numerics for entries whose largest reference intermediate exceeds this many "
                   "elements [default: 2^26 on a CPU; on a GPU or TPU, its memory limit / 16 bytes, "
                   "at least 2^26].")
@click.option("--kernel", "kernels", multiple=True,
              help="Only entries of this kernel (repeatable; an unknown name exits 2).")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: host, store, one object per entry, notes, and a last summary object.")
def verify(store_dir, numerics, max_elements, kernels, as_json):
    """Check every payload's sha256, this host's compatibility with each tier, and
    (where the device can run them) the numerics against the reference."""
    from .verify import render, verify_store
    _require_store(store_dir)
    index = _index_or_none(store_dir)
    only = _check_kernel_filter(kernels, index)
    progress = _Progress("verify", total=len(_matching(index, only)), lines=False)

    def on_event(event: dict) -> None:
        if as_json:
            progress.echo(json.dumps(event, sort_keys=True, default=_jsonable))
        else:
            progress.echo(render(event))
        if event["type"] == "entry":
            progress.advance(1, f"{event['key'][:12]} {event['kernel']}")
    ok = verify_store(store_dir, numerics=numerics, max_elements=max_elements, echo=None, on_event=on_event,
                      kernels=only)
    progress.finish()
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Re-sign finalized entries with this ed25519 private key (PEM).")
@click.option("--force", is_flag=True, help="Recompile entries that already have a usable compiled tier.")
@click.option("--kernel", "kernels", multiple=True,
              help="Only entries of this kernel (repeatable; an unknown name exits 2).")
def finalize(store_dir, sign_key, force, kernels):
    """Add the compiled tier for this host's device to every entry built for its platform
    (e.g. on an H100 for a gpu-sm90 store). Needs only jax."""
    from .build.finalize import finalize_store
    _require_store(store_dir)
    index = _index_or_none(store_dir)
    only = _check_kernel_filter(kernels, index)
    signer = _signer(sign_key)
    progress = _Progress("finalize", total=_finalize_steps(_matching(index, only), force), lines=False)

    def echo(line: str) -> None:
        progress.echo(line)
        if line.startswith(("ok   ", "FAIL ", "skip ", "REFUSED ")):
            progress.advance(1, line.split(":")[0].split(" ", 2)[-1][:40])
    try:
        counts = finalize_store(store_dir, echo=echo, signer=signer, force=force, kernels=only)
    except FileNotFoundError:
        _fail(f"{store_dir}: no store index")
    except EjaotError as e:
        _store_fail(e)
    finally:
        progress.finish()
    click.echo(f"finalized: {counts['compiled']} compiled, {counts['skipped']} skipped, {counts['failed']} failed"
               + (f", {counts['refused']} refused (signed entries need --sign)" if counts["refused"] else ""))
    sys.exit(1 if counts["failed"] or counts["refused"] else 0)


def _finalize_steps(matching: list, force: bool) -> int:
    """How many entries finalize reports a line for (it passes over the entries whose
    compiled tier is already usable here silently, unless --force)."""
    if force or not matching:
        return len(matching)
    try:
        import jax
        from .artifact import compat
        device = jax.local_devices()[0]
        platform = compat.local_platform(device)
        silent = sum(1 for k, r in matching if isinstance(r, dict)
                     and not (compat.record_problem(k, r) or compat.entry_problem(r, platform))
                     and compat.compiled_problem(r, device) is None)
    except Exception:  # noqa: BLE001 - only the progress bar's length depends on it
        silent = 0
    return len(matching) - silent


# -- misses -------------------------------------------------------------------------------

def _parse_since(value: str | None) -> float | None:
    """--since: seconds before now, or an ISO 8601 time (without a zone: local time)."""
    if value is None:
        return None
    try:
        return time.time() - float(value)
    except ValueError:
        pass
    from datetime import datetime
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number of seconds nor an ISO 8601 time "
                                 "(e.g. 3600 or 2026-05-01T12:00:00Z)", param_hint="--since") from None


def _round_up(value: int, grid: list[int] | None, how: str) -> int:
    if how == "exact" or not isinstance(value, int) or value <= 0:
        return value
    if how == "grid" and grid:
        above = [g for g in grid if g >= value]
        if above:
            return min(above)
    return 1 << (value - 1).bit_length()      # the next power of two (grid fallback, or pow2)


def _suggest(group: dict, bundle, how: str) -> tuple[list[dict], list[dict]]:
    """(suggested buckets, misses the store now covers) of one summarized group: each
    observed shape's paddable dims rounded up (onto the store's grid for the group, or to a
    power of two), shapes rounding to the same bucket merged. A rounded bucket the kernel's
    own checks refuse is replaced by the observed shape."""
    spec = _spec_of(group["kernel"], group.get("module"))
    paddable = spec.paddable if spec is not None else frozenset()
    suggestions: dict = {}
    covered = []
    for b in group["buckets"]:
        dims = b["dims"]
        args = (group["kernel"], dims, group["dtype"], group["inputs"], group["static"])
        if bundle is not None and bundle.covers(*args, dtypes=group.get("dtypes")):
            covered.append(b)
            continue
        grid = bundle.bucket_grid(*args) if bundle is not None and how == "grid" else {}
        rounded = {d: (_round_up(v, grid.get(d), how) if d in paddable else v) for d, v in dims.items()}
        if rounded != dims and spec is not None and spec.check is not None:
            try:
                spec.check(rounded, spec.canonical_static(group["static"]))
            except Exception:  # noqa: BLE001 - the kernel refuses the rounded shape: keep the observed one
                rounded = dict(dims)
        key = json.dumps(rounded, sort_keys=True)
        s = suggestions.setdefault(key, {"dims": rounded, "count": 0, "observed": []})
        s["count"] += b["count"]
        s["observed"].append(b)
    return sorted(suggestions.values(), key=lambda s: -s["count"]), covered


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--toml", "as_toml", is_flag=True, help="Print manifest tables to add.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (see README: Command line).")
@click.option("--round", "how", type=click.Choice(["grid", "pow2", "exact"]), default="grid", show_default=True,
              help="Suggested buckets: each paddable dim rounded up onto the store's existing values for "
                   "the same kernel, dtype, inputs and statics (grid; past them, to a power of two), to "
                   "the next power of two (pow2), or as observed (exact).")
@click.option("--since", default=None, metavar="SECONDS|ISO",
              help="Only misses logged in the last SECONDS, or since an ISO 8601 time.")
@click.option("--clear", is_flag=True,
              help="Empty the log atomically, reporting what it held (a miss logged meanwhile goes to "
                   "the new log, never lost).")
@click.option("--all", "show_all", is_flag=True, help="Also list misses the store now covers.")
def misses(store_dir, as_toml, as_json, how, since, clear, show_all):
    """Summarize the calls no bucket covered, as buckets to add.

    Counts calls (a server logs each uncovered signature once, then counts its calls in
    memory and appends the counts when it exits). Misses the store now covers (exact or
    padded, by the entries this host accepts) are dropped."""
    from .runtime.misslog import read_misses, summarize, take_misses
    from .store.filestore import FileStore
    if as_toml and as_json:
        _fail("give --toml or --json, not both")
    store = FileStore(store_dir)
    if not os.path.isdir(store_dir):
        what = "is not a directory" if os.path.exists(store_dir) else "does not exist"
        _fail(f"no store at {store_dir}: the path {what}")
    if not store.index_path.exists() and not store.misses_path.exists():
        _fail(f"{store_dir} is not a store: it has neither {store.index_path.name} nor {store.misses_path.name}")
    cutoff = _parse_since(since)
    try:
        if clear:
            records, bad = take_misses(store.misses_path, store.root / "tmp")
        else:
            records, bad = read_misses(store.misses_path)
    except EjaotError as e:
        _store_fail(e)
    except PermissionError as e:
        _fail(f"{store_dir}: --clear needs to write to the store ({e.strerror}: {e.filename})")
    if cutoff is not None:
        records = [r for r in records if isinstance(r.get("time"), (int, float)) and r["time"] >= cutoff]

    bundle, unchecked = None, None
    if records:
        if store.index_path.exists():
            import ejaot
            index = _index_or_none(store_dir)
            modules = {r.get("module") for r in (index or {"entries": {}})["entries"].values()
                       if isinstance(r, dict)} - {None}
            bundle = ejaot.load(store_dir, miss_log=False, kernel_modules=modules)
            if bundle.store_problem:
                unchecked, bundle = bundle.store_problem, None
        else:
            unchecked = "the store has no index"
    groups, covered_calls, covered_shapes = [], 0, 0
    for g in summarize(records):
        g["buckets"] = [{**b, "dims": _kernel_order(g["kernel"], g.get("module"), b["dims"])} for b in g["buckets"]]
        suggested, covered = _suggest(g, bundle, how)
        covered_calls += sum(b["count"] for b in covered)
        covered_shapes += len(covered)
        g = {**g, "misses": sum(b["count"] for b in suggested), "suggested": suggested,
             "covered": covered, "covered_misses": sum(b["count"] for b in covered)}
        if not suggested and not show_all:
            continue
        groups.append(g)

    if as_json:
        _echo_json({"store": str(store_dir), "round": how, "since": cutoff, "cleared": clear,
                    "coverage_checked": unchecked is None, "coverage_unchecked_reason": unchecked,
                    "covered": {"calls": covered_calls, "shapes": covered_shapes},
                    "unreadable_lines": bad,
                    "groups": [{k: g[k] for k in ("kernel", "module", "dtype", "inputs", "dtypes", "static",
                                                  "misses", "covered_misses", "buckets", "suggested", "covered")}
                               for g in groups]})
        return
    if not records:
        click.echo("no misses recorded" + (" in that time" if cutoff is not None and not clear else ""))
    for g in groups:
        if as_toml:
            if not g["suggested"]:
                continue
            click.echo("[[kernel]]")
            click.echo(f'name = "{g["kernel"]}"')
            if g.get("module"):          # an outside kernel (a model's step): its module
                click.echo(f'module = "{g["module"]}"')
            click.echo(f'dtypes = ["{g["dtype"]}"]')
            if g["inputs"]:
                click.echo(f"inputs = {json.dumps(g['inputs'])}")
            stat = _non_default_static(g["kernel"], g.get("module"), g["static"])
            if stat:
                click.echo("static = { " + ", ".join(f"{k} = {_toml(v)}" for k, v in stat.items()) + " }")
            click.echo("buckets = [")
            for b in g["suggested"]:
                click.echo("  { " + ", ".join(f"{k} = {v}" for k, v in b["dims"].items()) + " },  # "
                           + f"{b['count']} misses, {len(b['observed'])} shapes")
            click.echo("]\n")
        else:
            stat = ",".join(f"{k}={v}" for k, v in _non_default_static(g["kernel"], g.get("module"),
                                                                          g["static"]).items())
            inputs = ",".join(g["inputs"]) or "none"
            more = f" ({_n(g['covered_misses'], 'miss')} now covered)" if g["covered_misses"] else ""
            click.echo(f"{g['kernel']} {g['dtype']}, static {stat or 'defaults'}, optional inputs {inputs}: "
                       f"{_n(g['misses'], 'miss')}{more}")
            for b in g["suggested"]:
                click.echo(f"  bucket {_dims_text(b['dims'])}  <- {_n(b['count'], 'miss')}")
                for o in b["observed"]:
                    click.echo(f"    {o['count']:>6}  {_dims_text(o['dims'])}")
            for o in g["covered"] if show_all else ():
                click.echo(f"  covered now  {o['count']:>6}  {_dims_text(o['dims'])}")
    if not as_toml:
        if covered_shapes:
            click.echo(f"({_n(covered_calls, 'miss')} of {_n(covered_shapes, 'shape')} the store now covers "
                       f"{'listed as covered now' if show_all else 'not shown; --all lists them'})")
        if unchecked and records:
            click.echo(f"(coverage not checked: {unchecked})")
        if bad:
            click.echo(f"({bad} unreadable lines skipped)")
        if clear:
            click.echo(f"(the miss log was emptied: {_n(len(records), 'line')} taken)")


def _n(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _dims_text(dims: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


def _spec_of(kernel: str, module: str | None):
    """The kernel's spec: an outside kernel's from its module where this process may import
    it (the store's index names it), else None."""
    from .spec.registry import find_kernel
    try:
        return find_kernel(kernel, module)
    except ImportError:
        return None


def _kernel_order(kernel: str, module: str | None, dims: dict) -> dict:
    """dims in the order the kernel declares them (the log writes them sorted by name)."""
    spec = _spec_of(kernel, module)
    order = list(spec.dims) if spec is not None else []
    return dict(sorted(dims.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def _non_default_static(kernel: str, module: str | None, static: dict) -> dict:
    spec = _spec_of(kernel, module)
    defaults = spec.canonical_static({}) if spec else {}
    return {k: v for k, v in static.items() if v is not None and v != defaults.get(k)}


def _toml(v):
    return json.dumps(v)


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--grace", type=float, default=3600.0, show_default=True,
              help="Keep unreferenced blobs younger than this many seconds (a build may be writing them).")
def gc(store_dir, grace):
    """Delete blobs no index entry references (safe while servers read the store)."""
    from .store.filestore import FileStore
    _require_store(store_dir)    # before the store's lock file would create anything
    try:
        r = FileStore(store_dir).collect_garbage(grace)
    except FileNotFoundError:
        _fail(f"{store_dir}: no store index")
    except EjaotError as e:
        _store_fail(e)
    except PermissionError as e:
        _fail(f"{store_dir}: gc needs to write to the store, which is read-only here "
              f"({e.strerror}: {e.filename}); run it as the store's owner")
    click.echo(f"removed {r['removed']} blobs ({r['bytes_freed']} bytes); kept {r['live']} live, "
               f"{r['kept_recent']} recent unreferenced")


@main.group()
def tune():
    """Autotuning: build candidate configs anywhere, measure them on the target device."""


@tune.command("build")
@click.option("--manifest", default=None, type=click.Path(dir_okay=False),
              help="Manifest (TOML) [default: the packaged manifests/default.toml].")
@click.option("--target", required=True, help="Target to tune, e.g. gpu-sm90.")
@click.option("--out", required=True, help="Candidates store directory.")
@click.option("--jobs", type=click.IntRange(min=1), default=None)
def tune_build(manifest, target, out, jobs):
    """Lower every candidate config of every bucket into a candidates store (no device needed)."""
    from .build.builder import build_entries
    from .build.manifest import load_manifest
    from .targets import get_target
    from .tune import candidate_entries
    try:
        tgt = get_target(target)
        entries = candidate_entries(load_manifest(manifest or _default_manifest()), tgt)
    except (KeyError, EjaotError) as e:
        _fail(e.args[0] if isinstance(e, KeyError) else str(e))
    if not entries:      # e.g. the cpu target: its XLA backends have no configs to tune
        click.echo(f"nothing to tune: no bucket of the manifest runs a backend with candidate configs "
                   f"on {tgt.name}")
        return
    progress = _Progress("tune build")
    report = build_entries(entries, tgt, out, jobs=jobs, progress=progress, supersede=False)
    progress.finish()
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@tune.command("measure")
@click.argument("candidates_dir", type=click.Path(file_okay=False))
@click.option("--write/--no-write", default=True, show_default=True,
              help="Write the winners to kernels/<kernel>/tuned/<target>.json.")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True,
              help="Samples per candidate (each ~20 ms of back-to-back calls; the median is kept).")
def tune_measure(candidates_dir, write, iters):
    """On the target's device: time every candidate (checked against the reference) and
    keep the fastest per bucket, with its measured time. Each candidate runs as a jitted
    program, as a server's jitted step runs it, on up to 8 input sets in turn (256 MiB of
    inputs where the sets are that large)."""
    from .targets import get_target
    from .tune import measure_store, write_tuned
    _, index = _open_index(candidates_dir)
    progress = _Progress("tune measure", total=_tune_buckets(index), lines=False)

    def echo(line: str) -> None:
        progress.echo(line)
        if not line.startswith(" "):          # "<bucket>: best ..." or "<bucket>: no candidate ran"
            progress.advance(1, line.split(":")[0][:40])
    try:
        result = measure_store(candidates_dir, echo=echo, iters=iters)
    except EjaotError as e:
        progress.finish()
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    progress.finish()
    if write:
        for path in write_tuned(result, get_target(index["target"]), echo=click.echo):
            click.echo(f"wrote {path}")


def _tune_buckets(index) -> int | None:
    """How many buckets a candidates store holds (the measure's steps)."""
    from .build import tuned
    try:
        return len({(r["kernel"], tuned.bucket_key(r["backend"], r["dims"], r["dtype"], r["static"]))
                    for r in index["entries"].values() if isinstance(r, dict)})
    except Exception:  # noqa: BLE001 - only the progress bar's length depends on it
        return None


@main.command()
@click.argument("private_key", type=click.Path(dir_okay=False))
@click.argument("public_key", type=click.Path(dir_okay=False))
def keygen(private_key, public_key):
    """Write a new ed25519 key pair (PEM) for `build --sign` and `load(trusted_keys=...)`."""
    from .artifact.signing import generate_keypair
    for p in (private_key, public_key):
        if os.path.exists(p):
            _fail(f"{p} exists; not overwriting a key")
        if not os.path.isdir(os.path.dirname(os.path.abspath(p))):
            _fail(f"{p}: the folder {os.path.dirname(os.path.abspath(p))} does not exist")
    click.echo(f"key id {generate_keypair(private_key, public_key)}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per target.")
def targets(as_json):
    """List the build targets."""
    from .targets import TARGETS
    for t in TARGETS.values():
        if as_json:
            _echo_json({"name": t.name, "platform": t.platform, "aliases": list(t.aliases),
                        "backends": list(t.backends), "description": t.description, "facts": dict(t.facts)})
            continue
        alias = f" (aliases: {', '.join(t.aliases)})" if t.aliases else ""
        click.echo(f"{t.name:<10} {t.platform:<5} {t.description}{alias}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per kernel.")
def kernels(as_json):
    """List the installed kernels and their backends."""
    from .spec.registry import all_kernels
    for k in all_kernels().values():
        if as_json:
            _echo_json(_kernel_summary(k))
            continue
        click.echo(f"{k.name:<22} backends: {', '.join(k.backends)}; dims: {', '.join(k.dims)}")


def _kernel_summary(k) -> dict:
    def arg(a):
        return {"name": a.name, "dims": list(a.dims), "dtype": a.dtype, "optional": a.optional, "tree": a.is_tree}
    return {"name": k.name, "package": k.package, "backends": list(k.backends), "dims": list(k.dims),
            "paddable": sorted(k.paddable), "dim_defaults": dict(k.dim_defaults),
            "valid_length_dims": list(k.valid_length_dims), "dtypes": list(k.dtypes),
            "inputs": [arg(a) for a in k.inputs], "outputs": [arg(a) for a in k.outputs],
            "static": [{"name": s.name, "default": s.default, "doc": s.doc} for s in k.statics],
            "doc": _first_line(k.doc or getattr(sys.modules.get(k.package), "__doc__", None))}


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


if __name__ == "__main__":
    main()

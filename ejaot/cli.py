"""ejaot command line: build, inspect and verify artifact stores."""
from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .errors import EjaotError


def _fail(msg: str, code: int = 2):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ejaot")
def main():
    """Ahead-of-time compiled JAX kernel artifacts: build a store once, load it at
    server start-up in milliseconds."""


@main.command()
@click.option("--manifest", "manifest", default="manifests/default.toml", show_default=True,
              type=click.Path(dir_okay=False), help="Manifest (TOML) listing kernels, buckets, dtypes.")
@click.option("--target", default="cpu", show_default=True, help="Target, e.g. cpu, gpu-sm90, tpu-v5e.")
@click.option("--out", default=None, help="Store directory [default: artifacts/<target>].")
@click.option("--jobs", type=int, default=None, help="Parallel build processes [default: all cores].")
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
def build(manifest, target, out, jobs, sign_key, quiet, max_entries, shard, executor, ray_address):
    """Lower every manifest entry for TARGET and write them to the store.

    Incremental: entries already stored under the same key are reused. Exits non-zero
    naming each entry that failed; the others are kept."""
    from .build import build as run_build
    from .targets import get_target
    try:
        tgt = get_target(target)
    except KeyError as e:
        _fail(e.args[0])
    out = out or os.path.join("artifacts", tgt.name)
    signer = None
    if sign_key:
        from .signing import Signer
        signer = Signer.from_file(sign_key)
    progress = None if quiet else _progress_printer()
    try:
        from .shard import parse_shard
        report = run_build(manifest, tgt.name, out, jobs=jobs, progress=progress, signer=signer,
                           max_entries=max_entries, shard=parse_shard(shard) if shard else None,
                           executor=executor, ray_address=ray_address)
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
    from .merge import merge_stores
    try:
        report = merge_stores(out, stores, trusted_keys=list(trusted_keys) or None)
    except EjaotError as e:
        _fail(str(e))
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


def _progress_printer():
    tty = sys.stderr.isatty()

    def progress(done, total, desc):
        width = 30
        filled = int(width * done / max(total, 1))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {desc}"
        if tty:
            click.echo("\r" + line[:120].ljust(120), nl=False, err=True)
        else:
            click.echo(line, err=True)
    progress.finish = lambda: click.echo("", err=True) if tty else None
    return progress


def _open_index(store_dir):
    from .store.filestore import FileStore
    store = FileStore(store_dir)
    try:
        return store, store.read_index()
    except FileNotFoundError:
        _fail(f"{store_dir}: no store index ({store.index_path} not found)")
    except EjaotError as e:
        _fail(str(e))


def _entry_summary(key, r) -> dict:
    return {
        "key": key, "kernel": r.get("kernel"), "target": r.get("target"), "backend": r.get("backend"),
        "shapes": {n: s for n, s, _ in r.get("inputs", [])},
        "dtypes": {n: d for n, _, d in r.get("inputs", [])},
        "dims": r.get("dims"), "static": r.get("static"), "config": r.get("config"),
        "config_source": r.get("config_source"),
        "payloads": {k: v.get("size") for k, v in r.get("payloads", {}).items()},
        "toolchain": r.get("toolchain"), "built_at": r.get("built_at"),
    }


@main.command("ls")
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
def ls_cmd(store_dir, as_json):
    """List the entries of a store (a malformed record: a FAIL line, exit status 1)."""
    from .artifact.record import problem
    _, index = _open_index(store_dir)
    rows, failed = [], []
    for key, r in index["entries"].items():
        why = problem(key, r)
        if why:
            failed.append({"key": str(key), "error": why})
        else:
            rows.append(_entry_summary(key, r))
    rows.sort(key=lambda row: (row["kernel"], str(row["dims"])))
    if as_json:
        for row in rows + failed:
            click.echo(json.dumps(row, sort_keys=True))
        sys.exit(1 if failed else 0)
    click.echo(f"target {index.get('target')}: {len(rows) + len(failed)} entries")
    for row in rows:
        dims = " ".join(f"{k}={v}" for k, v in (row["dims"] or {}).items())
        tiers = ",".join(sorted(row["payloads"]))
        stat = ",".join(f"{k}={v}" for k, v in (row["static"] or {}).items() if v not in (None, False))
        click.echo(f"{row['key'][:12]}  {row['kernel']:<20} {row['dtypes'] and next(iter(row['dtypes'].values())):<9} "
                   f"{dims}  {stat}  [{tiers}]")
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
def inspect(store_dir, entry, hlo):
    """Everything about one entry (ENTRY: a key or a unique prefix of one)."""
    from .inspection import describe_entry
    from .artifact.record import problem
    store, index = _open_index(store_dir)
    key = _find_entry(index, entry)
    why = problem(key, index["entries"][key])
    if why:
        click.echo(f"FAIL {key[:12]}: {why}")
        sys.exit(1)
    try:
        click.echo(describe_entry(store, index["entries"][key], hlo=hlo))
    except EjaotError as e:
        _fail(str(e))


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--numerics/--no-numerics", default=True, show_default=True,
              help="Run each entry on fresh random inputs against the reference where this device can.")
@click.option("--max-elements", type=int, default=None,
              help="Skip numerics for entries whose largest reference intermediate exceeds this many "
                   "elements [default: 2^26 on a CPU; on a GPU or TPU, its memory limit / 16 bytes, "
                   "at least 2^26].")
@click.option("--kernel", "kernels", multiple=True, help="Only entries of this kernel (repeatable).")
def verify(store_dir, numerics, max_elements, kernels):
    """Check every payload's sha256, this host's compatibility with each tier, and
    (where the device can run them) the numerics against the reference."""
    from .verify import verify_store
    ok = verify_store(store_dir, numerics=numerics, max_elements=max_elements, echo=click.echo,
                      kernels=set(kernels) or None)
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Re-sign finalized entries with this ed25519 private key (PEM).")
@click.option("--force", is_flag=True, help="Recompile entries that already have a usable compiled tier.")
@click.option("--kernel", "kernels", multiple=True, help="Only entries of this kernel (repeatable).")
def finalize(store_dir, sign_key, force, kernels):
    """Add the compiled tier for this host's device to every entry built for its platform
    (e.g. on an H100 for a gpu-sm90 store). Needs only jax."""
    from .finalize import finalize_store
    signer = None
    if sign_key:
        from .signing import Signer
        signer = Signer.from_file(sign_key)
    try:
        counts = finalize_store(store_dir, echo=click.echo, signer=signer, force=force,
                                kernels=set(kernels) or None)
    except FileNotFoundError:
        _fail(f"{store_dir}: no store index")
    except EjaotError as e:
        _fail(str(e))
    click.echo(f"finalized: {counts['compiled']} compiled, {counts['skipped']} skipped, {counts['failed']} failed"
               + (f", {counts['refused']} refused (signed entries need --sign)" if counts["refused"] else ""))
    sys.exit(1 if counts["failed"] or counts["refused"] else 0)


@main.command()
@click.argument("store_dir", type=click.Path(file_okay=False))
@click.option("--toml", "as_toml", is_flag=True, help="Print manifest tables to add.")
def misses(store_dir, as_toml):
    """Summarize calls no bucket covered, as buckets to add."""
    from .runtime.misslog import read_misses, summarize
    from .store.filestore import FileStore
    try:
        records, bad = read_misses(FileStore(store_dir).misses_path)
    except EjaotError as e:
        _fail(str(e))
    if not records:
        click.echo("no misses recorded")
    groups = summarize(records)
    for g in groups:
        if as_toml:
            click.echo("[[kernel]]")
            click.echo(f'name = "{g["kernel"]}"')
            click.echo(f'dtypes = ["{g["dtype"]}"]')
            if g["inputs"]:
                click.echo(f"inputs = {json.dumps(g['inputs'])}")
            stat = _non_default_static(g["kernel"], g["static"])
            if stat:
                click.echo("static = { " + ", ".join(f"{k} = {_toml(v)}" for k, v in stat.items()) + " }")
            click.echo("buckets = [")
            for b in g["buckets"]:
                click.echo("  { " + ", ".join(f"{k} = {v}" for k, v in b["dims"].items()) + " },  # " + f"{b['count']} misses")
            click.echo("]\n")
        else:
            total = sum(b["count"] for b in g["buckets"])
            stat = ",".join(f"{k}={v}" for k, v in g["static"].items() if v not in (None, False))
            click.echo(f"{g['kernel']} {g['dtype']} {stat}: {total} misses")
            for b in g["buckets"]:
                click.echo(f"  {b['count']:>6}  " + " ".join(f"{k}={v}" for k, v in b["dims"].items()))
    if bad:
        click.echo(f"({bad} unreadable lines skipped)")


def _non_default_static(kernel: str, static: dict) -> dict:
    from .registry import all_kernels
    spec = all_kernels().get(kernel)
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
    try:
        r = FileStore(store_dir).collect_garbage(grace)
    except FileNotFoundError:
        _fail(f"{store_dir}: no store index")
    except EjaotError as e:
        _fail(str(e))
    except PermissionError as e:
        _fail(f"{store_dir}: gc needs to write to the store, which is read-only here "
              f"({e.strerror}: {e.filename}); run it as the store's owner")
    click.echo(f"removed {r['removed']} blobs ({r['bytes_freed']} bytes); kept {r['live']} live, "
               f"{r['kept_recent']} recent unreferenced")


@main.group()
def tune():
    """Autotuning: build candidate configs anywhere, measure them on the target device."""


@tune.command("build")
@click.option("--manifest", default="manifests/default.toml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--target", required=True, help="Target to tune, e.g. gpu-sm90.")
@click.option("--out", required=True, help="Candidates store directory.")
@click.option("--jobs", type=int, default=None)
def tune_build(manifest, target, out, jobs):
    """Lower every candidate config of every bucket into a candidates store (no device needed)."""
    from .build import build_entries
    from .manifest import load_manifest
    from .targets import get_target
    from .tune import candidate_entries
    try:
        tgt = get_target(target)
        entries = candidate_entries(load_manifest(manifest), tgt)
    except (KeyError, EjaotError) as e:
        _fail(e.args[0] if isinstance(e, KeyError) else str(e))
    report = build_entries(entries, tgt, out, jobs=jobs, progress=_progress_printer(), supersede=False)
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
    keep the fastest per bucket, with its measured time."""
    from .targets import get_target
    from .tune import measure_store, write_tuned
    _, index = _open_index(candidates_dir)
    result = measure_store(candidates_dir, echo=click.echo, iters=iters)
    if write:
        for path in write_tuned(result, get_target(index["target"]), echo=click.echo):
            click.echo(f"wrote {path}")


@main.command()
@click.argument("private_key", type=click.Path(dir_okay=False))
@click.argument("public_key", type=click.Path(dir_okay=False))
def keygen(private_key, public_key):
    """Write a new ed25519 key pair (PEM) for `build --sign` and `load(trusted_keys=...)`."""
    from .signing import generate_keypair
    for p in (private_key, public_key):
        if os.path.exists(p):
            _fail(f"{p} exists; not overwriting a key")
    click.echo(f"key id {generate_keypair(private_key, public_key)}")


@main.command()
def targets():
    """List the build targets."""
    from .targets import TARGETS
    for t in TARGETS.values():
        alias = f" (aliases: {', '.join(t.aliases)})" if t.aliases else ""
        click.echo(f"{t.name:<10} {t.platform:<5} {t.description}{alias}")


@main.command()
def kernels():
    """List the installed kernels and their backends."""
    from .registry import all_kernels
    for k in all_kernels().values():
        click.echo(f"{k.name:<22} backends: {', '.join(k.backends)}; dims: {', '.join(k.dims)}")


if __name__ == "__main__":
    main()

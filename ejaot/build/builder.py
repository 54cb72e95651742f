"""The build step: plan a manifest for a target, lower what the store lacks, commit.

Incremental: an entry whose key is already in the index with all its blobs is reused.
Crash-safe: each entry is committed to the index as soon as it is lowered, so a killed
build keeps every finished entry and the next build does only the rest. One failing
entry is reported and does not stop the others.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

from ..errors import StoreError
from .manifest import DEFAULT_MAX_ENTRIES, load_manifest
from .plan import EntrySpec, Skipped, plan
from ..store.filestore import FileStore
from ..targets import get_target


@dataclass
class BuildReport:
    target: str
    out: str
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)     # (description, error)
    pruned: int = 0                                                  # entries removed by prune
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        s = (f"{self.target}: {len(self.built)} built, {len(self.reused)} reused, "
             f"{len(self.failed)} failed in {self.seconds:.1f}s -> {self.out}")
        lines = [s]
        if self.pruned:
            lines.append(f"  pruned {self.pruned} entries the manifest no longer plans "
                         "(`ejaot gc` deletes their blobs)")
        lines += [f"  skipped {k.where} ({k.kernel}): {k.reason}" for k in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  FAILED {d}: {e}" for d, e in self.failed]
        return "\n".join(lines)


def _reusable(record: dict | None, store: FileStore, signer=None) -> bool:
    """An existing record the build keeps instead of lowering again: its blobs are there,
    and, when the build signs, it carries this key's valid signature (an unsigned record,
    or one of another key, is built and signed again)."""
    if not record:
        return False
    if signer is not None and signer.own_signature_problem(record):
        return False
    payloads = record.get("payloads") or {}
    return bool(payloads) and all(store.has_blob(p.get("sha256"), p.get("size")) for p in payloads.values())


def _worker_init(target_name: str) -> None:
    get_target(target_name).platform_module.prepare_process(get_target(target_name))


def _lower_in_worker(entry: EntrySpec, root: str) -> dict:
    from .lower import lower_and_store
    return lower_and_store(entry, root)


def build(manifest_path, target_name: str, out, jobs: int | None = None, progress=None,
          signer=None, max_entries: int | None = DEFAULT_MAX_ENTRIES,
          shard: tuple[int, int] | None = None, executor: str = "local",
          ray_address: str | None = None, prune: bool = False) -> BuildReport:
    """progress, if given, is called as progress(done, total, description) per entry.
    A manifest planning more than max_entries entries (None: no limit) is refused; its
    warnings (entries no call can reach) come back as the report's first notes.
    shard (I, N): only the I-th of N deterministic, cost-balanced shares (ejaot.build.shard).
    prune: the store keeps only the entries this manifest plans for the target (not with a
    shard, which plans a share of them)."""
    if prune and shard is not None:
        raise StoreError("--prune with --shard would remove the other shards' entries: prune the "
                         "merged store with a build of the whole manifest")
    target = get_target(target_name)
    manifest = load_manifest(manifest_path, max_entries=max_entries, target=target, warn=False)
    entries, skipped = plan(manifest, target, max_entries=max_entries)
    if shard is not None:
        from .shard import select
        entries = select(entries, shard)
    report = build_entries(entries, target, out, jobs=jobs, progress=progress, signer=signer, skipped=skipped,
                           executor=executor, ray_address=ray_address, prune=prune)
    report.notes[:0] = [f"warning: {w}" for w in manifest.warnings]
    return report


def build_entries(entries: list[EntrySpec], target, out, jobs=None, progress=None, signer=None,
                  skipped=(), supersede=True, executor: str = "local", ray_address=None,
                  prune: bool = False) -> BuildReport:
    """executor "local": worker processes here; "ray": Ray tasks (ejaot.build.executors.ray_executor),
    on a local Ray instance or the cluster at ray_address. prune: entries of the store that
    are not among `entries` are removed from its index (their blobs stay until `ejaot gc`)."""
    if executor not in ("local", "ray"):
        raise StoreError(f"unknown executor {executor!r}; expected 'local' or 'ray'")
    t0 = time.perf_counter()
    store = FileStore(out)
    report = BuildReport(target.name, str(out), skipped=list(skipped))
    existing, note = store.kept_entries(target.name)     # another target's store: StoreError
    if note:
        report.notes.append(note)
    todo = []
    for e in entries:
        if _reusable(existing.get(e.key), store, signer):
            report.reused.append(e.describe())
        else:
            todo.append(e)
    heur = sum(1 for e in entries if e.config_source.get("why"))
    if heur:
        report.notes.append(f"{heur} entries use heuristic configs "
                            f"({sorted({e.config_source['why'] for e in entries if e.config_source.get('why')})})")

    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    # Entries built from another version of a kernel's source can never be served by
    # this installation (the loader rejects them as stale): drop them as their
    # replacements are committed.
    current = {(e.kernel, e.backend): e.source_hash for e in entries}
    superseded = tuple(k for k, r in existing.items()
                       if isinstance(r, dict) and (r.get("kernel"), r.get("backend")) in current
                       and r.get("source_hash") != current[(r.get("kernel"), r.get("backend"))]
                       ) if supersede else ()
    planned = {e.key for e in entries}
    pruned = tuple(k for k in existing if k not in planned) if prune else ()

    # Records are committed in batches: a commit rewrites the whole index, so one per entry
    # costs O(entries^2) in a large build. A batch is flushed once the time since the last
    # flush exceeds both half a second and four times the last flush's own duration: a
    # killed build loses at most that much work, and the index rewrites stay a bounded
    # share of the build's time.
    batch: dict[str, tuple[EntrySpec, dict]] = {}
    flushed = {"at": time.perf_counter(), "took": 0.0}

    def flush():
        if not batch:
            return
        t = time.perf_counter()
        try:
            store.commit(target.name, {k: r for k, (_, r) in batch.items()}, remove=superseded)
            report.built.extend(e.describe() for e, _ in batch.values())
        except StoreError as err:   # e.g. a blob gc removed meanwhile: those entries failed
            for e, _ in batch.values():
                fail(e, err)
        batch.clear()
        flushed["at"], flushed["took"] = time.perf_counter(), time.perf_counter() - t

    def commit(e: EntrySpec, record: dict):
        if signer is not None:
            record = signer.sign(record)
        batch[e.key] = (e, record)
        if time.perf_counter() - flushed["at"] >= max(0.5, 4 * flushed["took"]):
            flush()

    def fail(e: EntrySpec, err: BaseException):
        msg = "".join(traceback.format_exception_only(type(err), err)).strip()
        report.failed.append((e.describe(), msg))

    # Multi-chip entries compile on that many devices: a platform whose device count is
    # fixed when jax starts (the host CPU) is asked for them now, before any worker starts.
    devices = max((e.layout.devices for e in todo if e.layout is not None), default=1)
    if devices > 1 and hasattr(target.platform_module, "reserve_devices"):
        target.platform_module.reserve_devices(devices)

    # In-process only when it is safe: the CPU target, or a fresh process whose jax is not
    # yet imported (other targets must set up their toolchain before jax loads).
    in_process = jobs == 1 and (target.platform == "cpu" or "jax" not in sys.modules)
    if todo and executor == "ray":
        target.platform_module.require_toolchain(target)
        from .executors import ray_executor
        ray_executor.run(todo, target, store, commit, fail, progress, address=ray_address, jobs=jobs)
    elif todo and in_process:
        _worker_init(target.name)
        from .lower import lower_and_store
        for e in todo:
            try:
                commit(e, lower_and_store(e, str(out)))
            except Exception as err:
                fail(e, err)
            if progress:
                progress(len(report.built) + len(batch) + len(report.failed), len(todo), e.describe())
    elif todo:
        # a missing toolchain is the user's to fix: say so here, not as a broken pool
        target.platform_module.require_toolchain(target)
        ctx = multiprocessing.get_context("spawn")   # jax is not fork-safe
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                    initargs=(target.name,)) as pool:
            futures = {pool.submit(_lower_in_worker, e, str(out)): e for e in todo}
            for fut in cf.as_completed(futures):
                e = futures[fut]
                try:
                    commit(e, fut.result())
                except Exception as err:
                    fail(e, err)
                if progress:
                    progress(len(report.built) + len(batch) + len(report.failed), len(todo), e.describe())
    flush()
    if pruned:      # one commit after the build's, also when nothing was built
        try:
            store.commit(target.name, {}, remove=pruned)
            report.pruned = len(pruned)
        except StoreError as err:
            report.notes.append(f"prune failed: {err}")
    if not todo and not existing and not entries:
        report.notes.append("the manifest has no entries for this target")
    report.seconds = time.perf_counter() - t0
    return report

"""`ejaot merge OUT STORE...`: shard stores (or any stores of one target) joined into one.

Every record is checked against the schema and every payload's sha256 verified (and, with
trusted keys, every signature) before anything is copied; identical keys are kept once; the
same key with different payload bytes is a conflict, reported and refused (nothing is
written); the merged index is committed once, atomically, after every blob is in place.

One payload is exempt from the byte comparison: a compiled executable. XLA compiles a
program's kernels in parallel and serializes their object code in the order the threads
finish, so two builds of one entry give different executable bytes that run the same code;
the first one is kept and the difference is noted. The portable tier and every kernel
binary (PTX, cubin, Mosaic) must match byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..artifact import record as records
from ..errors import EjaotError, StoreError
from ..store.filestore import FileStore


@dataclass
class MergeReport:
    out: str
    target: str | None = None
    merged: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"merged {self.merged} entries ({self.duplicates} duplicates kept once) -> {self.out}"
                if self.ok else f"merge refused: {len(self.problems)} problem(s); nothing written to {self.out}")
        return "\n".join([head] + [f"  {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes])


def _payload_identity(record: dict) -> dict:
    return {kind: (ref["sha256"], ref["size"]) if kind != "executable" else "compiled"
            for kind, ref in record["payloads"].items()}


def merge_stores(out, sources, trusted_keys=None) -> MergeReport:
    report = MergeReport(str(out))
    verifier = None
    if trusted_keys is not None:
        from ..artifact.signing import Verifier
        verifier = Verifier(trusted_keys)
    chosen: dict[str, tuple[dict, FileStore, str]] = {}
    for src in sources:
        store = FileStore(src)
        try:
            index = store.read_index()
        except FileNotFoundError:
            report.problems.append(f"{src}: no store index")
            continue
        except EjaotError as e:
            report.problems.append(f"{src}: {e}")
            continue
        if report.target is None:
            report.target = index["target"]
        elif index["target"] != report.target:
            report.problems.append(f"{src}: built for target {index['target']!r}, the others for {report.target!r}")
            continue
        for key, rec in index["entries"].items():
            where = f"{src}: entry {str(key)[:12]}"
            why = records.problem(key, rec) or (verifier.problem(rec) if verifier else None)
            if why:
                report.problems.append(f"{where}: {why}")
                continue
            try:
                for ref in rec["payloads"].values():
                    store.read_blob(ref["sha256"], ref["size"])      # verified, not yet copied
            except StoreError as e:
                report.problems.append(f"{where}: {e}")
                continue
            if key in chosen:
                if _payload_identity(chosen[key][0]) != _payload_identity(rec):
                    report.problems.append(f"{where}: conflicts with {chosen[key][2]} (same key, different bytes)")
                else:
                    report.duplicates += 1
                    if chosen[key][0]["payloads"].get("executable") != rec["payloads"].get("executable"):
                        report.notes.append(f"{where}: compiled tier differs from {chosen[key][2]}'s "
                                            "(executables are not byte-reproducible); the first is kept")
                continue
            chosen[key] = (rec, store, str(src))
    if not report.ok or not chosen:
        if not chosen and report.ok:
            report.problems.append("no entries to merge")
        return report
    dest = FileStore(out)
    try:
        dest.kept_entries(report.target)      # a store holds one target: refused before any copy
    except StoreError as e:
        report.problems.append(str(e))
        return report
    for rec, store, _ in chosen.values():
        for ref in rec["payloads"].values():
            dest.put_blob(store.read_blob(ref["sha256"], ref["size"]))
    dest.commit(report.target, {key: rec for key, (rec, _, _) in chosen.items()})
    report.merged = len(chosen)
    return report

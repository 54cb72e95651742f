"""A store on a local or shared filesystem.

    <root>/index.msgpack        the index (see format.py)
    <root>/blobs/ab/abcd...     payloads, named by their sha256
    <root>/misses.jsonl         calls no bucket covered (runtime/misslog.py)
    <root>/tmp/                 staging for atomic writes
    <root>/.lock                serializes index updates between builders

Every write goes to tmp/ and is os.replace()d into place: rename within one filesystem
is atomic, so a reader sees the old file or the new one, never a half-written one, and
a killed writer leaves only a stray temp file. Index updates read-merge-write under an
exclusive flock, so concurrent builders never drop each other's entries; readers take no
lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import time
import uuid
from pathlib import Path

from ..errors import StoreError
from .format import Undecodable, decode_index, decode_index_sections, decode_section, encode_index

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
INDEX_NAME = "index.msgpack"
MAX_INDEX_BYTES = 256 << 20      # an index past this is refused before it is read
MAX_BLOB_BYTES = 4 << 30         # likewise a payload (executables of large steps run to 100s of MB)


def read_regular_file(path, limit: int, inside: str | None = None) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (inside the folder
    `inside` when given). The type is checked before opening (lstat) and again on the
    open descriptor (fstat), and the open never blocks (O_NONBLOCK: a FIFO swapped in
    between the two checks is refused, not waited on); symlinks are refused."""
    path = os.fspath(path)
    if inside is not None:
        real = os.path.realpath(path)
        if os.path.commonpath([real, inside]) != inside:
            raise StoreError(f"{path} resolves outside the store ({real})")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FileNotFoundError(path) from None
    except OSError as e:
        raise StoreError(f"{path}: cannot stat ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{path} is a symlink (refused)")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path} is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(path) from None
    except OSError as e:
        raise StoreError(f"{path}: cannot open ({e.strerror}; symlinks are refused)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file")
        if st.st_size > limit:
            raise StoreError(f"{path} has {st.st_size} bytes, more than the {limit} expected")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise StoreError(f"{path} grew past the {limit} bytes expected while being read")
    return data


def _is_real_dir(path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_regular(path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class FileStore:
    def __init__(self, root):
        self.root = Path(root)
        self._real_root = None

    # -- paths --------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    @property
    def misses_path(self) -> Path:
        return self.root / "misses.jsonl"

    def blob_path(self, sha: str) -> Path:
        # The sha comes from an index that may be hostile: only 64 hex digits can name a
        # blob, so no index entry can point outside blobs/.
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise StoreError(f"invalid blob name {sha!r} (expected 64 hex digits)")
        return self.root / "blobs" / sha[:2] / sha

    # -- writing ------------------------------------------------------------------
    def _own_dir(self, path: Path) -> Path:
        """path, a directory of the store (tmp/, blobs/, blobs/ab/), made if missing. A
        symlink or a non-directory there is refused: writes (and gc's deletions) must not
        follow a link out of the store."""
        self.root.mkdir(parents=True, exist_ok=True)
        for p in [q for q in (path, *path.parents) if q != self.root and self.root in q.parents][::-1]:
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                p.mkdir(exist_ok=True)
                st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise StoreError(f"{p} is {kind}; ejaot writes only into the store's own directories")
        return path

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        tmpdir = self._own_dir(self.root / "tmp")
        tmp = tmpdir / f"{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._own_dir(dest.parent)
        os.replace(tmp, dest)

    def put_blob(self, data: bytes, verify_existing: bool = True) -> dict:
        """Writes data as the blob its sha256 names, unless that blob is there already
        with these bytes (verify_existing=False: a file of its size is enough). A damaged
        blob of the same name is written anew, so a build or merge repairs it."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        present = self.has_blob(sha, len(data))
        if present and verify_existing:
            try:
                self.read_blob(sha, len(data))
            except StoreError:
                present = False
        if not present:
            self._atomic_write(path, data)
        else:
            # an unreferenced blob reused by this build: fresh again, so that `gc` (which
            # spares blobs younger than its grace) cannot delete it before the commit
            os.utime(path)
        return {"sha256": sha, "size": len(data)}

    @contextlib.contextmanager
    def locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        try:     # never through a symlink, never blocking on a FIFO
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):     # the caller's to explain
                raise PermissionError(e.errno, e.strerror, str(path)) from None
            raise StoreError(f"{path}: cannot open the store's lock file ({e.strerror}; it must be "
                             "a regular file, not a symlink)") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{path} is not a regular file (the store's lock file)")
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def kept_entries(self, target: str) -> tuple[dict, str | None]:
        """(the index's records a write for `target` keeps, a note on what it cannot keep).
        A store holds one target: an index of another target is refused (StoreError), not
        replaced. A corrupt index is replaced (its blobs are re-referenced as entries
        rebuild); a damaged kernel section, an undecodable record or a key that is not a
        string is dropped alone, as the runtime rejects it alone."""
        try:
            index = self.read_index_sections()
        except FileNotFoundError:
            return {}, None
        except StoreError as e:
            return {}, f"existing index unusable, rebuilding: {e}"
        if index.get("target") != target:
            raise StoreError(f"{self.root} holds entries for target {index.get('target')!r}, not {target!r}: "
                             f"a store holds one target; write {target!r} into another directory")
        entries, dropped = {}, []
        for kernel, raw in index["sections"].items():
            try:
                entries.update(decode_section(raw, kernel, str(self.index_path)))
            except StoreError as e:
                dropped.append(str(e))
        entries = {k: v for k, v in entries.items() if isinstance(k, str) and not isinstance(v, Undecodable)}
        return entries, ("dropped from the index: " + "; ".join(dropped)) if dropped else None

    def commit(self, target: str, records: dict, remove: tuple[str, ...] = ()) -> None:
        """Adds records (key -> record) to the index, atomically, under the lock."""
        with self.locked():
            entries, _ = self.kept_entries(target)
            for key, record in records.items():
                for kind, ref in (record.get("payloads") or {}).items():
                    if not self.has_blob(ref.get("sha256"), ref.get("size")):
                        raise StoreError(f"entry {key[:12]}: its {kind} blob is gone (deleted by a "
                                         "concurrent `ejaot gc`?); build the entry again")
            entries.update(records)
            for k in remove:
                entries.pop(k, None)
            self._atomic_write(self.index_path, encode_index(target, entries))

    # -- reading ------------------------------------------------------------------
    def read_index(self) -> dict:
        """Raises FileNotFoundError when there is no index, StoreError when it is bad."""
        data = self._read_regular(self.index_path, MAX_INDEX_BYTES)
        return decode_index(data, str(self.index_path))

    def read_index_sections(self) -> dict:
        """The verified index with each kernel's records still encoded (see format.py)."""
        return decode_index_sections(self._read_regular(self.index_path, MAX_INDEX_BYTES), str(self.index_path))

    def has_blob(self, sha: str, size: int) -> bool:
        try:
            st = os.lstat(self.blob_path(sha))
        except (FileNotFoundError, StoreError):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def read_blob(self, sha: str, size: int | None = None) -> bytes:
        """The blob's bytes, only if they hash to `sha`; StoreError otherwise."""
        path = self.blob_path(sha)
        if size is not None and (type(size) is not int or not 0 <= size <= MAX_BLOB_BYTES):
            raise StoreError(f"blob {sha[:16]}: size {size!r} is not one ejaot reads (limit {MAX_BLOB_BYTES})")
        try:
            data = self._read_regular(path, MAX_BLOB_BYTES if size is None else size)
        except FileNotFoundError:
            raise StoreError(f"blob {sha[:16]} is missing") from None
        if size is not None and len(data) != size:
            raise StoreError(f"blob {sha[:16]} has {len(data)} bytes, the index says {size}")
        if hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"blob {sha[:16]} does not match its sha256 (corrupted or tampered)")
        return data

    def _read_regular(self, path: Path, limit: int) -> bytes:
        """Reads a regular file inside the store, of at most `limit` bytes, refusing
        symlinks, anything that resolves outside the store's root, and anything that is not
        a regular file (a FIFO, device or socket), before it could block or be read."""
        return read_regular_file(path, limit, self._root_real())

    def _root_real(self) -> str:
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        return self._real_root

    # -- maintenance ---------------------------------------------------------------
    def blob_names(self) -> list[str]:
        """The names of the regular files under blobs/xx/ that name a blob; symlinks and
        anything but directories are skipped, never followed."""
        blobs = self.root / "blobs"
        if not _is_real_dir(blobs):
            return []
        found = []
        for sub in blobs.iterdir():
            if _is_real_dir(sub):
                found += [p.name for p in sub.iterdir() if _SHA_RE.match(p.name) and p.name[:2] == sub.name
                          and _is_regular(p)]
        return found

    def collect_garbage(self, grace_seconds: float = 3600.0) -> dict:
        """Deletes blobs no index entry references and stale temp files.

        Runs under the builders' lock, so no build can commit a record whose blob this
        deletes; a blob younger than `grace_seconds` is kept, since a running build writes
        its blobs before it commits the record that references them. Readers are safe:
        they only read blobs the index they loaded references, and those are kept."""
        with self.locked():
            index = self.read_index()
            live = set()
            for key, r in index["entries"].items():
                refs = r.get("payloads") if isinstance(r, dict) else None
                if not isinstance(refs, dict) or not all(isinstance(p, dict) for p in refs.values()):
                    raise StoreError(f"entry {str(key)[:12]}: malformed record (its payloads are not a "
                                     "table of blob references); gc deletes nothing while a record "
                                     "cannot say which blobs it needs (`ejaot verify` lists it)")
                live.update(p.get("sha256") for p in refs.values())
            now = time.time()
            removed, kept_young, freed = 0, 0, 0
            for sha in self.blob_names():
                if sha in live:
                    continue
                path = self.blob_path(sha)
                st = os.lstat(path)
                if now - st.st_mtime < grace_seconds:
                    kept_young += 1
                    continue
                path.unlink()
                removed += 1
                freed += st.st_size
            tmpdir = self.root / "tmp"
            for tmp in (tmpdir.iterdir() if _is_real_dir(tmpdir) else ()):
                if _is_regular(tmp) and now - os.lstat(tmp).st_mtime >= grace_seconds:
                    tmp.unlink()
            return {"removed": removed, "bytes_freed": freed, "kept_recent": kept_young, "live": len(live)}

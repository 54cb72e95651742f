"""The miss log: what no stored bucket served, counted per call without a write per call.

A process writes one JSON line the first time it sees an uncovered call signature (so a
crash loses nothing but counts), then only counts that signature's later calls in memory.
The counts go to the log as further lines of the same form, each with its "count": when the
process exits (atexit), when the bundle is garbage-collected, at most every
FLUSH_INTERVAL seconds from a miss, and on MissLog.flush(). A reader sums the "count" fields
(a line without one, from an older ejaot, counts 1). Calls under a JAX trace are counted
once per trace, as in Bundle.stats().

Lines are appended with a single write() on an O_APPEND descriptor, so lines from many
threads and processes never interleave (each line is far below the size the kernel
writes atomically for appends on a local filesystem). The log never writes outside the
store and never blocks: a symlink is not followed (O_NOFOLLOW), a FIFO or device is refused
(O_NONBLOCK, then fstat), and a short write (a full disk) is cut back to the last whole
line and stops the log, so a reader never sees half a line from it.

`ejaot misses DIR` reads the log (read_misses, summarize), drops what the store now covers
and suggests buckets; `take_misses` empties it atomically (`--clear`)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import threading
import time
import uuid
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Callable


MAX_LOG_BYTES = 64 << 20     # a miss log past this is not read
FLUSH_INTERVAL = 300.0       # seconds: counts are written at least this often while misses go on


class _LogState:
    """Everything a MissLog writes, apart from the MissLog itself, so that its counts can be
    flushed at exit or collection (weakref.finalize must not hold the MissLog)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lock = threading.Lock()
        self.seen: set = set()
        self.base: dict = {}           # signature -> the line's fields, less time/pid/count
        self.pending: dict = {}        # signature -> calls not yet written
        self.error: str | None = None
        self.last_flush = time.monotonic()

    def write(self, fields: dict, count: int) -> None:
        if self.path is None or self.error:
            return
        line = json.dumps({**fields, "count": count, "time": time.time(), "pid": os.getpid()},
                          sort_keys=True) + "\n"
        try:
            _append(self.path, line.encode())
        except OSError as e:   # a read-only store or a full disk must not take the server down
            self.error = f"miss log not writable ({e.strerror}); misses are counted in stats() only"
        except _Refused as e:
            self.error = f"miss log refused: {e}; misses are counted in stats() only"

    def flush(self) -> None:
        with self.lock:
            due = [(self.base[s], n) for s, n in self.pending.items() if n > 0]
            for s in self.pending:
                self.pending[s] = min(self.pending[s], 0)
            self.last_flush = time.monotonic()
        for fields, n in due:
            self.write(fields, n)

    def forget_counts(self) -> None:
        """In a forked child: the parent's unwritten counts are the parent's to write."""
        self.lock = threading.Lock()
        for s in self.pending:
            self.pending[s] = min(self.pending[s], 0)


_states: weakref.WeakSet = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: [s.forget_counts() for s in list(_states)])


class MissLog:
    def __init__(self, path: Path | None):
        self._state = _LogState(path)
        _states.add(self._state)
        weakref.finalize(self, self._state.flush)    # at collection, or at interpreter exit

    @property
    def path(self) -> Path | None:
        return self._state.path

    @property
    def error(self) -> str | None:
        return self._state.error

    def record(self, signature, kernel: str, dims: dict, dtype: str, present, static: dict, reason: str,
               dtypes: dict | None = None, module: str | None = None) -> Callable[[], None] | None:
        """Notes an uncovered call signature: its first line is written now (count 1).
        Returns the function to call on each call served for it (the first included), which
        counts it in memory; None when there is no log."""
        if self._state.path is None:
            return None
        st = self._state
        with st.lock:
            if signature not in st.seen:
                st.seen.add(signature)
                st.base[signature] = {"kernel": kernel, "dims": dims, "dtype": dtype, "inputs": list(present),
                                      "dtypes": dtypes or {}, "static": static, "reason": reason,
                                      **({"module": module} if module else {})}
                st.pending[signature] = -1        # the first call is the line written here
                first = st.base[signature]
            else:
                first = None
        if first is not None:
            st.write(first, 1)

        def hit() -> None:
            with st.lock:
                st.pending[signature] = st.pending.get(signature, 0) + 1
                due = time.monotonic() - st.last_flush > FLUSH_INTERVAL
            if due:
                st.flush()
        return hit

    def flush(self) -> None:
        """Writes the calls counted since the last flush (one line per signature)."""
        self._state.flush()


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Refused(f"{path} is not a regular file")
        written = os.write(fd, data)
        if written != len(data):
            # cut the partial line off again if nothing was appended after it
            end = os.fstat(fd).st_size
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end - written)
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
    finally:
        os.close(fd)


class _Refused(Exception):
    pass


def read_misses(path: Path) -> tuple[list[dict], int]:
    """Parsed lines and the number of unreadable ones."""
    from ..store.filestore import read_regular_file
    out, bad = [], 0
    try:
        text = read_regular_file(path, MAX_LOG_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            if (isinstance(rec, dict) and isinstance(rec.get("kernel"), str) and isinstance(rec.get("dims"), dict)
                    and _count(rec) is not None):
                out.append(rec)
                continue
        except json.JSONDecodeError:
            pass
        bad += 1
    return out, bad


def take_misses(path: Path, staging: Path) -> tuple[list[dict], int]:
    """Empties the log atomically and returns what it held (as read_misses): the log is
    renamed into `staging` (the store's tmp/) before it is read, so a line appended
    meanwhile goes either to the records returned or to a fresh log, never lost between. A
    log that cannot be read is not cleared."""
    from ..errors import StoreError
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return [], 0
    if not stat.S_ISREG(st.st_mode):      # a link, FIFO or folder: refused, and left alone
        raise StoreError(f"{path} is not a regular file; nothing was cleared")
    try:
        staging_ok = stat.S_ISDIR(os.lstat(staging).st_mode)
    except FileNotFoundError:
        staging.mkdir(parents=True)
        staging_ok = True
    if not staging_ok:
        raise StoreError(f"{staging} is not the store's own directory (a symlink?); nothing was cleared")
    taken = staging / f"{Path(path).name}.taken.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return [], 0
    try:
        time.sleep(0.05)      # a writer that opened the old log just before finishes its one write()
        result = read_misses(taken)
    except BaseException:
        # unread, so not cleared: back in place, or, when a server has started a new log
        # since, beside it in the store (not in tmp/, whose old files gc deletes)
        back = path if not os.path.lexists(path) else Path(path).with_name(taken.name)
        os.rename(taken, back)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(taken)
    return result


def _count(rec: dict) -> int | None:
    n = rec.get("count", 1)
    return n if type(n) is int and n >= 0 else None


def summarize(misses: list[dict]) -> list[dict]:
    """Groups misses by kernel, dtype, inputs and static args; lists the distinct shapes
    (dims) seen with their call counts (the sum of the lines' "count"), most frequent first."""
    groups: dict = defaultdict(lambda: defaultdict(int))
    meta = {}
    for m in misses:
        g = json.dumps([m["kernel"], m.get("module"), m.get("dtype"), m.get("inputs", []), m.get("static", {})],
                       sort_keys=True)
        meta.setdefault(g, m)
        groups[g][json.dumps(m["dims"], sort_keys=True)] += _count(m) or 0
    out = []
    for g, shapes in groups.items():
        m = meta[g]
        out.append({"kernel": m["kernel"], "module": m.get("module"), "dtype": m.get("dtype"),
                    "inputs": m.get("inputs", []),
                    "static": m.get("static", {}), "dtypes": m.get("dtypes", {}),
                    "buckets": [{"dims": json.loads(d), "count": c}
                                for d, c in sorted(shapes.items(), key=lambda kv: -kv[1])]})
    return sorted(out, key=lambda g: -sum(b["count"] for b in g["buckets"]))

"""The miss log: one JSON line per distinct uncovered call signature per process.

Lines are appended with a single write() on an O_APPEND descriptor, so lines from many
threads and processes never interleave (each line is far below the size the kernel
writes atomically for appends on a local filesystem). The log never writes outside the
store and never blocks: a symlink is not followed (O_NOFOLLOW), a FIFO or device is refused
(O_NONBLOCK, then fstat), and a short write (a full disk) is cut back to the last whole
line and stops the log, so a reader never sees half a line from it."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import threading
import time
from collections import defaultdict
from pathlib import Path


MAX_LOG_BYTES = 64 << 20     # a miss log past this is not read


class MissLog:
    def __init__(self, path: Path | None):
        self.path = path
        self._seen: set = set()
        self._lock = threading.Lock()
        self.error: str | None = None

    def record(self, signature, kernel: str, dims: dict, dtype: str, present, static: dict, reason: str,
               dtypes: dict | None = None):
        with self._lock:
            if signature in self._seen:
                return
            self._seen.add(signature)
        if self.path is None or self.error:
            return
        line = json.dumps({"kernel": kernel, "dims": dims, "dtype": dtype, "inputs": list(present),
                           "dtypes": dtypes or {}, "static": static, "reason": reason,
                           "time": time.time(), "pid": os.getpid()}, sort_keys=True) + "\n"
        try:
            self._append(line.encode())
        except OSError as e:   # a read-only store or a full disk must not take the server down
            self.error = f"miss log not writable ({e.strerror}); misses are counted in stats() only"
        except _Refused as e:
            self.error = f"miss log refused: {e}; misses are counted in stats() only"

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _Refused(f"{self.path} is not a regular file")
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
            if isinstance(rec, dict) and isinstance(rec.get("kernel"), str) and isinstance(rec.get("dims"), dict):
                out.append(rec)
                continue
        except json.JSONDecodeError:
            pass
        bad += 1
    return out, bad


def summarize(misses: list[dict]) -> list[dict]:
    """Groups misses by kernel, dtype, inputs and static args; lists the distinct shapes
    (dims) seen with their counts, most frequent first."""
    groups: dict = defaultdict(lambda: defaultdict(int))
    meta = {}
    for m in misses:
        g = json.dumps([m["kernel"], m.get("dtype"), m.get("inputs", []), m.get("static", {})], sort_keys=True)
        meta[g] = m
        groups[g][json.dumps(m["dims"], sort_keys=True)] += 1
    out = []
    for g, shapes in groups.items():
        m = meta[g]
        out.append({"kernel": m["kernel"], "dtype": m.get("dtype"), "inputs": m.get("inputs", []),
                    "static": m.get("static", {}),
                    "buckets": [{"dims": json.loads(d), "count": c}
                                for d, c in sorted(shapes.items(), key=lambda kv: -kv[1])]})
    return sorted(out, key=lambda g: -sum(b["count"] for b in g["buckets"]))

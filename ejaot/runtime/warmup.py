"""Loading entries before their first call: Bundle.warmup() and ejaot.load(eager=...).

A warm-up run verifies and deserializes entries on a few worker threads (PJRT releases the
GIL while it deserializes, so entries load side by side). The threads are created by the
caller, so a background run started at load never has to create one while the
interpreter shuts down. Calls come first: while a call resolves its plan (its kernel's
records, its entry's deserialization), no worker starts a new entry; and entries with a
compiled tier go first, as PJRT deserializes them without holding the GIL.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable


class CallsFirst:
    """Counts calls that are resolving their plan; warm-up workers wait for none."""

    def __init__(self):
        self._cond = threading.Condition()
        self._loading = 0

    @contextmanager
    def loading(self):
        with self._cond:
            self._loading += 1
        try:
            yield
        finally:
            with self._cond:
                self._loading -= 1
                if not self._loading:
                    self._cond.notify_all()

    def wait(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._loading)


class WarmUp:
    """One warm-up run over the entries `list_entries()` returns (called once, by the first
    worker, so that starting a run costs the caller nothing)."""

    def __init__(self, list_entries: Callable[[], list], calls_first: CallsFirst, threads: int):
        self._list_entries = list_entries
        self._calls_first = calls_first
        self._lock = threading.Lock()
        self._entries: list | None = None
        self._next = 0
        self.tiers: Counter = Counter()          # entries per tier they got ready with
        self.error: str | None = None            # the first unexpected error, if any
        # not daemons: interpreter shutdown must not cut a deserialization short
        self._threads = [threading.Thread(target=self._work, name=f"ejaot-warmup-{i}")
                         for i in range(max(1, threads))]

    def start(self) -> "WarmUp":
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """True once every worker has finished; waits `timeout` seconds in all, not per worker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _take(self):
        with self._lock:
            if self._entries is None:
                try:
                    self._entries = list(self._list_entries())
                except Exception as e:   # the server keeps running; stats() reports it
                    self._entries = []
                    self.error = f"listing entries: {type(e).__name__}: {e}"
            if self._next >= len(self._entries):
                return None
            self._next += 1
            return self._entries[self._next - 1]

    def _work(self):
        while (entry := self._take()) is not None:
            self._calls_first.wait()
            try:
                tier = ready_tier(entry)
            except Exception as e:       # StoredEntry reports bad bytes itself; this is a bug
                tier = "error"
                with self._lock:
                    self.error = self.error or f"{entry.describe()}: {type(e).__name__}: {e}"
            with self._lock:
                self.tiers[tier] += 1


def ready_tier(entry) -> str:
    """Materializes the entry's compiled tier (its portable one where it has none)."""
    if entry.compiled() is not None:
        return "compiled"
    return "portable" if entry.portable() is not None else "unusable"

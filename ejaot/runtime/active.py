"""The process-wide store that `ejaot.ops` serves from.

Chosen by `ejaot.use(path_or_bundle)`, else by the EJAOT_STORE environment variable (read
on the first call that asks for it); with neither, `ejaot.ops` runs the JIT path, so the
same model code runs with or without a store.
"""
from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_bundle = None
_chosen = False          # use() was called (possibly with None): the environment is not read


def use(store=None, **load_options):
    """Serves `ejaot.ops` from `store`: a Bundle, a store directory (opened with
    ejaot.load(store, **load_options)), or None for the JIT path. Returns the bundle."""
    global _bundle, _chosen
    from .bundle import Bundle, load
    if store is not None and not isinstance(store, Bundle):
        store = load(store, **load_options)
    elif load_options:
        raise TypeError("ejaot.use: load options apply only when a store path is given")
    with _lock:
        _bundle, _chosen = store, True
    return store


def active():
    """The bundle `ejaot.ops` dispatches to, or None (JIT path)."""
    global _bundle, _chosen
    if not _chosen:
        with _lock:
            if not _chosen:
                path = os.environ.get("EJAOT_STORE")
                if path:
                    from .bundle import load
                    _bundle = load(path)
                _chosen = True
    return _bundle

"""Ray as the build executor: `ejaot build --executor ray [--ray-address ADDR]`.

The driver plans; each entry is lowered (and compiled, where the worker can compile for the
target) by a Ray task that returns the payload bytes and metadata, never touching the store;
the driver writes the blobs and commits each record through the same FileStore code as a
local build. So a worker needs no access to the store's filesystem, a worker that dies is
retried by Ray (its task had written nothing), and a task that fails for a kernel reason is
reported per entry. Each worker process prepares the target's toolchain once.

Ray is an optional extra (`pip install ejaot[ray]`), imported only here.
"""
from __future__ import annotations

import os
import sys

from ...errors import EjaotError

# Fault injection for the tests: the first task that finds this path absent creates it
# and kills its worker process, so Ray must retry it.
CRASH_ONCE_ENV = "EJAOT_RAY_CRASH_ONCE"

_prepared: set[str] = set()


def _lower_remote(entry):
    """Runs in a Ray worker: (payloads by kind, record metadata) of one entry."""
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    if entry.target not in _prepared:
        from ..builder import _worker_init
        _worker_init(entry.target)
        _prepared.add(entry.target)
    from ..lower import lower_entry
    return lower_entry(entry)


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Raises EjaotError unless something accepts a TCP connection at `address` (host:port or
    ray://host:port): ray.init retries an unreachable cluster for minutes without a word.
    'auto' and 'local' (Ray's own discovery) are left to Ray."""
    import socket
    hostport = address.split("://", 1)[-1]
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise EjaotError(f"--ray-address {address!r}: the port {port!r} is not a number") from None
    try:
        with socket.create_connection((host.strip("[]"), port_number), timeout=timeout):
            pass
    except OSError as err:
        reason = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise EjaotError(f"--ray-address {address!r}: no Ray cluster answers at {host}:{port_number} "
                         f"({reason})") from None


def run(todo, target, store, commit, fail, progress=None, address=None, jobs=None, max_retries=3):
    """Lowers `todo` on Ray; commit(entry, record) / fail(entry, error) as results arrive."""
    try:
        import ray
    except ImportError:
        raise EjaotError("--executor ray needs Ray: pip install 'ejaot[ray]' (or -r requirements/ray.txt)") from None
    from ..lower import make_record
    started = not ray.is_initialized()
    if started and address:
        check_reachable(address)
    if started:
        # workers import ejaot and any outside kernel package the way this process does
        env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
               **{k: os.environ[k] for k in ("JAX_PLATFORMS", "EJAOT_EXTRAS", CRASH_ONCE_ENV) if k in os.environ}}
        kwargs = {"address": address} if address else {"num_cpus": jobs or os.cpu_count() or 1}
        ray.init(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, **kwargs)
    try:
        task = ray.remote(max_retries=max_retries, retry_exceptions=False)(_lower_remote)
        pending = {task.remote(e): e for e in todo}
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            entry = pending.pop(ref)
            try:
                payloads, meta = ray.get(ref)
                refs = {kind: store.put_blob(data) for kind, data in payloads.items()}
                commit(entry, make_record(entry, refs, meta))
            except ray.exceptions.RayTaskError as err:       # the kernel's own error, per entry
                fail(entry, err.cause if isinstance(err.cause, BaseException) else err)
            except Exception as err:  # a worker lost past its retries, or the store refused
                fail(entry, err)
            done += 1
            if progress:
                progress(done, len(todo), entry.describe())
    finally:
        if started:
            ray.shutdown()

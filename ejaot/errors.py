"""The errors ejaot raises on purpose: each names what was wrong and where."""


class EjaotError(Exception):
    """Base class of every error ejaot raises deliberately."""


class ManifestError(EjaotError):
    """A manifest is malformed; the message names the file and the key."""

    def __init__(self, path, key, problem):
        self.path, self.key, self.problem = str(path), key, problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class CallError(EjaotError, TypeError):
    """A call's arguments do not fit the kernel's signature."""


class BucketMissError(EjaotError):
    """Strict mode: no stored bucket covers the call."""


class StoreError(EjaotError):
    """A store cannot be opened or written (format, integrity, permissions)."""


class TargetUnavailableError(EjaotError):
    """A target's toolchain is missing on this host."""

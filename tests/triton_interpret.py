"""Running Triton kernels (the tl dialect; not Gluon) on the CPU through Triton's interpreter
(TRITON_INTERPRET=1), on NumPy arrays: the numerics checks of the Triton backends' kernels
that CI can run. The interpreter reads and writes kernel arguments through the few methods
of a torch tensor that NpTensor gives a NumPy array (no torch here); kernels are launched
directly (kernel[grid](...)), since jax-triton's launch needs a GPU.

TRITON_INTERPRET must be set before a kernel's module is imported (triton.jit reads it when
decorating), so each check runs in a subprocess: `run_interpreted(script)`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


class _Storage:
    def __init__(self, arr: np.ndarray):
        self.arr = arr

    def data_ptr(self) -> int:
        return self.arr.ctypes.data

    def cpu(self):
        return self

    def copy_(self, other) -> None:   # the host copy is the array itself
        pass


class NpTensor:
    """A contiguous NumPy array seen by Triton's interpreter as a tensor: kernels write
    into `arr` in place."""

    def __init__(self, arr: np.ndarray):
        self.arr = np.ascontiguousarray(arr)

    @property
    def dtype(self):
        return self.arr.dtype

    def data_ptr(self) -> int:
        return self.arr.ctypes.data

    def untyped_storage(self) -> _Storage:
        return _Storage(self.arr)

    def new_empty(self, *args, **kwargs) -> "NpTensor":
        return NpTensor(np.empty(0, self.arr.dtype))

    def set_(self, storage: _Storage, offset, size, stride) -> "NpTensor":
        self.arr = storage.arr
        return self

    def storage_offset(self) -> int:
        return 0

    def size(self):
        return self.arr.shape

    def stride(self):
        return tuple(s // self.arr.itemsize for s in self.arr.strides)

    def copy_(self, other) -> None:
        pass


def run_interpreted(script: str) -> list[dict]:
    """Runs `script` in a subprocess with TRITON_INTERPRET=1 (and this folder importable);
    returns the JSON of each line it prints as "RESULT <json>"."""
    env = dict(os.environ, TRITON_INTERPRET="1", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"interpreted run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]

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


_LAUNCH_ONLY = ("num_warps", "num_stages", "num_ctas", "compute_capability", "name", "debug",
                "enable_fp_fusion", "serialized_metadata", "zeroed_outputs")


def emulated_triton_call(*args, kernel, out_type, grid, input_output_aliases=None, **kwargs):
    """jax_triton.triton_call's contract run through the interpreter: a jax.pure_callback that
    launches `kernel` on NumPy copies of the arguments and on fresh outputs filled with NaN
    (jax-triton's outputs start uninitialized: a kernel that leaves part of one unwritten
    shows), an aliased output being its input operand's array. Patched over
    jax_triton.triton_call, it runs the Triton backends' JAX wrappers end to end on the CPU
    (configs without TMA descriptors or Gluon kernels)."""
    import jax
    constexprs = {k: v for k, v in kwargs.items() if k not in _LAUNCH_ONLY}
    outs = tuple(out_type) if isinstance(out_type, (tuple, list)) else (out_type,)
    aliases = dict(input_output_aliases or {})

    def host(*arrays):
        arrays = [np.array(a) for a in arrays]
        results = [np.full(o.shape, np.nan, o.dtype) if np.issubdtype(o.dtype, np.floating)
                   else np.zeros(o.shape, o.dtype) for o in outs]
        for i, j in aliases.items():    # written in place: the kernel writes through operand i
            results[j] = arrays[i]
        g = grid(constexprs) if callable(grid) else tuple(grid)
        kernel[g](*[NpTensor(a) for a in arrays], *[NpTensor(r) for r in results], **constexprs)
        return tuple(results)

    res = jax.pure_callback(host, tuple(jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outs), *args)
    return res if isinstance(out_type, (tuple, list)) else res[0]

"""What the Triton lowering tests share: the skip when the CUDA extras are missing,
running a lowering script in a fresh CPU-only subprocess, the list of kernels each export
compiles (COMPILED), and one check on every kernel any of them compiles: it must need no
global scratch buffer.

Lowering Triton for CUDA on this host needs the CUDA plugin from the extras folder at the
front of sys.path with JAX_PLATFORMS=cpu set before jax is imported, so each script runs in
a subprocess whose first lines do exactly that (as the build does)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Every lowering script starts with this: set the process up for gpu-sm90 before jax, and
# record each kernel's global scratch size as jax-triton reads it from Triton. A kernel
# that needs one (device-made TMA descriptors) gets it from jaxlib allocating and freeing on
# the stream at each launch, which cannot run inside XLA's command buffers (CUDA graphs):
# jitted programs inlining such a kernel failed on the H100 (BENCHMARKS.md).
PRELUDE = '''\
from ejaot.targets import get_target
get_target("gpu-sm90").platform_module.prepare_process(get_target("gpu-sm90"))  # before jax
import atexit as _atexit, json as _json
import jax_triton.triton_lib as _jt_lib
_SCRATCH = {}
_compile_ptx = _jt_lib.compile_ttir_to_ptx_inplace

def _recording_compile_ptx(module, backend, options, capability):
    result = _compile_ptx(module, backend, options, capability)
    _SCRATCH[result.name] = max(_SCRATCH.get(result.name, 0), result.global_scratch_size or 0)
    return result
_jt_lib.compile_ttir_to_ptx_inplace = _recording_compile_ptx
_atexit.register(lambda: print("SCRATCH " + _json.dumps(_SCRATCH), flush=True))

# COMPILED: [name, shared memory bytes] of each kernel compiled, in order (a script clears it
# per export; a cached kernel is not compiled again). Too much shared memory only fails at
# launch on the GPU.
COMPILED = []
_compile_ttir = _jt_lib.compile_ttir_inplace

def _recording_compile_ttir(*args, **kwargs):
    result = _compile_ttir(*args, **kwargs)
    COMPILED.append([result.name, int(result.shared_mem_bytes)])
    return result
_jt_lib.compile_ttir_inplace = _recording_compile_ttir
'''


def _extras() -> Path:
    from ejaot.toolchain import extras_dir
    return extras_dir("cuda")


requires_cuda_extras = pytest.mark.skipif(
    not _extras().is_dir(),
    reason=f"CUDA extras for lowering Triton on a CPU host are not installed ({_extras()} is missing)")


def lower_cases(script: str, cases: list[dict]) -> list[dict]:
    """Runs `script` (which reads CASES and prints one "RESULT <json>" line per result)
    in a subprocess and returns the parsed results, after checking that no kernel it
    compiled needs a global scratch buffer (PRELUDE)."""
    code = f"import json\nCASES = json.loads({json.dumps(cases)!r})\n" + PRELUDE + script
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, f"lowering failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    scratch = [json.loads(line[len("SCRATCH "):]) for line in proc.stdout.splitlines()
               if line.startswith("SCRATCH ")]
    assert len(scratch) == 1, f"the subprocess did not report its kernels: {proc.stdout[-2000:]}"
    needs = {name: size for name, size in scratch[0].items() if size}
    assert not needs, (f"kernels that need a global scratch buffer (bytes per program), which "
                       f"breaks them inside XLA command buffers: {needs}")
    return [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
            if line.startswith("RESULT ")]

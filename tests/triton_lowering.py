"""What the Triton lowering tests share: the skip when the CUDA extras are missing, and
running a lowering script in a fresh CPU-only subprocess.

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

# Every lowering script starts with this: set the process up for gpu-sm90 before jax.
PRELUDE = '''\
from ejaot.targets import get_target
get_target("gpu-sm90").platform_module.prepare_process(get_target("gpu-sm90"))  # before jax
'''


def _extras() -> Path:
    from ejaot.toolchain import extras_dir
    return extras_dir("cuda")


requires_cuda_extras = pytest.mark.skipif(
    not _extras().is_dir(),
    reason=f"CUDA extras for lowering Triton on a CPU host are not installed ({_extras()} is missing)")


def lower_cases(script: str, cases: list[dict]) -> list[dict]:
    """Runs `script` (which reads CASES and prints one "RESULT <json>" line per result)
    in a subprocess and returns the parsed results."""
    code = f"import json\nCASES = json.loads({json.dumps(cases)!r})\n" + PRELUDE + script
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, f"lowering failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
            if line.startswith("RESULT ")]

"""What the GPU kernel checks (gpu_paged_check.py, gpu_mla_check.py; flash_attention's timing
is benchmarks/gpu/'s suite) share: their common command-line options, the import set-up for export (CPU host) and
artifacts (GPU host) modes, loading an exported case, and the error measure."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def base_parser(description: str, out: str, quick_help: str, config_help: str) -> argparse.ArgumentParser:
    """The options every check takes; each script adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=out, help="JSON results path")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--export", metavar="DIR", help="(CPU build host) lower every case into DIR and exit")
    p.add_argument("--artifacts", metavar="DIR", help="(GPU host) run the kernels exported into DIR")
    p.add_argument("--cc", type=int, default=90, help="compute capability to export for (with --export)")
    p.add_argument("--config", default="{}", help=config_help)
    p.add_argument("--skip-numerics", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--only", default="", help="comma-separated case names to run (default all)")
    p.add_argument("--iters", type=int, default=0, help="timed batches per measurement (0: auto)")
    return p


def setup_paths(export: bool):
    sys.path.insert(0, str(REPO))
    if export:   # lowering Triton for CUDA on a CPU host: the plugin first, cpu platform
        from ejaot.toolchain import extras_dir
        os.environ["JAX_PLATFORMS"] = "cpu"
        extras = extras_dir("cuda")
        if not extras.is_dir():
            extras = REPO / ".venv" / "ejaot-extras" / "cuda"
        sys.path.insert(0, str(extras))
    if "ejaot_kernels" not in sys.modules:   # the repo's kernels/ folder, imported as ejaot_kernels
        spec = importlib.util.spec_from_file_location(
            "ejaot_kernels", REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["ejaot_kernels"] = mod
        spec.loader.exec_module(mod)


def load_exported(folder: Path, name: str):
    """An exported case from --artifacts (jax only: no triton or jax-triton needed)."""
    import jax
    return jax.export.deserialize(bytearray((folder / name).read_bytes()))


def rel_err(a, b):
    """(relative L2 error, max abs error) of a against b, in float64; inf if a is not finite."""
    import numpy as np
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if not np.all(np.isfinite(a)):
        return float("inf"), float("inf")
    denom = max(float(np.linalg.norm(b)), 1e-30)
    return float(np.linalg.norm(a - b) / denom), (float(np.max(np.abs(a - b))) if a.size else 0.0)


def gpu_ops(run):
    """[(name, start_ns, duration_ns)] of the GPU ops that run() executed, in start order,
    from a jax.profiler trace (CUPTI's per-stream kernel records); [] without CUPTI."""
    import glob
    import tempfile
    import jax
    from jax.profiler import ProfileData
    folder = tempfile.mkdtemp()
    with jax.profiler.trace(folder):
        jax.block_until_ready(run())
    events = []
    for f in glob.glob(f"{folder}/**/*.xplane.pb", recursive=True):
        for plane in ProfileData.from_file(f).planes:
            if plane.name.startswith("/device:GPU"):
                for line in plane.lines:
                    if "stream" in line.name.lower():   # op lines, not the launch/API ones
                        events += [(e.name, e.start_ns, e.duration_ns) for e in line.events]
    return sorted(events, key=lambda e: e[1])


def steady_period_s(events, calls):
    """The GPU's seconds per call in a traced batch of `calls` back-to-back dispatches: the
    median start-to-start interval of the longest op that ran once per call. The host's
    dispatch latency before the first op and its wait after the last are left out, and so is
    the slow start of the batch; idle gaps between calls stay in. None if no op ran once
    per call."""
    import statistics
    by_name = {}
    for name, start, dur in events:
        by_name.setdefault(name, []).append((start, dur))
    once = [v for v in by_name.values() if len(v) == calls]
    if not once or calls < 2:
        return None
    starts = [s for s, _ in max(once, key=lambda v: statistics.median(d for _, d in v))]
    return statistics.median(b - a for a, b in zip(starts, starts[1:])) / 1e9

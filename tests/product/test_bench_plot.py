"""Every result file in benchmarks/results/ follows benchmarks/plot.py's schema, so a
malformed result cannot land; the schema check needs no matplotlib (a bench-only dependency)."""
import copy
import json
import subprocess
import sys

import pytest

from conftest import REPO
from benchmarks.plot import RESULTS, validate

FILES = sorted(RESULTS.glob("*.json"))


def test_there_are_results():
    kinds = {json.loads(p.read_text()).get("kind") for p in FILES}
    assert {"startup", "kernel_vs_cudnn"} <= kinds, [p.name for p in FILES]


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_result_file_follows_the_schema(path):
    doc = json.loads(path.read_text())
    assert validate(doc) == [], path.name


def test_the_schema_check_imports_no_matplotlib():
    code = "import sys, benchmarks.plot; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


STARTUP = {"schema": 1, "kind": "startup", "title": "t", "device": "AMD EPYC, 2 cores, no accelerator",
           "date": "2026-12-03 12:00", "command": "make bench", "commit": "6e1636e", "source": "make bench",
           "unit": "s", "rows": [{"measure": "m", "label": "l", "values": {"jit": 5.0, "ejaot_steps": 0.1},
                                  "range": {"jit": [4.0, 6.0]}, "count": 3}]}
CUDNN = {"schema": 1, "kind": "kernel_vs_cudnn", "title": "t", "device": "H100 80GB HBM3",
         "date": "2026-11-22 20:55–21:03", "command": "c", "commit": "2bf759a",
         "source": "BENCHMARKS.md table flash_attention forward (Gluon) vs cuDNN vs XLA",
         "kernel": "flash_attention", "dtype": "bfloat16", "unit": "TFLOP/s",
         "rows": [{"shape": "B4 S2048", "time": None,
                   "ejaot": {"fwd": {"tflops": 388, "ms": 0.18}, "fwd_bwd": {"tflops": 313, "ms": 0.77}},
                   "cudnn": {"fwd": {"tflops": 406, "ms": 0.17}, "fwd_bwd": {"tflops": 332, "ms": 0.72}},
                   "fwd_vs_cudnn": 0.95, "fwd_bwd_vs_cudnn": 0.94}]}


def mutated(doc, path, value):
    doc = copy.deepcopy(doc)
    *parents, last = path
    target = doc
    for p in parents:
        target = target[p]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return doc


def test_well_formed_examples_pass():
    assert validate(STARTUP) == []
    assert validate(CUDNN) == []


@pytest.mark.parametrize("doc,path,value", [
    (STARTUP, ["schema"], 2),
    (STARTUP, ["kind"], "speed"),
    (STARTUP, ["commit"], KeyError),
    (STARTUP, ["commit"], "HEAD"),
    (STARTUP, ["date"], "yesterday"),
    (STARTUP, ["source"], "my laptop"),
    (STARTUP, ["device"], ""),
    (STARTUP, ["extra"], 1),
    (STARTUP, ["rows"], []),
    (STARTUP, ["unit"], "ms"),
    (STARTUP, ["rows", 0, "values", "jit"], -1.0),
    (STARTUP, ["rows", 0, "values", "jit"], "5 s"),
    (STARTUP, ["rows", 0, "values", "jit"], float("nan")),
    (STARTUP, ["rows", 0, "values", "jit"], KeyError),
    (STARTUP, ["rows", 0, "values", "ejaot_steps"], KeyError),
    (STARTUP, ["rows", 0, "values", "ejaot_fast"], 0.1),
    (STARTUP, ["rows", 0, "range", "jit"], [5.5, 6.0]),
    (STARTUP, ["rows", 0, "count"], 0),
    (STARTUP, ["rows", 0, "label"], KeyError),
    (CUDNN, ["kernel"], KeyError),
    (CUDNN, ["unit"], "ms"),
    (CUDNN, ["rows", 0, "fwd_vs_cudnn"], 1.05),          # a transcription error
    (CUDNN, ["rows", 0, "cudnn", "fwd", "tflops"], 0),
    (CUDNN, ["rows", 0, "ejaot", "fwd"], {"tflops": 388}),
    (CUDNN, ["rows", 0, "time"], "late"),
    (CUDNN, ["rows", 0, "shape"], KeyError),
])
def test_malformed_results_are_refused(doc, path, value):
    assert validate(mutated(doc, path, value)), (path, value)


def test_not_an_object_is_refused():
    assert validate([STARTUP]) and validate(None)


def test_plot_check_validates_without_matplotlib():
    # `--check` is the validation alone; it must not need the bench-only dependency
    code = ("import sys, runpy; sys.argv = ['plot', '--check']; sys.modules['matplotlib'] = None\n"
            "runpy.run_module('benchmarks.plot', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_readme_picture_is_committed_and_small():
    png = RESULTS / "summary.png"
    assert "](benchmarks/results/summary.png)" in (REPO / "README.md").read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000

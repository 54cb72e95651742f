"""The kernel collection is `ejaot_kernels`: it cannot shadow, or be shadowed by, the
unrelated PyPI project called `kernels`."""
import importlib.metadata as md
from pathlib import Path

import ejaot_kernels
from conftest import REPO


def test_collection_is_imported_from_the_kernels_folder():
    assert Path(ejaot_kernels.__file__).resolve().parent == (REPO / "kernels").resolve()


def test_distribution_provides_no_top_level_kernels_package():
    files = md.files("ejaot") or []
    top = {Path(str(f)).parts[0] for f in files}
    assert "kernels" not in top
    text = (REPO / "pyproject.toml").read_text()
    assert 'ejaot_kernels = "kernels"' in text


def test_every_kernel_is_discovered_without_importing_jax_implementations():
    import subprocess
    import sys
    code = ("import sys; from ejaot.spec.registry import all_kernels; ks = all_kernels(); "
            "assert 'attention' in ks; assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)

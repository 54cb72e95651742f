"""`pip install .` gives a working `ejaot`: setup.py finds every package in the tree, and the
installed command builds from the packaged default manifest anywhere."""
import json
import os
import runpy
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

from conftest import REPO


def test_setup_finds_every_package():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    cwd = os.getcwd()
    try:
        os.chdir(REPO)                                   # setup.py finds packages from the root
        listed = set(runpy.run_path(str(REPO / "setup.py"), run_name="not_main")["packages"]())
    finally:
        os.chdir(cwd)
    roots = {name: REPO / folder for name, folder in conf["package-dir"].items()}
    found = set()
    for name, folder in roots.items():
        if name.count(".") or not (folder / "__init__.py").exists():
            continue
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            if "__pycache__" not in rel.parts:
                found.add(".".join((name, *rel.parts)))
    assert found and found <= listed, f"packages setup.py does not find: {sorted(found - listed)}"
    assert "ejaot.manifests" in listed and not any(p.split(".")[0] in ("tests", "benchmarks", "examples")
                                                   for p in listed)


def test_pip_install_then_build_from_another_directory(tmp_path):
    # the tracked tree (no build outputs), installed into a fresh venv that borrows this
    # venv's dependencies through a .pth file, so nothing is downloaded
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((REPO / rel).read_bytes())
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", str(src)], check=True, cwd=tmp_path, timeout=600)

    where = tmp_path / "elsewhere"
    where.mkdir()
    found = subprocess.run([py, "-c", "import ejaot, ejaot_kernels; print(ejaot.__file__, ejaot_kernels.__file__)"],
                           capture_output=True, text=True, check=True, cwd=where).stdout.split()
    assert all(Path(f).is_relative_to(env_dir) for f in found), found
    ejaot_cmd = env_dir / "bin" / "ejaot"
    version = subprocess.run([ejaot_cmd, "--version"], capture_output=True, text=True, check=True, cwd=where)
    assert version.stdout.startswith("ejaot, version ")
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # the default manifest comes from the package; one share of it keeps the build short
    built = subprocess.run([ejaot_cmd, "build", "--target", "cpu", "--out", "store", "--shard", "1/40",
                            "--jobs", "1", "--quiet"], capture_output=True, text=True, cwd=where, env=env,
                           timeout=900)
    assert built.returncode == 0, built.stdout + built.stderr
    assert " built, 0 reused, 0 failed" in built.stdout
    listed = subprocess.run([ejaot_cmd, "ls", "store", "--json"], capture_output=True, text=True,
                            cwd=where, env=env, check=True)
    rows = [json.loads(x) for x in listed.stdout.splitlines()]
    assert rows and all(r["target"] == "cpu" for r in rows)
    code = subprocess.run([ejaot_cmd, "verify", "store"], capture_output=True, text=True, cwd=where, env=env)
    assert code.returncode == 0, code.stdout

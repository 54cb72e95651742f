"""Package discovery (the rest of the metadata is in pyproject.toml). The kernel collection
lives in kernels/ but installs as `ejaot_kernels`, a rename setuptools' own discovery cannot
do, so its packages are found here: a new kernel folder (or engine package) needs no edit."""
from setuptools import find_packages, setup


def packages() -> list[str]:
    engine = find_packages(include=["ejaot", "ejaot.*"])
    kernels = ["ejaot_kernels"] + [f"ejaot_kernels.{p}" for p in find_packages("kernels")]
    return engine + ["ejaot.manifests"] + kernels


if __name__ == "__main__":
    setup(packages=packages())

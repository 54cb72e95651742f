"""The package's layering, read from the source: the build never imports the runtime, the
shared layers import neither, there is no import cycle, and no engine file names a kernel
or a backend (a new kernel or backend adds files and edits no engine file)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "ejaot"

# Layers that both the build and the runtime use: they import neither.
SHARED = ("ejaot.spec", "ejaot.artifact", "ejaot.store", "ejaot.targets", "ejaot.backends",
          "ejaot.errors", "ejaot.toolchain")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """The ejaot modules `name` imports (a `from X import y` counts y when y is a module)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ejaot"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "ejaot":
                continue
            submodules = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES}
            found |= submodules
            if len(submodules) < len(node.names):      # a name defined in `mod` itself
                found.add(mod)
    return {m for m in found if m in MODULES}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_layout_has_the_pipeline_packages():
    for package in ("ejaot.spec", "ejaot.build", "ejaot.artifact", "ejaot.store", "ejaot.runtime",
                    "ejaot.targets", "ejaot.backends"):
        assert package in MODULES, package


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _under(m, "ejaot.build")))
def test_the_build_never_imports_the_runtime(name):
    imported = _imports(name, MODULES[name], top_level_only=False)
    assert not {m for m in imported if _under(m, "ejaot.runtime")}, imported
    # `import ejaot` would reach ejaot.load: the build serves nothing
    assert "ejaot" not in imported, f"{name} imports ejaot (the serving entry points)"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if any(_under(m, s) for s in SHARED)))
def test_shared_layers_import_neither_build_nor_runtime(name):
    imported = _imports(name, MODULES[name], top_level_only=False)
    wrong = {m for m in imported if _under(m, "ejaot.build") or _under(m, "ejaot.runtime")}
    assert not wrong, f"{name} imports {sorted(wrong)}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _under(m, "ejaot.runtime")))
def test_the_runtime_never_imports_the_build(name):
    imported = _imports(name, MODULES[name], top_level_only=False)
    assert not {m for m in imported if _under(m, "ejaot.build")}, imported


def test_no_import_cycle():
    graph = {m: _imports(m, p, top_level_only=True) - {m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _strings_and_names(path: Path) -> str:
    """The module's code without docstrings and comments: what it does, not what it says."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return ast.unparse(tree)


# The kernel-facing API (ops.py mirrors ejkernel's signatures, one function per kernel) and the
# backend and platform modules are where these names belong.
_NAMES_KERNELS_BY_DESIGN = {"ejaot.ops"}
_BACKEND_FILES = ("ejaot.backends", "ejaot.targets.cuda", "ejaot.targets.tpu", "ejaot.targets.cpu")


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m not in _NAMES_KERNELS_BY_DESIGN))
def test_no_engine_file_names_a_kernel(name):
    from ejaot.spec.registry import all_kernels
    code = _strings_and_names(MODULES[name])
    for kernel in all_kernels():
        assert not re.search(rf"\b{kernel}\b", code), f"{name} names the kernel {kernel!r}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if not any(_under(m, b) for b in _BACKEND_FILES)))
def test_no_engine_file_names_a_backend(name):
    from ejaot.backends import all_backends
    code = _strings_and_names(MODULES[name])
    for backend in all_backends():
        assert not re.search(rf"['\"]{backend}['\"]", code), f"{name} names the backend {backend!r}"

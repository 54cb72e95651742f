"""The documentation pages cannot silently go stale: every TOML block of docs/manifest.md
(and docs/api.md) is a manifest the parser accepts, and every function docs/api.md lists
under `ejaot.ops` exists there with the documented parameters (names, kinds, defaults)."""
import ast
import inspect
import re
import sys

import pytest

from conftest import REPO
from ejaot.build.manifest import load_manifest

DOCS = REPO / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def ops_section(text: str) -> str:
    """docs/api.md's `ejaot.ops` section: from its heading to the next level-2 heading."""
    start = text.index("## `ejaot.ops`")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


@pytest.mark.parametrize("page", ["manifest.md", "api.md"])
def test_every_toml_block_is_a_valid_manifest(page, tmp_path, monkeypatch):
    # the `module` example names examples/llama_demo/steps.py, importable from examples/
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    found = blocks((DOCS / page).read_text(), "toml")
    assert found, f"no ```toml block in docs/{page}"
    for i, body in enumerate(found):
        path = tmp_path / f"block{i}.toml"
        path.write_text(body)
        manifest = load_manifest(path, warn=False)     # raises ManifestError when stale
        assert manifest.blocks and not manifest.warnings, (page, i, manifest.warnings)


def documented_ops() -> dict[str, ast.FunctionDef]:
    section = ops_section((DOCS / "api.md").read_text())
    defs = {}
    for body in blocks(section, "python"):
        for node in ast.parse(body).body:
            if isinstance(node, ast.FunctionDef):
                defs[node.name] = node
    return defs


def test_api_lists_every_ops_function():
    from ejaot import ops
    public = {n for n in ops.__all__ if inspect.isfunction(getattr(ops, n))}
    assert set(documented_ops()) == public


def test_documented_ops_signatures_match_the_code():
    import jax.numpy as jnp
    from jax import lax
    from ejaot import ops
    namespace = {"jnp": jnp, "lax": lax}
    for name, node in documented_ops().items():
        assert hasattr(ops, name), f"docs/api.md lists ejaot.ops.{name}, which does not exist"
        a = node.args
        documented = ([(p.arg, "POSITIONAL_ONLY") for p in a.posonlyargs]
                      + [(p.arg, "POSITIONAL_OR_KEYWORD") for p in a.args]
                      + [(p.arg, "KEYWORD_ONLY") for p in a.kwonlyargs])
        params = inspect.signature(getattr(ops, name)).parameters
        assert documented == [(p.name, p.kind.name) for p in params.values()], name
        positional = a.posonlyargs + a.args
        defaults = dict(zip([p.arg for p in positional][len(positional) - len(a.defaults):], a.defaults))
        defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
        for param in params.values():
            if param.default is inspect.Parameter.empty:
                assert param.name not in defaults, (name, param.name)
                continue
            assert param.name in defaults, f"{name}: {param.name} has a default the docs omit"
            value = eval(compile(ast.Expression(defaults[param.name]), "<docs/api.md>", "eval"), namespace)
            assert value == param.default, (name, param.name, value, param.default)

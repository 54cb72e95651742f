"""The no-pickle executable codec reaches into jax internals: these tests pin them."""
import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from ejaot.artifact import codec


def _compiled():
    f = jax.jit(lambda x, y: (x @ y + 1.0, jnp.sum(x)))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8)), jnp.float32)
    return f.lower(x, x).compile(), x


def test_unloaded_executable_has_the_fields_the_codec_rebuilds():
    from jax._src.interpreters import pxla
    compiled, _ = _compiled()
    unloaded = compiled._executable._unloaded_executable
    assert isinstance(unloaded, pxla.UnloadedMeshExecutable)
    names = {f.name for f in dataclasses.fields(unloaded)}
    assert {"xla_executable", "device_list", "input_avals", "output_avals", "kept_var_idx",
            "input_shardings", "output_shardings", "xla_in_layouts", "name"} <= names


def test_roundtrip_without_pickle_gives_the_same_results():
    compiled, x = _compiled()
    raw, meta = codec.encode(compiled)
    assert isinstance(raw, bytes) and b"\x80\x04\x95" not in raw[:3]   # not a pickle stream
    import msgpack
    meta = msgpack.unpackb(msgpack.packb(meta))          # the metadata is plain data
    exe = codec.decode(raw, meta, jax.devices()[0])
    a, b = exe(x, x)
    ea, eb = compiled(x, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(ea))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(eb))


def test_unknown_codec_version_is_refused():
    compiled, _ = _compiled()
    raw, meta = codec.encode(compiled)
    with pytest.raises(codec.Unsupported):
        codec.decode(raw, {**meta, "codec": 99}, jax.devices()[0])


def test_load_path_never_imports_pickle_machinery(store_copy):
    """The runtime modules contain no pickle/eval/exec and no store-named imports."""
    import ast
    from pathlib import Path
    import ejaot
    root = Path(ejaot.__file__).parent
    for path in [p for d in ("runtime", "store", "artifact", "spec") for p in (root / d).glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve")
                               or "serialize_executable" in n for n in names), (path, names)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "__import__"), path

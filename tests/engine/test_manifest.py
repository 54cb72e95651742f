"""Manifest validation: every error names the file, the key and what was expected."""
import pytest

from ejaot.errors import ManifestError
from ejaot.build.manifest import load_manifest
from ejaot.build.plan import plan
from ejaot.targets import get_target

GOOD = """
format = 1
[[kernel]]
name = "attention"
dtypes = ["float32"]
{extra}
[kernel.dims]
batch = [1, 2]
seq = 16
q_heads = 4
kv_heads = 2
head_dim = 16
{dims_extra}
[kernel.static]
causal = true
{static_extra}
"""

BASE = GOOD.format(extra="", dims_extra="", static_extra="")


def write(tmp_path, extra="", dims_extra="", static_extra="", text=None):
    p = tmp_path / "m.toml"
    p.write_text(text if text is not None else GOOD.format(extra=extra, dims_extra=dims_extra, static_extra=static_extra))
    return p


def test_good_manifest_plans_the_product(tmp_path):
    m = load_manifest(write(tmp_path))
    entries, skipped = plan(m, get_target("cpu"))
    assert len(entries) == 2 and not skipped
    assert {e.dims["batch"] for e in entries} == {1, 2}
    assert all(e.dims["kv_seq"] == 16 and e.dims["v_head_dim"] == 16 for e in entries)
    assert len({e.key for e in entries}) == 2


def test_explicit_buckets_and_static_variants(tmp_path):
    text = GOOD.format(extra='buckets = [{ batch = 3, seq = 24 }]\nstatic_variants = [{}, { sliding_window = [4, 0] }]',
                       dims_extra="", static_extra='').replace("batch = [1, 2]", "batch = 1")
    m = load_manifest(write(tmp_path, text=text))
    entries, _ = plan(m, get_target("cpu"))
    assert sorted((e.dims["batch"], e.dims["seq"], str(e.static["sliding_window"])) for e in entries) == [
        (3, 24, "None"), (3, 24, "[4, 0]")]


@pytest.mark.parametrize("kwargs, key, message", [
    (dict(extra='typo = 1'), "kernel[0].typo", "unknown key"),
    (dict(text=BASE.replace('"attention"', '"atention"')), "kernel[0].name", "unknown kernel 'atention'"),
    (dict(dims_extra="heads = 3"), "kernel[0].dims.heads", "unknown dimension"),
    (dict(dims_extra="v_head_dim = -1"), "kernel[0].dims.v_head_dim", "positive integers"),
    (dict(text=BASE.replace('"float32"', '"int8"')), "kernel[0].dtypes[0]", "dtype 'int8' not supported"),
    (dict(static_extra="casual = true"), "kernel[0].static.casual", "unknown static argument"),
    (dict(static_extra="sliding_window = 'x'"), "kernel[0].static", "sliding_window must be"),
    (dict(extra='targets = ["tpu-v9"]'), "kernel[0].targets[0]", "unknown target 'tpu-v9'"),
    (dict(extra='inputs = ["query"]'), "kernel[0].inputs[0]", "not an optional input"),
    (dict(text=BASE.replace("kv_heads = 2", "kv_heads = 3")), "kernel[0]", "not a multiple of kv_heads"),
    (dict(text=BASE.replace("head_dim = 16", "")), "kernel[0].dims", "missing dimension"),
    (dict(text="format = 2\n"), "format", "not supported"),
    (dict(text="[[kernel]\nname="), None, "not valid TOML"),
])
def test_errors_name_file_and_key(tmp_path, kwargs, key, message):
    path = write(tmp_path, **kwargs)
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert str(path) in str(e.value)
    assert e.value.key == key
    assert message in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "nope.toml")


def test_default_manifest_is_valid_for_every_target():
    from ejaot.targets import TARGETS
    from conftest import REPO
    m = load_manifest(REPO / "manifests" / "default.toml")
    for t in TARGETS.values():
        entries, _ = plan(m, t)
        assert entries, t.name

"""Multi-chip manifests (no devices needed): `mesh` and `shard` are checked like every other
key (a ManifestError naming file and key), planned into entries whose keys cover the mesh,
and leave single-device entries' keys exactly as they were."""
import pytest

from ejaot.spec import mesh as mesh_mod
from ejaot.artifact.record import problem
from ejaot.errors import ManifestError
from ejaot.build.manifest import load_manifest
from ejaot.build.plan import EntrySpec, plan
from ejaot.spec.registry import get_kernel
from ejaot.targets import get_target

BASE = """format = 1
[[kernel]]
name = "{kernel}"
dtypes = ["float32"]
{extra}
[kernel.dims]
{dims}
"""
ATTN_DIMS = "batch = [1, 2]\nseq = 16\nq_heads = 8\nkv_heads = 4\nhead_dim = 16"


def _manifest(tmp_path, extra, dims=ATTN_DIMS, kernel="attention"):
    path = tmp_path / "m.toml"
    path.write_text(BASE.format(kernel=kernel, extra=extra, dims=dims))
    return path


@pytest.mark.parametrize("extra, key, words", [
    ('mesh = { tp = 4 }', "kernel[0].mesh", "without `shard`"),
    ('shard = { heads = "tp" }', "kernel[0].shard", "without `mesh`"),
    ('mesh = 4\nshard = { heads = "tp" }', "kernel[0].mesh", "table of axis = size"),
    ('mesh = {}\nshard = { heads = "tp" }', "kernel[0].mesh", "empty table"),
    ('mesh = { tp = 0 }\nshard = { heads = "tp" }', "kernel[0].mesh.tp", "positive integer"),
    ('mesh = { tp = [2, "x"] }\nshard = { heads = "tp" }', "kernel[0].mesh.tp[1]", "positive integer"),
    ('mesh = { tp = [] }\nshard = { heads = "tp" }', "kernel[0].mesh.tp", "empty list"),
    ('mesh = { "t p" = 2 }\nshard = { heads = "t p" }', "kernel[0].mesh.t p", "identifier"),
    ('mesh = { tp = 2 }\nshard = { rows = "tp" }', "kernel[0].shard.rows", "no dimension group 'rows'"),
    ('mesh = { tp = 2 }\nshard = { heads = "dp" }', "kernel[0].shard.heads", "not an axis of the mesh"),
    ('mesh = { tp = 2 }\nshard = { heads = 2 }', "kernel[0].shard.heads", "axis name"),
    ('mesh = { tp = 2 }\nshard = { heads = "tp", batch = "tp" }', "kernel[0].shard.batch", "already splits"),
    ('mesh = { tp = 2, dp = 2 }\nshard = { heads = "tp" }', "kernel[0].mesh.dp", "splits nothing"),
    ('mesh = { tp = 8 }\nshard = { heads = "tp" }', "kernel[0].dims", "kv_heads = 4 does not divide"),
    ('mesh = { dp = 4 }\nshard = { batch = "dp" }', "kernel[0].dims", "batch = 1 does not divide"),
])
def test_bad_mesh_names_file_and_key(tmp_path, extra, key, words):
    path = _manifest(tmp_path, extra)
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert e.value.key == key, str(e.value)
    assert str(path) in str(e.value) and words in str(e.value), str(e.value)


def test_kernel_without_a_sharding_declaration(tmp_path):
    path = _manifest(tmp_path, 'mesh = { tp = 2 }\nshard = { heads = "tp" }',
                     dims="batch = 1\nheads = 4\nseq = 16\nhead_dim = 16\nlatent_dim = 8",
                     kernel="flash_mla_attention")
    with pytest.raises(ManifestError, match="declares no dimensions that may be split") as e:
        load_manifest(path)
    assert e.value.key == "kernel[0].mesh"


def test_per_device_dims_are_checked(tmp_path):
    # 8/4 heads over 4 devices is 2/1 heads each: fine. 6 query heads over 2 kv heads, split
    # over 2: 3 query heads and 1 kv head per device, still GQA-consistent.
    load_manifest(_manifest(tmp_path, 'mesh = { tp = 4 }\nshard = { heads = "tp" }'))
    load_manifest(_manifest(tmp_path, 'mesh = { tp = 2 }\nshard = { heads = "tp" }',
                            dims="batch = 1\nseq = 16\nq_heads = 6\nkv_heads = 2\nhead_dim = 16"))


def test_plan_keys_cover_the_mesh_and_leave_single_device_keys_alone(tmp_path):
    single = load_manifest(_manifest(tmp_path, ""))
    meshed = load_manifest(_manifest(tmp_path, 'mesh = { tp = [2, 4], dp = 1 }\nshard = { heads = "tp" }'))
    cpu = get_target("cpu")
    one, _ = plan(single, cpu)
    many, _ = plan(meshed, cpu)
    assert len(one) == 2 and len(many) == 4
    assert all(e.layout is None and "mesh" not in e.identity() for e in one)
    # a single-device entry's key is the hash of exactly the fields it always had
    e = one[0]
    again = EntrySpec(**{**e.__dict__, "layout": None})
    assert again.key == e.key
    assert {e.key for e in one}.isdisjoint({e.key for e in many})
    layouts = {(e.dims["batch"], e.layout.devices) for e in many}
    assert layouts == {(1, 2), (1, 4), (2, 2), (2, 4)}
    ident = many[0].identity()
    assert ident["shard"] == {"heads": "tp"} and ident["split"] == {"q_heads": "tp", "kv_heads": "tp"}
    assert [a for a, _ in ident["mesh"]] == ["tp", "dp"]
    assert "mesh tp=" in many[0].describe()


def test_config_is_chosen_for_the_per_device_dims():
    spec = get_kernel("flash_attention")
    layout = mesh_mod.make_layout((("tp", 4),), (("heads", "tp"),), spec)
    assert layout.local_dims({"batch": 2, "q_heads": 64, "kv_heads": 8, "seq": 128}) == \
        {"batch": 2, "q_heads": 16, "kv_heads": 2, "seq": 128}
    q = next(a for a in spec.inputs if a.name == "query")
    assert layout.spec_of(q) == (None, None, "tp", None)


def test_record_schema_of_mesh_fields(built_store):
    from ejaot.store.filestore import FileStore
    key, rec = next(iter(FileStore(built_store).read_index()["entries"].items()))
    rec = dict(rec, mesh=[["tp", 2]], shard={"heads": "tp"}, split={"q_heads": "tp", "kv_heads": "tp"})
    assert problem(key, rec) is None
    assert "not all of mesh" in problem(key, {k: v for k, v in rec.items() if k != "split"})
    assert "axis its mesh does not have" in problem(key, dict(rec, shard={"heads": "dp"}))
    assert "mesh" in problem(key, dict(rec, mesh=[["tp", 0]]))
    assert mesh_mod.summary(rec) == {"mesh": {"tp": 2}, "devices": 2, "shard": {"heads": "tp"}}
    assert mesh_mod.summary({}) == {"mesh": None, "devices": 1, "shard": None}

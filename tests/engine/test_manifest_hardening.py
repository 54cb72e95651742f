"""Malformed manifests: every one is a ManifestError naming the file and the key (never a
TypeError, RecursionError, UnicodeDecodeError, OverflowError... from deeper down); a
manifest planning too many entries is refused before it is expanded; entries no call can
reach are warned about."""
import os
import random
import sys
import time
import warnings

import pytest
from click.testing import CliRunner

from ejaot.build.builder import build
from ejaot.cli import main
from ejaot.errors import ManifestError
from ejaot.build.manifest import (DEFAULT_MAX_ENTRIES, MAX_DIM, MAX_FILE_BYTES, MAX_NESTING,
                            ManifestWarning, load_manifest)
from ejaot.build.plan import plan
from ejaot.targets import get_target
from conftest import REPO

HEAD = """format = 1
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
{dims}
[kernel.static]
causal = true
{static}
"""


def text(extra="", dims="", static=""):
    return HEAD.format(extra=extra, dims=dims, static=static)


def write(tmp_path, content, name="m.toml"):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return p


def refused(path, **kwargs) -> ManifestError:
    with pytest.raises(ManifestError) as e:
        load_manifest(path, **kwargs)
    assert str(path) in str(e.value)
    return e.value


def nest(n, inner="1"):
    return "[" * n + inner + "]" * n


BIG = 2 ** 70

MALFORMED = [
    # integers that overflow: 64-bit TOML, int32 dims, 64-bit array sizes
    ("dim-2**70", text(dims=f"num_sinks = {BIG}"), "kernel[0].dims.num_sinks", "does not fit in 64 bits"),
    ("dim-list-2**70", text().replace("batch = [1, 2]", f"batch = [1, {BIG}]"), "kernel[0].dims.batch[1]", "64 bits"),
    ("dim-over-int32", text().replace("seq = 16", f"seq = {2 ** 31}"), "kernel[0].dims.seq", "too large"),
    ("dim-int64-max", text().replace("seq = 16", f"seq = {2 ** 63 - 1}"), "kernel[0].dims.seq", "too large"),
    ("bucket-over-int32", text(extra=f"buckets = [{{ seq = {2 ** 40} }}]"), "kernel[0].buckets[0].seq", "too large"),
    ("bucket-2**70", text(extra=f"buckets = [{{ seq = {BIG} }}]"), "kernel[0].buckets[0].seq", "64 bits"),
    ("hex-160-bits", text().replace("seq = 16", "seq = 0x" + "f" * 40), "kernel[0].dims.seq", "integer of 160 bits"),
    ("hex-5000-digits", text().replace("seq = 16", "seq = 0x" + "f" * 5000), "kernel[0].dims.seq", "characters"),
    ("decimal-5000-digits", text().replace("seq = 16", "seq = " + "9" * 5000), "kernel[0].dims.seq", "characters"),
    ("static-window-2**70", text(static=f"sliding_window = [{BIG}, 0]"), "kernel[0].static.sliding_window[0]", "64 bits"),
    ("static-cap-1e400", text(static="logits_soft_cap = 1e400"), "kernel[0].static", "logits_soft_cap must be"),
    ("format-2**70", f"format = {BIG}\n", "format", "64 bits"),
    ("array-bytes-overflow", text().replace("batch = [1, 2]", f"batch = {MAX_DIM}").replace("seq = 16", f"seq = {MAX_DIM}")
     .replace("q_heads = 4", f"q_heads = {MAX_DIM}").replace("kv_heads = 2", f"kv_heads = {MAX_DIM}"),
     "kernel[0].dims", "64-bit size"),
    # a nested list (or another type) where a name belongs
    ("name-nested", text().replace('name = "attention"', 'name = [["attention"]]'), "kernel[0].name", "expected a kernel name"),
    ("name-table", text().replace('name = "attention"', 'name = { a = 1 }'), "kernel[0].name", "expected a kernel name"),
    ("name-missing", text().replace('name = "attention"', ''), "kernel[0].name", "missing"),
    ("dtypes-nested", text().replace('dtypes = ["float32"]', 'dtypes = [["float32"]]'), "kernel[0].dtypes[0]", "expected a name"),
    ("dtypes-table", text().replace('dtypes = ["float32"]', 'dtypes = { f = "float32" }'), "kernel[0].dtypes", "expected a name"),
    ("dtypes-int", text().replace('dtypes = ["float32"]', 'dtypes = [32]'), "kernel[0].dtypes[0]", "expected a name"),
    ("inputs-nested", text(extra='inputs = [["bias"]]'), "kernel[0].inputs[0]", "expected a name"),
    ("inputs-deep", text(extra='inputs = ' + nest(12, '"bias"')), "kernel[0].inputs[0]", "expected a name"),
    ("targets-nested", text(extra='targets = [["cpu"]]'), "kernel[0].targets[0]", "expected a name"),
    ("targets-int", text(extra='targets = 5'), "kernel[0].targets", "expected a name"),
    ("module-nested", text(extra='module = [["ejaot_kernels.attention"]]'), "kernel[0].module", "dotted module name"),
    ("module-empty", text(extra='module = ""'), "kernel[0].module", "dotted module name"),
    ("dims-list", 'format = 1\n[[kernel]]\nname = "attention"\ndims = [1]\n', "kernel[0].dims", "expected a table"),
    ("dim-nested-list", text().replace("batch = [1, 2]", "batch = [[1, 2]]"), "kernel[0].dims.batch[0]", "positive integers"),
    ("dim-string", text().replace("seq = 16", 'seq = "16"'), "kernel[0].dims.seq", "positive integers"),
    ("dim-float", text().replace("seq = 16", "seq = 16.0"), "kernel[0].dims.seq", "positive integers"),
    ("dim-nan", text().replace("seq = 16", "seq = nan"), "kernel[0].dims.seq", "positive integers"),
    ("dim-bool", text().replace("seq = 16", "seq = true"), "kernel[0].dims.seq", "positive integers"),
    ("dim-date", text().replace("seq = 16", "seq = 1979-05-27"), "kernel[0].dims.seq", "positive integers"),
    ("dim-zero", text().replace("seq = 16", "seq = 0"), "kernel[0].dims.seq", "positive integers"),
    ("buckets-int", text(extra="buckets = 5"), "kernel[0].buckets", "expected a list of tables"),
    ("buckets-nested", text(extra="buckets = [[{ seq = 8 }]]"), "kernel[0].buckets[0]", "expected a table"),
    ("bucket-list-value", text(extra="buckets = [{ seq = [8] }]"), "kernel[0].buckets[0].seq", "positive integer"),
    ("variants-nested", text(extra="static_variants = [[{}]]"), "kernel[0].static_variants[0]", "expected a table"),
    ("variants-table", text(extra="static_variants = { causal = true }"), "kernel[0].static_variants", "expected a list"),
    ("static-list", 'format = 1\n[[kernel]]\nname = "attention"\nstatic = [1]\n', "kernel[0].static", "expected a table"),
    ("static-window-nested", text(static="sliding_window = [[4, 0]]"), "kernel[0].static", "sliding_window must be"),
    ("kernel-nested", "format = 1\nkernel = [[1]]\n", "kernel[0]", "expected a table"),
    ("description-list", 'format = 1\ndescription = ["x"]\n', "description", "expected a string"),
    ("format-bool", "format = true\n", "format", "not supported"),
    # empty lists where a value is needed
    ("dim-empty", text().replace("batch = [1, 2]", "batch = []"), "kernel[0].dims.batch", "empty list"),
    ("dtypes-empty", text().replace('dtypes = ["float32"]', "dtypes = []"), "kernel[0].dtypes", "empty list"),
    ("targets-empty", text(extra="targets = []"), "kernel[0].targets", "empty list"),
    ("variants-empty", text(extra="static_variants = []"), "kernel[0].static_variants", "empty list"),
    ("buckets-empty", text(extra="buckets = []"), "kernel[0].buckets", "empty list"),
    ("kernels-empty", "format = 1\nkernel = []\n", "kernel", "one or more"),
    # deep nesting: checked exactly after parsing, or by the pre-parse scan when the
    # parser itself would recurse too deep or run quadratic
    ("dim-nested-15", text().replace("batch = [1, 2]", "batch = " + nest(15)), "kernel[0].dims.batch" + "[0]" * 13 + ":",
     f"more than {MAX_NESTING} levels"),
    ("dim-nested-1000", text().replace("batch = [1, 2]", "batch = " + nest(1000)), "kernel[0].dims.batch", f"nested more than {MAX_NESTING} levels deep (line"),
    ("dim-nested-100000", text().replace("batch = [1, 2]", "batch = " + nest(100_000)), "kernel[0].dims.batch", f"nested more than {MAX_NESTING} levels deep (line"),
    ("dotted-dims-nested", text().replace("[kernel.dims]", "dims.batch = " + nest(500) + "\n[kernel.dims]")
     .replace("batch = [1, 2]\n", ""), "kernel[0].dims.batch", f"nested more than {MAX_NESTING} levels deep (line"),
    ("static-inline-tables", text(static="causal = " + "{ a = " * 300 + "1" + " }" * 300), "kernel[0].static.causal",
     "nested more than"),
    ("static-dotted-40", text(static="sliding_window" + ".a" * 40 + " = 1"), "kernel[0].static.sliding_window" + ".a" * 13 + ":",
     "levels deep"),
    ("static-dotted-100000", text(static="sliding_window" + ".a" * 100_000 + " = 1"), "kernel[0].static.sliding_window.a.a",
     "dotted key"),
    ("header-dotted-100000", text() + "[kernel" + ".a" * 100_000 + "]\n", "kernel.a.a.a", "dotted key"),
    ("variant-nested-300", text(extra="static_variants = [{ sliding_window = " + nest(300, "4, 0") + " }]"),
     "kernel[0].static_variants", "nested more than"),
    ("second-table-nested", text() + "\n[[kernel]]\nname = \"attention\"\n[kernel.dims]\nseq = " + nest(2000),
     "kernel[1].dims.seq", "nested more than"),
]


@pytest.mark.parametrize("content, key, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_manifest_names_file_and_key(tmp_path, content, key, message):
    path = write(tmp_path, content)
    t0 = time.perf_counter()
    err = refused(path)
    assert time.perf_counter() - t0 < 5, "refusing a hostile manifest must stay cheap"
    if key.endswith(":"):
        assert err.key == key[:-1], (err.key, str(err))
    assert err.key is not None and err.key.startswith(key.rstrip(":")), (err.key, str(err))
    assert message in str(err), str(err)
    assert len(str(err)) < 2000, "a message shows values abbreviated"


def test_inputs_may_be_empty(tmp_path):
    m = load_manifest(write(tmp_path, text(extra="inputs = []")))
    assert m.blocks[0].present == ()


@pytest.mark.parametrize("content, key, message", [
    (b"format = 1\ndescription = \"caf\xe9\"\n", "description", "byte 0xe9 at offset 29 (line 2)"),
    (b"format = 1\n[[kernel]]\nname = \"attention\"\n[kernel.dims]\nbatch = [1, \xff]\n", "kernel[0].dims.batch",
     "byte 0xff"),
    (b"format = 1\n[[kernel]]\nname = \"attention\"\n\xc3(= 1\n", "kernel[0]", "byte 0xc3"),
    ("format = 1\n".encode("utf-16"), None, "byte 0xff at offset 0 (line 1)"),
    (b"\x00\x01\x02\xfe\xff" * 100, None, "not UTF-8"),
], ids=["latin1-description", "byte-in-dims", "byte-in-key", "utf16", "binary"])
def test_not_utf8(tmp_path, content, key, message):
    err = refused(write(tmp_path, content))
    assert err.key == key and message in str(err) and "not UTF-8" in str(err)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    assert load_manifest(write(tmp_path, b"\xef\xbb\xbf" + text().encode())).blocks


def test_not_a_regular_file(tmp_path):
    assert "not a regular file (a directory)" in str(refused(tmp_path))
    assert "not a regular file (a device)" in str(refused(os.devnull))
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    assert "not a regular file (a FIFO)" in str(refused(fifo))      # and no hang waiting for a writer
    assert time.perf_counter() - t0 < 5
    link = tmp_path / "link.toml"
    link.symlink_to(write(tmp_path, text()))
    assert load_manifest(link).blocks                                # a link to a file is a file


def test_huge_file_is_refused_without_reading_it(tmp_path):
    p = tmp_path / "huge.toml"
    with open(p, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)                               # sparse: nothing written
    assert "file too large" in str(refused(p))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, text())
    p.chmod(0)
    assert "cannot be opened" in str(refused(p))


def test_fuzzed_manifests_never_escape_as_python_errors(tmp_path):
    """Every value of a good manifest replaced by hostile ones, many at a time."""
    rng = random.Random(20240611)
    hostile = ["[]", "[[]]", "{}", "[{}]", "[[1]]", '[["float32"]]', '""', '"x"', "-1", "0", "true", "1.5",
               "nan", "inf", "-inf", str(BIG), str(2 ** 31), str(2 ** 63 - 1), str(-2 ** 63), "1979-05-27",
               "07:32:00", nest(40), "{ a = { b = [1] } }", '[1, "a"]', "[" + ", ".join(["1"] * 50) + "]",
               '["attention", "attention"]', '["cpu", ["gpu-sm90"]]', '{ batch = 1 }', '[{ batch = 0 }]',
               '[{ sliding_window = [4, 0] }, {}]', '"ejaot_kernels"', '"os.path"']
    base = text(extra='inputs = ["bias"]\nbuckets = [{ batch = 3 }]\nstatic_variants = [{}, { sliding_window = 8 }]',
                static="logits_soft_cap = 30.0").splitlines()
    assignments = [i for i, line in enumerate(base) if " = " in line]
    outcomes = {"ok": 0, "refused": 0}
    for n in range(300):
        lines = list(base)
        for i in rng.sample(assignments, rng.randint(1, 3)):
            k = lines[i].split(" = ")[0]
            lines[i] = f"{k} = {rng.choice(hostile)}"
        path = write(tmp_path, "\n".join(lines) + "\n", f"f{n}.toml")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ManifestWarning)
                m = load_manifest(path)
            for t in ("cpu", "gpu-sm90", "tpu-v5e"):
                plan(m, get_target(t))
            outcomes["ok"] += 1
        except ManifestError as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["ok"] > 0, outcomes


# -- the entry limit ---------------------------------------------------------------------

def test_default_limit_refuses_before_expanding(tmp_path):
    # 10^12 buckets: expanding them would never finish; the count is a product of lengths
    values = "[" + ", ".join(str(i) for i in range(1, 101)) + "]"
    content = text().replace("batch = [1, 2]", f"batch = {values}").replace("seq = 16", f"seq = {values}")
    content += "".join(f"\n[[kernel]]\nname = \"flash_attention\"\n[kernel.dims]\nbatch = {values}\nseq = {values}\n"
                       f"q_heads = {values}\nkv_heads = 1\nhead_dim = {values}\n" for _ in range(3))
    path = write(tmp_path, content)
    t0 = time.perf_counter()
    err = refused(path)
    assert time.perf_counter() - t0 < 5
    assert err.key == "kernel[1]"                      # the largest table first
    msg = str(err)
    assert f"more than the limit of {DEFAULT_MAX_ENTRIES:,}" in msg and "--max-entries" in msg
    assert "kernel[1] (flash_attention) 100,000,000 = 100,000,000 buckets × 1 dtypes × 1 static sets" in msg
    assert "kernel[0]" not in msg.split("largest:")[1].split(";")[2] and "and 1 more tables" in msg


def test_limit_counts_dtypes_statics_and_explicit_buckets(tmp_path):
    content = text(extra='buckets = [{ batch = 3, seq = 8 }, { batch = 3, seq = 24 }]\nstatic_variants = [{}, { sliding_window = 4 }, '
                         '{ sliding_window = 8 }]').replace('dtypes = ["float32"]', 'dtypes = ["float32", "bfloat16"]')
    path = write(tmp_path, content)
    # (2 batch × 1 seq product + 2 explicit buckets) × 2 dtypes × 3 static sets = 24 entries
    m = load_manifest(path, max_entries=24)
    assert m.blocks[0].count == 24 and len(plan(m, get_target("cpu"), max_entries=24)[0]) == 24
    err = refused(path, max_entries=23)
    assert err.key == "kernel[0]" and "plans 24 entries for target" in str(err)
    assert "4 buckets × 2 dtypes × 3 static sets" in str(err)
    with pytest.raises(ManifestError, match=r"plans 24 entries for target cpu, more than the limit of 10"):
        plan(m, get_target("cpu"), max_entries=10)
    assert len(plan(m, get_target("cpu"), max_entries=None)[0]) == 24


def test_limit_is_per_target(tmp_path):
    gpu_only = text(extra='targets = ["gpu-sm90"]') + "\n[[kernel]]\nname = \"attention\"\n[kernel.dims]\n" \
        "batch = 1\nseq = 8\nq_heads = 2\nhead_dim = 8\n"
    path = write(tmp_path, gpu_only)
    err = refused(path, max_entries=1)                 # for every target: gpu-sm90 plans 3
    assert "for target gpu-sm90" in str(err) and err.key == "kernel[0]"
    m = load_manifest(path, max_entries=1, target="cpu")
    assert len(plan(m, get_target("cpu"), max_entries=1)[0]) == 1
    with pytest.raises(ManifestError, match="plans 3 entries for target gpu-sm90"):
        plan(m, get_target("gpu-sm90"), max_entries=2)


def test_build_and_cli_take_the_limit(tmp_path):
    path = write(tmp_path, text())
    with pytest.raises(ManifestError, match="plans 2 entries for target cpu, more than the limit of 1"):
        build(path, "cpu", tmp_path / "store", jobs=1, max_entries=1)
    assert not (tmp_path / "store").exists()
    r = CliRunner().invoke(main, ["build", "--manifest", str(path), "--out", str(tmp_path / "s"),
                                  "--max-entries", "1", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 2 and "more than the limit of 1 " in r.output and "kernel[0]" in r.output
    r = CliRunner().invoke(main, ["build", "--manifest", str(path), "--out", str(tmp_path / "s"),
                                  "--max-entries", "0"], catch_exceptions=False)
    assert r.exit_code == 2 and "--max-entries" in r.output
    r = CliRunner().invoke(main, ["build", "--help"])
    assert "--max-entries" in r.output and "10000" in r.output


# -- tables whose entries no call reaches --------------------------------------------------

PAGED_MLA = """format = 1
[[kernel]]
name = "paged_mla_attention"
{extra}
[kernel.dims]
num_seqs = [1, 8]
q_heads = 16
head_dim = 32
kv_lora_rank = 64
total_pages = 16
page_size = 16
max_blocks = 4
{dims}
"""

MLA = """format = 1
[[kernel]]
name = "mla_attention"
{extra}
[kernel.dims]
batch = 1
seq = 16
q_heads = 4
head_dim = 16
kv_lora_rank = 32
{dims}
"""


@pytest.mark.parametrize("content, key, message", [
    (text(dims="num_sinks = 4"), "kernel[0].dims.num_sinks",
     "no call can ever reach this table's entries: it comes only from optional input(s) ['softmax_aux'], which "
     "`inputs` does not list, so a call has num_sinks = 1 (add ['softmax_aux'] to inputs, or remove the key)"),
    (text(dims="num_sinks = [1, 4, 8]"), "kernel[0].dims.num_sinks", "4 of 6 buckets can never be reached"),
    (text(extra='inputs = ["bias"]\nbuckets = [{ batch = 3, num_sinks = 2 }]'), "kernel[0].buckets[0].num_sinks",
     "1 of 3 buckets can never be reached"),
    (PAGED_MLA.format(extra="", dims="rope_dim = 32"), "kernel[0].dims.rope_dim",
     "only from optional input(s) ['b_q', 'rope_cache']"),
    (MLA.format(extra="", dims="rope_dim = 16"), "kernel[0].dims.rope_dim", "a call has rope_dim = 64"),
    (MLA.format(extra='inputs = ["b_q", "b_k"]', dims="num_seqs_plus_one = 3"), "kernel[0].dims.num_seqs_plus_one",
     "only from optional input(s) ['cu_seqlens']"),
], ids=["attention-sinks", "attention-some-sinks", "attention-bucket-sinks", "paged-mla-rope", "mla-rope",
        "mla-cu-seqlens"])
def test_unreachable_entries_are_warned(tmp_path, content, key, message):
    path = write(tmp_path, content)
    with pytest.warns(ManifestWarning) as caught:
        m = load_manifest(path)
    assert len(caught) == 1 and len(m.warnings) == 1
    w = str(caught[0].message)
    assert w == m.warnings[0] and w.startswith(f"{path}: {key}: ") and message in w, w
    assert plan(m, get_target("cpu"))[0]                # a warning: the entries still build


@pytest.mark.parametrize("content", [
    text(dims="num_sinks = 1"),                                  # the value every call without sinks has
    text(extra='inputs = ["softmax_aux"]', dims="num_sinks = [1, 4]"),
    PAGED_MLA.format(extra='inputs = ["b_q", "rope_cache"]', dims="rope_dim = 32"),
    PAGED_MLA.format(extra="", dims="rope_dim = 64"),
    MLA.format(extra="", dims=""),
], ids=["default-value", "input-listed", "paged-mla-listed", "paged-mla-default", "mla-no-rope-dim"])
def test_reachable_tables_are_not_warned(tmp_path, content):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ManifestWarning)
        assert not load_manifest(write(tmp_path, content)).warnings


def test_shipped_manifests_have_no_warnings(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    paths = sorted((REPO / "manifests").glob("*.toml")) + sorted((REPO / "examples").glob("*/*.toml"))
    assert len(paths) >= 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", ManifestWarning)
        for p in paths:
            m = load_manifest(p)
            assert not m.warnings, p
            assert sum(b.count for b in m.blocks) <= DEFAULT_MAX_ENTRIES


def test_build_reports_the_warning_as_a_note(tmp_path):
    path = write(tmp_path, text(dims="num_sinks = 3").replace("batch = [1, 2]", "batch = 1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ManifestWarning)   # build collects it, does not warn
        report = build(path, "cpu", tmp_path / "store", jobs=1)
    assert report.ok and len(report.built) == 1
    assert report.notes[0].startswith(f"warning: {path}: kernel[0].dims.num_sinks: no call can ever reach")
    assert "note: warning:" in report.summary() and "num_sinks" in report.summary()


def test_the_pre_parse_scan_accepts_valid_tricky_toml(tmp_path):
    """Brackets and dots inside strings and comments are text, not nesting or keys."""
    content = ('format = 1\ndescription = """\n[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n' + "a." * 100 + '\n"""\n'
               "# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ " + "x." * 100 + "\n"
               "[[kernel]]\n'name' = 'attention'\ndtypes = [ # a comment [[[[[[[[[[[[[[[[[[[[[[\n  \"float32\",\n]\n"
               "static_variants = [{}, { sliding_window = [4, 0] }]\n"
               "dims.batch = [1, 2]\ndims.seq = 16\n\"dims\".q_heads = 4\ndims . 'head_dim' = 8\n"
               "[kernel.static]\ncausal = true\nlogits_soft_cap = 1.5e1\n"
               "[[kernel]]\nname = '''flash_attention'''\n[kernel.dims]\nbatch = 1\nseq = 8\nq_heads = 2\nhead_dim = 32\n")
    m = load_manifest(write(tmp_path, content))
    assert [b.count for b in m.blocks] == [4, 1]

"""Manifests: which kernels to build, over which buckets, dtypes and static arguments.

    format = 1

    [[kernel]]
    name = "attention"
    dtypes = ["bfloat16", "float32"]
    targets = ["cpu", "gpu-sm90"]          # optional: default every target
    inputs = ["bias"]                      # optional inputs passed to the kernel
    [kernel.dims]                          # a value or a list: the product is built
    batch = [1, 4, 8]
    seq = [128, 512]
    q_heads = 32
    [kernel.static]                        # one value per static argument
    causal = true
    # optional: each table is merged over [kernel.static] and builds its own set
    # static_variants = [{ sliding_window = [4096, 0] }]
    # optional: explicit buckets, merged over the single-valued dims
    # buckets = [{ batch = 2, seq = 384 }]
    # optional: multi-chip entries (ejaot/spec/mesh.py): the mesh's axes (a list of sizes builds
    # each), and which of the kernel's dimension groups each axis splits
    # mesh = { tp = [4, 8] }
    # shard = { heads = "tp" }

    [[kernel]]                             # a kernel from outside the collection: a model's
    name = "llama_demo.decode_step"        # own step, declared as a KernelSpec in an
    module = "llama_demo.steps"            # importable module (installed or on PYTHONPATH)

Every problem is reported as a ManifestError naming the file and the key, never as a
Python error from deeper down. The rules, beyond the shape of each key:

- the file is a regular file of at most MAX_FILE_BYTES bytes of UTF-8 TOML; no array or
  inline table nests more than MAX_NESTING deep and no dotted key has more than
  MAX_KEY_PARTS parts (checked before TOML parsing, which is recursive and quadratic in
  those); every integer fits in 64 bits;
- a dimension is an integer in [1, MAX_DIM] (int32: valid lengths, context lengths and block
  tables are int32 arrays), and no array of a bucket holds more bytes than a 64-bit size
  can count;
- a list of names (dtypes, targets, inputs) holds strings; dtypes, targets, a dimension's
  values, buckets and static_variants, when given, are not empty lists (inputs = [] is
  the default: no optional input);
- a manifest that would plan more than `max_entries` entries (default
  DEFAULT_MAX_ENTRIES) for a target is refused before any table is expanded, naming the
  tables that contribute most (`ejaot build --max-entries N` raises the limit);
- a table that gives a dimension only an optional input has, without listing that input
  in `inputs`, has entries no call can reach (a call without the input gets the
  dimension's default): that is a ManifestWarning (warnings.warn, and Manifest.warnings,
  which `ejaot build` prints as notes), not an error: the entries still build.
"""
from __future__ import annotations

import itertools
import math
import os
import re
import reprlib
import stat
import tomllib
import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..spec import mesh as _mesh
from ..errors import ManifestError
from ..spec import KernelSpec
from ..spec.registry import all_kernels, register_module
from ..targets import TARGETS, Target, get_target, known_target_names

FORMAT = 1
DEFAULT_MAX_ENTRIES = 10_000
MAX_FILE_BYTES = 8 << 20          # a hand-written or generated manifest is far smaller
MAX_NESTING = 16                  # containers within containers, from the top of the file
MAX_KEY_PARTS = 64                # parts of one dotted key (a.b.c) or table header
MAX_DIM = 2 ** 31 - 1             # dims reach int32 arrays (valid_lens, context_lens)
_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1
_ITEMSIZE = {"float64": 8, "int64": 8, "uint64": 8, "float32": 4, "int32": 4, "uint32": 4,
             "bfloat16": 2, "float16": 2, "int16": 2, "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}

_TOP_KEYS = {"format", "kernel", "description"}
_BLOCK_KEYS = {"name", "module", "dtypes", "targets", "inputs", "dims", "static", "static_variants",
               "buckets", "mesh", "shard", "vjp"}


class ManifestWarning(UserWarning):
    """A manifest is valid but asks for something useless (entries no call can reach)."""


@dataclass(frozen=True)
class KernelBlock:
    """One validated [[kernel]] table, expanded: every bucket × dtype × static set."""
    kernel: KernelSpec
    where: str                                # "kernel[0]" for messages
    buckets: tuple[dict, ...]                 # full dims per bucket
    dtypes: tuple[str, ...]
    statics: tuple[dict, ...]                 # canonical static sets
    present: tuple[str, ...]                  # optional inputs passed
    targets: tuple[str, ...] | None           # None: every target
    module: str | None = None                 # an outside kernel's module
    layouts: tuple = (None,)                  # ejaot.spec.mesh.Layout per mesh; None: one device
    vjp: bool = False                         # entries also store their VJP (grad runs it)

    @property
    def count(self) -> int:
        """Entries this table plans for a target it applies to (before cross-table dedup)."""
        return len(self.buckets) * len(self.dtypes) * len(self.statics) * len(self.layouts)

    def applies_to(self, target: Target) -> bool:
        return ((self.targets is None or target.name in self.targets)
                and any(b in self.kernel.backends for b in target.backends))


@dataclass(frozen=True)
class Manifest:
    path: Path
    blocks: tuple[KernelBlock, ...]
    warnings: tuple[str, ...] = ()            # "file: key: problem" of each ManifestWarning


# -- reading the file ------------------------------------------------------------------

def load_manifest(path, max_entries: int | None = DEFAULT_MAX_ENTRIES, target=None,
                  warn: bool = True) -> Manifest:
    """Read and validate a manifest. `max_entries` (None: no limit) bounds the entries
    planned for `target` (a name or Target; None: for each target); `warn=False` leaves
    ManifestWarnings to Manifest.warnings only."""
    path = Path(path)
    text = _read_text(path)
    _scan(text, path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(path, None, f"not valid TOML: {e}") from None
    except RecursionError:
        raise ManifestError(path, None, "not valid TOML: nested too deeply to parse") from None
    except ValueError as e:       # an integer literal with more digits than Python converts
        raise ManifestError(path, None, f"not valid TOML: {e}") from None
    return parse_manifest(raw, path, max_entries=max_entries, target=target, warn=warn)


def _read_text(path: Path) -> str:
    """The file's text: a regular file (opened without blocking, so a FIFO cannot hang the
    build), at most MAX_FILE_BYTES, UTF-8 (a leading byte-order mark is dropped)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ManifestError(path, None, "file not found") from None
    except OSError as e:
        raise ManifestError(path, None, f"cannot be opened: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise ManifestError(path, None, f"not a regular file ({kind})")
        if st.st_size > MAX_FILE_BYTES:
            raise ManifestError(path, None, f"file too large: {st.st_size} bytes (at most {MAX_FILE_BYTES})")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:          # the file may grow while it is read
            chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise ManifestError(path, None, f"file too large: more than {MAX_FILE_BYTES} bytes")
    except OSError as e:
        raise ManifestError(path, None, f"cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        try:      # the key whose line holds the byte, if the text before it says
            key = _scan(data[:e.start].decode("utf-8", "replace"), path)
        except ManifestError:
            key = None
        raise ManifestError(path, key, f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                                       f"(line {line}) does not decode") from None
    return text[1:] if text.startswith("\ufeff") else text


# One token of TOML for _scan: strings whole (their brackets and dots are text), comments,
# brackets, and the runs of key or number characters between them.
_TOKEN = re.compile(r'''
    [ \t\r]*(?:\#[^\n]*)?         # blanks and a comment before a token are skipped with it
    (?:
    (?P<str> """(?:[^\\]|\\.)*?"""(?!") | \'\'\'.*?\'\'\'(?!\') | "(?:[^"\\\n]|\\.)*" | '[^'\n]*' )
  | (?P<comment> \#[^\n]* )
  | (?P<open> [\[{] )
  | (?P<close> [\]}] )
  | (?P<nl> \n )
  | (?P<eq> = )
  | (?P<dot> \. )
  | (?P<bare> [A-Za-z0-9_+\-:]+ )
  | (?P<other> . )
    )
''', re.S | re.X)
_MAX_LITERAL = 4000      # digits: Python refuses to convert a decimal literal over ~4300


def _scan(text: str, path, stop: int | None = None) -> str | None:
    """Refuse, before tomllib parses it, TOML that would make the parser recurse past
    Python's limit, run quadratic (very long dotted keys) or fail deep inside (an integer
    literal with thousands of digits). The key named is that of the assignment at the top
    of its table; the message gives the line. Returns the key being assigned at offset
    `stop` (default: the end), for messages about the text there."""
    depth, line = 0, 1
    at_line_start, in_header, header_aot = True, False, False
    header, key_parts = [], []
    table, key = "", ""
    aot: dict[str, int] = {}
    run_dots = 0

    def where() -> str | None:
        k = ".".join(p for p in (table, key) if p)
        return k or None

    for m in _TOKEN.finditer(text, 0, len(text) if stop is None else stop):
        kind, s = m.lastgroup, m.group(m.lastgroup)
        if kind == "comment":
            continue
        if kind == "dot":
            run_dots += 1
            if run_dots >= MAX_KEY_PARTS:
                if in_header:
                    table, key = "".join(header)[:80], ""
                elif depth == 0:
                    key = "".join(key_parts)[:80]
                raise ManifestError(path, where(), f"a dotted key with more than {MAX_KEY_PARTS} parts "
                                                   f"(line {line})")
        elif kind not in ("bare", "str"):
            run_dots = 0
        if kind == "nl":
            line += 1
            if depth == 0:
                at_line_start, key_parts, key = True, [], ""
            continue
        if kind == "str":
            line += s.count("\n")
        if kind == "bare" and len(s) > _MAX_LITERAL:
            raise ManifestError(path, where(), f"a number or key of {len(s)} characters (line {line})")
        first = at_line_start
        at_line_start = False
        if kind == "open":
            if depth == 0 and first and s == "[":
                in_header, header_aot, header = True, False, []
            elif in_header and depth == 1 and not header and s == "[":
                header_aot = True
            depth += 1
            if depth > MAX_NESTING:
                raise ManifestError(path, where(), f"nested more than {MAX_NESTING} levels deep (line {line})")
        elif kind == "close":
            depth = max(depth - 1, 0)
            if in_header and depth == 0:
                in_header = False
                name = "".join(header)
                if header_aot:
                    aot[name] = aot.get(name, 0) + 1
                head, _, rest = name.partition(".")
                table = (f"{head}[{aot[head] - 1}]" + (f".{rest}" if rest else "")) if head in aot else name
                key = ""
        elif in_header:
            header.append(s)
        elif depth == 0:
            if kind == "eq":
                key = "".join(key_parts)[:80]
            elif kind in ("bare", "str", "dot"):
                key_parts.append(s)
            else:         # not TOML: tomllib says where
                key_parts = []
    if depth == 0 and not in_header and key_parts and not key:
        key = "".join(key_parts)[:80]
    return where()


# -- validating the parsed document ----------------------------------------------------

def parse_manifest(raw: dict, path, max_entries: int | None = DEFAULT_MAX_ENTRIES, target=None,
                   warn: bool = True) -> Manifest:
    fail = lambda key, msg: ManifestError(path, key, msg)
    if not isinstance(raw, dict):
        raise fail(None, "expected a TOML document (a table)")
    _check_values(raw, fail)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key; expected one of {sorted(_TOP_KEYS)}")
    if raw.get("format", FORMAT) != FORMAT or isinstance(raw.get("format"), bool):
        raise fail("format", f"manifest format {_show(raw.get('format'))} is not supported (expected {FORMAT})")
    if not isinstance(raw.get("description", ""), str):
        raise fail("description", f"expected a string, got {_show(raw['description'])}")
    tables = raw.get("kernel", [])
    if not isinstance(tables, list) or not tables:
        raise fail("kernel", "expected one or more [[kernel]] tables")
    drafts = [_check_block(t, f"kernel[{i}]", fail) for i, t in enumerate(tables)]
    if max_entries is not None:
        targets = [target if isinstance(target, Target) else get_target(target)] if target is not None \
            else list(TARGETS.values())
        for tgt in targets:
            check_entry_limit(path, [(d.where, d.spec.name, d.count, d.breakdown) for d in drafts
                                     if d.applies_to(tgt)], tgt.name, max_entries)
    blocks = tuple(_expand(d, fail) for d in drafts)
    found = tuple(w for b, d in zip(blocks, drafts) for w in _unreachable(b, d, path))
    if warn:
        for w in found:
            _warnings.warn(ManifestWarning(w), stacklevel=3)
    return Manifest(Path(path), blocks, found)


def check_entry_limit(path, counts, target_name: str, max_entries: int | None) -> None:
    """counts: (where, kernel, entries, how) per table that applies to the target. Raises
    a ManifestError naming the largest tables when their sum exceeds max_entries."""
    total = sum(c[2] for c in counts)
    if max_entries is None or total <= max_entries:
        return
    top = sorted(counts, key=lambda c: -c[2])
    shown = "; ".join(f"{w} ({k}) {n:,} = {how}" for w, k, n, how in top[:3])
    more = f"; and {len(top) - 3} more tables" if len(top) > 3 else ""
    raise ManifestError(path, top[0][0],
                        f"plans {total:,} entries for target {target_name}, more than the limit of "
                        f"{max_entries:,} (ejaot build --max-entries N, or max_entries=, raises it); "
                        f"largest: {shown}{more}")


def _check_values(raw: dict, fail) -> None:
    """Every integer fits in 64 bits and nothing nests deeper than MAX_NESTING (iterative:
    the walk itself cannot overflow the stack)."""
    stack: list[tuple[Any, str, int]] = [(raw, "", 0)]
    while stack:
        v, key, depth = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise fail(key or None, f"integer of {v.bit_length()} bits does not fit in 64 bits")
            continue
        if isinstance(v, (dict, list)):
            if depth > MAX_NESTING:
                raise fail(key or None, f"nested more than {MAX_NESTING} levels deep")
            items = (v.items() if isinstance(v, dict)
                     else ((f"[{i}]", x) for i, x in enumerate(v)))
            children = [(x, (f"{key}{k}" if isinstance(v, list) else f"{key}.{k}" if key else str(k)),
                         depth + 1) for k, x in items]
            stack.extend(reversed(children))


@dataclass
class _Draft:
    """A [[kernel]] table whose keys are checked, before its product is expanded."""
    spec: KernelSpec
    where: str
    table: dict
    module: str | None
    dtypes: tuple[str, ...]
    targets: tuple[str, ...] | None
    present: tuple[str, ...]
    dims: dict[str, list[int]]
    buckets: list[dict]
    base: dict
    variants: list[dict]
    product: bool                # the product of dims is built (besides explicit buckets)
    meshes: list | None = None   # (axes, shard) per mesh (ejaot.spec.mesh.check_table); None: one device
    vjp: bool = False

    @property
    def n_buckets(self) -> int:
        return (math.prod(len(v) for v in self.dims.values()) if self.product else 0) + len(self.buckets)

    @property
    def count(self) -> int:
        return self.n_buckets * len(self.dtypes) * len(self.variants) * len(self.meshes or [None])

    @property
    def breakdown(self) -> str:
        meshes = f" × {len(self.meshes)} meshes" if self.meshes else ""
        return f"{self.n_buckets:,} buckets × {len(self.dtypes)} dtypes × {len(self.variants)} static sets{meshes}"

    def applies_to(self, target: Target) -> bool:
        return ((self.targets is None or target.name in self.targets)
                and any(b in self.spec.backends for b in target.backends))


def _check_block(t: Any, where: str, fail) -> _Draft:
    if not isinstance(t, dict):
        raise fail(where, f"expected a table, got {_kind(t)}")
    unknown = set(t) - _BLOCK_KEYS
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", f"unknown key; expected one of {sorted(_BLOCK_KEYS)}")
    module = t.get("module")
    if module is not None:
        kernels = _outside_kernels(module, f"{where}.module", fail)
    else:
        kernels = all_kernels()
    name = t.get("name")
    if not isinstance(name, str):
        raise fail(f"{where}.name", f"expected a kernel name (a string), got {_kind(name)} {_show(name)}"
                   if name is not None else f"missing; expected one of {sorted(kernels)}")
    if name not in kernels:
        raise fail(f"{where}.name", f"unknown kernel {_show(name)}; expected one of {sorted(kernels)}"
                   + (f" (declared in {module})" if module else ""))
    spec = kernels[name]

    dtypes = _names(t, "dtypes", where, fail, default=["float32"])
    for i, d in enumerate(dtypes):
        if d not in spec.dtypes:
            raise fail(f"{where}.dtypes[{i}]", f"dtype {_show(d)} not supported by {name}; "
                                               f"expected one of {list(spec.dtypes)}")

    targets = None
    if "targets" in t:
        given = _names(t, "targets", where, fail)
        for i, tn in enumerate(given):
            if tn not in known_target_names():
                raise fail(f"{where}.targets[{i}]", f"unknown target {_show(tn)}; expected one of "
                                                    f"{known_target_names()}")
        targets = tuple(dict.fromkeys(get_target(tn).name for tn in given))

    optional = [a.name for a in spec.inputs if a.optional]
    present = _names(t, "inputs", where, fail, default=[], allow_empty=True)
    for i, p in enumerate(present):
        if p not in optional:
            raise fail(f"{where}.inputs[{i}]", f"{_show(p)} is not an optional input of {name}; "
                                               f"expected one of {optional}")

    dims_table = t.get("dims", {})
    if not isinstance(dims_table, dict):
        raise fail(f"{where}.dims", f"expected a table of dimension = value or [values], got {_kind(dims_table)}")
    dims: dict[str, list[int]] = {}
    for d, v in dims_table.items():
        if d not in spec.dims:
            raise fail(f"{where}.dims.{d}", f"unknown dimension of {spec.name}; expected one of {list(spec.dims)}")
        values = v if isinstance(v, list) else [v]
        if not values:
            raise fail(f"{where}.dims.{d}", "empty list: give a value or a list of at least one")
        for i, x in enumerate(values):
            _check_dim(x, f"{where}.dims.{d}" + (f"[{i}]" if isinstance(v, list) else ""), fail,
                       "expected positive integers")
        dims[d] = list(dict.fromkeys(values))

    buckets = []
    if "buckets" in t:
        raw_buckets = _list_of_tables(t["buckets"], f"{where}.buckets", fail, "dimension = value",
                                      "empty list: give at least one { dimension = value } table, "
                                      "or leave the key out to build the product of dims")
        for i, b in enumerate(raw_buckets):
            for d, x in b.items():
                if d not in spec.dims:
                    raise fail(f"{where}.buckets[{i}].{d}", f"unknown dimension of {spec.name}; "
                                                            f"expected one of {list(spec.dims)}")
                _check_dim(x, f"{where}.buckets[{i}].{d}", fail, "expected a positive integer")
            buckets.append(b)

    base = t.get("static", {})
    if not isinstance(base, dict):
        raise fail(f"{where}.static", f"expected a table of name = value, got {_kind(base)}")
    variants = _list_of_tables(t.get("static_variants", [{}]), f"{where}.static_variants", fail,
                               "name = value", "empty list: give at least one table ({} for "
                               "[kernel.static] alone), or leave the key out")
    for table, table_where in [(base, f"{where}.static")] + [
            (v, f"{where}.static_variants[{i}]") for i, v in enumerate(variants)]:
        for k in table:
            if k not in spec.static_names:
                raise fail(f"{table_where}.{k}", f"unknown static argument of {spec.name}; "
                                                 f"expected one of {list(spec.static_names)}")
    product = "buckets" not in t or any(len(v) > 1 for v in dims.values())
    meshes = _mesh.check_table(t, where, spec, fail)
    vjp = t.get("vjp", False)
    if not isinstance(vjp, bool):
        raise fail(f"{where}.vjp", f"expected true or false, got {_kind(vjp)} {_show(vjp)}")
    return _Draft(spec, where, t, module, tuple(dtypes), targets, tuple(present), dims, buckets,
                  base, variants, product, meshes, vjp)


def _list_of_tables(value, key: str, fail, entries: str, when_empty: str) -> list:
    """A non-empty list of tables (of `entries`, e.g. "name = value"), else a ManifestError."""
    if not isinstance(value, list):
        raise fail(key, f"expected a list of tables, got {_kind(value)}")
    if not value:
        raise fail(key, when_empty)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise fail(f"{key}[{i}]", f"expected a table of {entries}, got {_kind(item)}")
    return value


def _check_dim(x, key, fail, expected) -> None:
    if not isinstance(x, int) or isinstance(x, bool):
        raise fail(key, f"{expected}, got {_kind(x)} {_show(x)}")
    if x <= 0:
        raise fail(key, f"{expected}, got {x}")
    if x > MAX_DIM:
        raise fail(key, f"{x} is too large: a dimension is at most {MAX_DIM} (2**31 - 1; lengths "
                        "and indices are int32)")


def _names(t: dict, field: str, where: str, fail, default=None, allow_empty=False) -> list[str]:
    """A string or a list of strings, order kept, duplicates dropped."""
    if field not in t:
        return list(default)
    v = t[field]
    values = v if isinstance(v, list) else [v]
    if not values and not allow_empty:
        raise fail(f"{where}.{field}", "empty list: give at least one, or leave the key out")
    for i, x in enumerate(values):
        if not isinstance(x, str):
            key = f"{where}.{field}" + (f"[{i}]" if isinstance(v, list) else "")
            raise fail(key, f"expected a name (a string), got {_kind(x)} {_show(x)}")
    return list(dict.fromkeys(values))


def _outside_kernels(module, key, fail) -> dict:
    if not isinstance(module, str) or not module or not all(p.isidentifier() for p in module.split(".")):
        raise fail(key, f"expected a dotted module name, got {_show(module)}")
    try:
        found = register_module(module)
    except ImportError as e:
        raise fail(key, f"module {module!r} cannot be imported ({e}); install its package or "
                        "put it on PYTHONPATH") from None
    if not found:
        raise fail(key, f"module {module!r} declares no KernelSpec")
    return found


def _expand(d: _Draft, fail) -> KernelBlock:
    buckets = _expand_buckets(d, fail)
    statics = _expand_statics(d, fail)
    spec = d.spec
    if spec.check:
        for b, origin in buckets:
            for s in statics:
                try:
                    spec.check(b, s)
                except Exception as e:
                    why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                    raise fail(d.where, f"bucket {b} with static {_show(s)}: {why}") from None
    layouts = (None,)
    if d.meshes is not None:
        layouts = tuple(_mesh.make_layout(axes, shard, spec) for axes, shard in d.meshes)
        for layout in layouts:
            for b, origin in buckets:
                for s in statics:
                    _mesh.check_bucket(layout, b, s, spec, d.where, origin, fail)
    return KernelBlock(spec, d.where, tuple(b for b, _ in buckets), d.dtypes, tuple(statics),
                       d.present, d.targets, d.module, layouts, d.vjp)


def _expand_buckets(d: _Draft, fail) -> list[tuple[dict, str]]:
    """(full dims, key it came from) per distinct bucket."""
    spec, where = d.spec, d.where
    single = {k: v[0] for k, v in d.dims.items() if len(v) == 1}
    found = []
    if d.product:
        names = list(d.dims)
        found += [(dict(zip(names, combo)), f"{where}.dims")
                  for combo in itertools.product(*(d.dims[n] for n in names))]
    found += [({**single, **b}, f"{where}.buckets[{i}]") for i, b in enumerate(d.buckets)]
    widest = max(_ITEMSIZE.get(t, 8) for t in d.dtypes)
    out, seen = [], set()
    for b, origin in found:
        full = spec.resolve_dims(b)
        missing = [x for x in spec.dims if x not in full]
        if missing:
            raise fail(f"{where}.dims", f"missing dimension(s) {missing} of {spec.name}")
        key = tuple(full[x] for x in spec.dims)
        if key in seen:
            continue
        seen.add(key)
        full = {x: full[x] for x in spec.dims}
        for a in spec.inputs + spec.outputs:
            if a.is_tree:
                continue
            try:
                shape = spec.shape_of(a, full)
            except (KeyError, TypeError, ValueError):
                continue          # a spec bug, reported when the entry is lowered
            size = math.prod(shape) * (_ITEMSIZE.get(a.dtype, 8) if a.dtype else widest)
            if size > _INT64_MAX:
                raise fail(origin, f"bucket {full}: array {a.name!r} of shape {shape} would hold "
                                   f"2**{size.bit_length() - 1} bytes or more, more than a 64-bit "
                                   "size can count")
        out.append((full, origin))
    return out


def _expand_statics(d: _Draft, fail) -> list[dict]:
    import msgpack
    spec, where = d.spec, d.where
    out, seen = [], set()
    for i, v in enumerate(d.variants):
        merged = {**d.base, **v}
        key_where = f"{where}.static_variants[{i}]" if v else f"{where}.static"
        try:
            canon = spec.canonical_static(merged)
        except Exception as e:
            why = str(e) if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {e}"
            raise fail(key_where, why) from None
        try:   # what the entry's key will hash
            k = msgpack.packb(sorted(canon.items()), use_bin_type=True)
        except Exception as e:
            raise fail(key_where, f"static values {_show(canon)} cannot be recorded: {type(e).__name__}: {e}") from None
        if k not in seen:
            seen.add(k)
            out.append(canon)
    return out


def _unreachable(block: KernelBlock, d: _Draft, path) -> list[str]:
    """A ManifestWarning per dimension the table gives whose value no call can have: it
    comes only from optional inputs the table does not pass (a call then gets the default)."""
    spec = block.kernel
    derivable, carriers = set(), {}
    for a in spec.inputs:
        names = {x for x in a.dims if isinstance(x, str)} | {x for x, _, _ in getattr(a, "dims_from", ())}
        if not a.optional or a.name in block.present:
            derivable |= names
        else:
            for x in names:
                carriers.setdefault(x, []).append(a.name)
    given = {x: f"{d.where}.dims.{x}" for x in d.dims}
    for i, b in enumerate(d.buckets):
        for x in b:
            given.setdefault(x, f"{d.where}.buckets[{i}].{x}")
    suspects = [x for x in spec.dims if x in given and x not in derivable]
    if not suspects:
        return []
    bad: dict[str, list] = {x: [] for x in suspects}
    dead = 0
    for b in block.buckets:
        call = spec.resolve_dims({x: b[x] for x in derivable if x in b})
        causes = [x for x in suspects
                  if (int(call.get(x, 0)) > b[x] if x in spec.paddable else call.get(x) != b[x])]
        for x in causes:
            bad[x].append(call.get(x))
        dead += bool(causes)
    out = []
    for x in suspects:
        if not bad[x]:
            continue
        held = sorted({v for v in bad[x] if v is not None})
        has = (f"a call has {x} = {held[0]}" if len(held) == 1 else
               f"a call has {x} = one of {held}" if held else f"a call never has {x}")
        src = (f"it comes only from optional input(s) {carriers[x]}, which `inputs` does not list"
               if x in carriers else "no input of the kernel has it")
        scope = ("no call can ever reach this table's entries" if dead == len(block.buckets)
                 else f"{len(bad[x])} of {len(block.buckets)} buckets can never be reached")
        fix = f"add {carriers[x]} to inputs, or remove the key" if x in carriers else "remove the key"
        out.append(f"{path}: {given[x]}: {scope}: {src}, so {has} ({fix})")
    return out


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxdict = _repr.maxtuple = 6
_repr.maxlevel = 3


def _show(v) -> str:
    """A user's value for a message, short however large or deep it is."""
    try:
        return _repr.repr(v)
    except Exception:
        return f"<{type(v).__name__}>"


def _kind(v) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(v), f"a {type(v).__name__}")

"""The index record: one entry's description, and its schema, checked in one place.

A record passes its index's checksum and is still only data someone wrote: before any field
is used, `problem(key, record)` checks every field's type and shape (nested ones included,
every map key a string, nesting bounded), so a well-formed but wrong record is rejected on
its own, with a reason, and never raises later in dispatch, `ls`, `inspect` or `verify`.
`spec_problem` then checks it against the installed kernel's declaration.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from ..store.format import Undecodable

RECORD_FORMAT = 1        # the record schema, stored in every record

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_DEPTH = 16
Check = Callable[[Any, str], "str | None"]


class _Bad(Exception):
    pass


def _fail(path: str, what: str, value) -> None:
    raise _Bad(f"record field {path!r} {what}, got {_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- checks: each takes (value, path) and raises _Bad --------------------------------------
def string(v, path):
    if not isinstance(v, str):
        _fail(path, "is not a string", v)


def hex64(v, path):
    if not isinstance(v, str) or not _HEX64.match(v):
        _fail(path, "is not a sha256 (64 hex digits)", v)


def integer(v, path, lo=None):
    if type(v) is not int or (lo is not None and v < lo):
        _fail(path, "is not an integer" + (f" >= {lo}" if lo is not None else ""), v)


def non_negative(v, path):
    integer(v, path, 0)


def positive(v, path):
    integer(v, path, 1)


def optional(check):
    def c(v, path):
        if v is not None:
            check(v, path)
    return c


def list_of(check, length=None):
    def c(v, path):
        if not isinstance(v, list) or (length is not None and len(v) != length):
            _fail(path, "is not a list" + (f" of {length}" if length is not None else ""), v)
        for i, x in enumerate(v):
            check(x, f"{path}[{i}]")
    return c


def map_of(check):
    def c(v, path):
        if not isinstance(v, dict):
            _fail(path, "is not a table", v)
        for k, x in v.items():
            if not isinstance(k, str):
                _fail(path, "has a key that is not a string", k)
            check(x, f"{path}.{k}")
    return c


def table(required: dict, extra: dict | None = None, open_: bool = True):
    """A table with required fields, optional ones, and (open_) any other plain data."""
    def c(v, path):
        if not isinstance(v, dict):
            _fail(path, "is not a table", v)
        for k in v:
            if not isinstance(k, str):
                _fail(path, "has a key that is not a string", k)
        for k, check in required.items():
            if k not in v:
                raise _Bad(f"record field {path + '.' + k if path else k!r} is missing")
            check(v[k], f"{path}.{k}" if path else k)
        for k, check in (extra or {}).items():
            if k in v:
                check(v[k], f"{path}.{k}" if path else k)
        if open_:
            for k, x in v.items():
                if k not in required and k not in (extra or {}):
                    plain(x, f"{path}.{k}" if path else k)
        else:
            unknown = sorted(set(v) - set(required) - set(extra or {}))
            if unknown:
                _fail(path, f"has an unknown field {unknown[0]!r}", v)
    return c


def plain(v, path, depth=0):
    """msgpack data of bounded depth whose every map key is a string."""
    if depth > _MAX_DEPTH:
        _fail(path, f"nests deeper than {_MAX_DEPTH} levels", "...")
    if v is None or isinstance(v, (str, bytes, bool, int, float)):
        return
    if isinstance(v, list):
        for i, x in enumerate(v):
            plain(x, f"{path}[{i}]", depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                _fail(path, "has a key that is not a string", k)
            plain(x, f"{path}.{k}", depth + 1)
        return
    _fail(path, "is not plain data", v)


def static_value(v, path):
    """A canonical static argument: a scalar, or a list of scalars (a window)."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return
    if isinstance(v, list) and all(x is None or isinstance(x, (str, bool, int, float)) for x in v):
        return
    _fail(path, "is not a scalar or a list of scalars", v)


shape = list_of(non_negative)
_AVAL = list_of(lambda v, p: None, 2)


def aval(v, path):
    _AVAL(v, path)
    shape(v[0], path + "[0]")
    string(v[1], path + "[1]")


def named_aval(v, path):
    list_of(lambda v, p: None, 3)(v, path)
    string(v[0], path + "[0]")
    shape(v[1], path + "[1]")
    string(v[2], path + "[2]")


def mesh_axis(v, path):
    list_of(lambda v, p: None, 2)(v, path)
    string(v[0], path + "[0]")
    positive(v[1], path + "[1]")


def partition_entry(v, path):
    """One dimension of a partition spec: None, an axis name, or a list of names."""
    if v is None or isinstance(v, str):
        return
    list_of(string)(v, path)


mesh_axes = list_of(mesh_axis)
partition = list_of(list_of(partition_entry))

payload_ref = table({"sha256": hex64, "size": non_negative}, open_=False)

EXECUTABLE = table({"codec": integer, "name": string, "in_avals": list_of(aval), "out_avals": list_of(aval),
                    "kept_var_idx": list_of(non_negative)},
                   {"device_kind": string, "cpu_features": list_of(string), "hardware_checked": lambda v, p: (
                       None if isinstance(v, bool) else _fail(p, "is not true or false", v)),
                    "mesh": mesh_axes, "in_specs": partition, "out_specs": partition})

RECORD = table(
    {"key": hex64, "format": integer, "kernel": string, "backend": string, "target": string,
     "platform": string, "dims": map_of(non_negative), "dtype": string, "present": list_of(string),
     "static": map_of(static_value), "source_hash": string, "toolchain": map_of(optional(string)),
     "payloads": map_of(payload_ref), "inputs": list_of(named_aval), "outputs": list_of(aval),
     "exported": table({"calling_convention_version": integer, "platforms": list_of(string)},
                       {"vjp_order": non_negative})},
    {"executable": EXECUTABLE, "module": string, "donated": list_of(non_negative),
     "signer": string, "signature": lambda v, p: None if isinstance(v, bytes) else _fail(p, "is not bytes", v),
     "config": map_of(plain), "valid_length_dims": list_of(string), "notes": list_of(string),
     "mesh": mesh_axes, "shard": map_of(string), "split": map_of(string)})


def problem(key, record) -> str | None:
    """The first structural problem of a record filed under `key`, or None."""
    if isinstance(record, Undecodable):
        return f"record is not valid msgpack data ({record.reason})"
    if not isinstance(key, str):
        return f"index key {key!r} is not a string"
    if not isinstance(record, dict):
        return "record is not a table"
    try:
        RECORD(record, "")
    except _Bad as e:
        return str(e)
    except RecursionError:
        return "record nests too deeply"
    if record["key"] != key:
        return "record key does not match its index slot"
    if record["format"] != RECORD_FORMAT:
        return f"record format {record['format']!r}, this ejaot reads {RECORD_FORMAT}"
    meshed = [k for k in ("mesh", "shard", "split") if k in record]
    if meshed and len(meshed) != 3:
        return f"record has {meshed} but not all of mesh, shard and split"
    if meshed:
        axes = [a for a, _ in record["mesh"]]
        if not axes or len(set(axes)) != len(axes):
            return "record field 'mesh' has no axes or repeats one"
        if not set(record["shard"].values()) | set(record["split"].values()) <= set(axes):
            return "record shards over an axis its mesh does not have"
    donated = record.get("donated", [])
    if any(i >= len(record["inputs"]) for i in donated):
        return "record field 'donated' names inputs the entry does not have"
    return None


def spec_problem(record: dict, spec) -> str | None:
    """Whether a structurally valid record describes an entry of `spec` as installed here:
    its dims, static arguments, optional inputs and array signature."""
    if set(record["dims"]) != set(spec.dims):
        return f"record dims {sorted(record['dims'])} are not the kernel's {list(spec.dims)}"
    optional_inputs = {a.name for a in spec.inputs if a.optional}
    if not set(record["present"]) <= optional_inputs:
        return f"record inputs {record['present']} are not optional inputs of {spec.name}"
    if set(record["static"]) != set(spec.static_names):
        return f"record static arguments {sorted(record['static'])} are not the kernel's {list(spec.static_names)}"
    try:
        if spec.canonical_static(record["static"]) != record["static"]:
            return "record static arguments are not in canonical form"
        want = spec.leaf_avals(spec.inputs, record["dims"], record["static"], record["dtype"],
                               tuple(record["present"]))
    except Exception as e:  # a spec's normalizers and tree functions raise their own types
        return f"record does not fit the kernel's declaration ({type(e).__name__}: {e})"
    got = [(n, tuple(s), d) for n, s, d in record["inputs"]]
    if got != [(n, tuple(s), d) for n, s, d in want]:
        return "record inputs do not match the kernel's arrays at these dims"
    if "mesh" in record:
        from ..spec.mesh import record_problem
        return record_problem(record, spec)
    return None

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

    [[kernel]]                             # a kernel from outside the collection: a model's
    name = "llama_demo.decode_step"        # own step, declared as a KernelSpec in an
    module = "llama_demo.steps"            # importable module (installed or on PYTHONPATH)

Every problem is reported as a ManifestError naming the file and the key.
"""
from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .kernel_spec import KernelSpec
from .registry import all_kernels, register_module
from .targets import get_target, known_target_names

FORMAT = 1
_TOP_KEYS = {"format", "kernel", "description"}
_BLOCK_KEYS = {"name", "module", "dtypes", "targets", "inputs", "dims", "static", "static_variants",
               "buckets"}


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


@dataclass(frozen=True)
class Manifest:
    path: Path
    blocks: tuple[KernelBlock, ...]


def load_manifest(path) -> Manifest:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(path, None, "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(path, None, f"not valid TOML: {e}") from None
    return parse_manifest(raw, path)


def parse_manifest(raw: dict, path) -> Manifest:
    fail = lambda key, msg: ManifestError(path, key, msg)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key; expected one of {sorted(_TOP_KEYS)}")
    if raw.get("format", FORMAT) != FORMAT:
        raise fail("format", f"manifest format {raw.get('format')!r} is not supported (expected {FORMAT})")
    tables = raw.get("kernel", [])
    if not isinstance(tables, list) or not tables:
        raise fail("kernel", "expected one or more [[kernel]] tables")
    blocks = tuple(_parse_block(t, f"kernel[{i}]", fail) for i, t in enumerate(tables))
    return Manifest(Path(path), blocks)


def _parse_block(t: Any, where: str, fail) -> KernelBlock:
    if not isinstance(t, dict):
        raise fail(where, "expected a table")
    unknown = set(t) - _BLOCK_KEYS
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", f"unknown key; expected one of {sorted(_BLOCK_KEYS)}")
    module = t.get("module")
    if module is not None:
        kernels = _outside_kernels(module, f"{where}.module", fail)
    else:
        kernels = all_kernels()
    name = t.get("name")
    if not isinstance(name, str) or name not in kernels:
        raise fail(f"{where}.name", f"unknown kernel {name!r}; expected one of {sorted(kernels)}"
                   + (f" (declared in {module})" if module else ""))
    spec = kernels[name]

    dtypes = _as_list(t.get("dtypes", ["float32"]))
    for i, d in enumerate(dtypes):
        if d not in spec.dtypes:
            raise fail(f"{where}.dtypes[{i}]", f"dtype {d!r} not supported by {name}; expected one of {list(spec.dtypes)}")

    targets = None
    if "targets" in t:
        targets = tuple(_as_list(t["targets"]))
        for i, tn in enumerate(targets):
            try:
                get_target(tn)
            except KeyError:
                raise fail(f"{where}.targets[{i}]", f"unknown target {tn!r}; expected one of {known_target_names()}") from None
        targets = tuple(get_target(tn).name for tn in targets)

    optional = [a.name for a in spec.inputs if a.optional]
    present = tuple(_as_list(t.get("inputs", [])))
    for i, p in enumerate(present):
        if p not in optional:
            raise fail(f"{where}.inputs[{i}]", f"{p!r} is not an optional input of {name}; expected one of {optional}")

    buckets = _parse_buckets(spec, t, where, fail)
    statics = _parse_statics(spec, t, where, fail)
    for b in buckets:
        for s in statics:
            if spec.check:
                try:
                    spec.check(b, s)
                except ValueError as e:
                    raise fail(f"{where}", f"bucket {b} with static {s}: {e}") from None
    return KernelBlock(spec, where, tuple(buckets), tuple(dtypes), tuple(statics), present, targets, module)


def _outside_kernels(module, key, fail) -> dict:
    if not isinstance(module, str) or not all(p.isidentifier() for p in module.split(".")):
        raise fail(key, f"expected a dotted module name, got {module!r}")
    try:
        found = register_module(module)
    except ImportError as e:
        raise fail(key, f"module {module!r} cannot be imported ({e}); install its package or "
                        "put it on PYTHONPATH") from None
    if not found:
        raise fail(key, f"module {module!r} declares no KernelSpec")
    return found


def _parse_buckets(spec: KernelSpec, t, where, fail) -> list[dict]:
    dims_table = t.get("dims", {})
    if not isinstance(dims_table, dict):
        raise fail(f"{where}.dims", "expected a table of dimension = value or [values]")
    for d, v in dims_table.items():
        if d not in spec.dims:
            raise fail(f"{where}.dims.{d}", f"unknown dimension of {spec.name}; expected one of {list(spec.dims)}")
        for i, x in enumerate(_as_list(v)):
            if not isinstance(x, int) or isinstance(x, bool) or x <= 0:
                raise fail(f"{where}.dims.{d}", f"expected positive integers, got {x!r}")
    lists = {d: _as_list(v) for d, v in dims_table.items()}
    single = {d: v[0] for d, v in lists.items() if len(v) == 1}
    found = []
    if "buckets" not in t or any(len(v) > 1 for v in lists.values()):
        names = list(lists)
        found += [dict(zip(names, combo)) for combo in itertools.product(*(lists[n] for n in names))]
    for i, b in enumerate(t.get("buckets", [])):
        if not isinstance(b, dict):
            raise fail(f"{where}.buckets[{i}]", "expected a table of dimension = value")
        for d, x in b.items():
            if d not in spec.dims:
                raise fail(f"{where}.buckets[{i}].{d}", f"unknown dimension of {spec.name}; expected one of {list(spec.dims)}")
            if not isinstance(x, int) or isinstance(x, bool) or x <= 0:
                raise fail(f"{where}.buckets[{i}].{d}", f"expected a positive integer, got {x!r}")
        found.append({**single, **b})
    out, seen = [], set()
    for b in found:
        full = spec.resolve_dims(b)
        missing = [d for d in spec.dims if d not in full]
        if missing:
            raise fail(f"{where}.dims", f"missing dimension(s) {missing} of {spec.name}")
        key = tuple(full[d] for d in spec.dims)
        if key not in seen:
            seen.add(key)
            out.append({d: full[d] for d in spec.dims})
    return out


def _parse_statics(spec: KernelSpec, t, where, fail) -> list[dict]:
    base = t.get("static", {})
    variants = t.get("static_variants", [{}])
    if not isinstance(base, dict):
        raise fail(f"{where}.static", "expected a table of name = value")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise fail(f"{where}.static_variants", "expected a list of tables")
    for table, table_where in [(base, f"{where}.static")] + [
            (v, f"{where}.static_variants[{i}]") for i, v in enumerate(variants)]:
        for k in table:
            if k not in spec.static_names:
                raise fail(f"{table_where}.{k}", f"unknown static argument of {spec.name}; "
                                                 f"expected one of {list(spec.static_names)}")
    out, seen = [], set()
    for i, v in enumerate(variants):
        merged = {**base, **v}
        key_where = f"{where}.static_variants[{i}]" if v else f"{where}.static"
        try:
            canon = spec.canonical_static(merged)
        except (ValueError, TypeError) as e:
            raise fail(key_where, str(e)) from None
        k = repr(sorted(canon.items()))
        if k not in seen:
            seen.add(k)
            out.append(canon)
    return out


def _as_list(v) -> list:
    return list(v) if isinstance(v, list) else [v]

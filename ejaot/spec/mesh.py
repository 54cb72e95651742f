"""Multi-chip entries: a device mesh and which of a kernel's dimensions are split over it.

A manifest table may declare

    mesh = { tp = 4 }                 # named axes and their sizes (a list builds each size)
    shard = { heads = "tp" }          # a kernel's dimension group -> the mesh axis it is split over

The groups are the kernel's to declare, not the engine's: `sharding.toml` in the kernel's
package maps each group to the dimensions split together (heads = ["q_heads", "kv_heads"]:
GQA keeps each query head with its kv head only when both are split alike). It is a data
file, outside every source hash, so declaring groups leaves single-device entries' keys
unchanged; a multi-chip entry's key records the dimensions each axis splits instead.

Every dimension a group names is split over the group's axis in every array that has it;
every other dimension (and every tree leaf) is replicated. The kernel itself runs once per
device on its shard (shard_map), so its config and checks see the per-device dims.

Nothing here imports jax at module level: planning and manifest checks stay cheap.
"""
from __future__ import annotations

import functools
import importlib.resources
import math
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping

MAX_DEVICES = 1 << 16           # far above any mesh one artifact is compiled for
SHARDING_FILE = "sharding.toml"


@dataclass(frozen=True)
class Layout:
    """One mesh and how an entry's arrays are split over it."""
    axes: tuple[tuple[str, int], ...]          # mesh axes, in order
    shard: tuple[tuple[str, str], ...]         # (group, axis), sorted by group
    split: tuple[tuple[str, str], ...]         # (dimension, axis), sorted by dimension

    @property
    def devices(self) -> int:
        return math.prod(n for _, n in self.axes)

    @property
    def axis_sizes(self) -> dict[str, int]:
        return dict(self.axes)

    @property
    def key(self) -> tuple:
        """What a call must match: the mesh's axes and which group goes over which axis."""
        return (self.axes, self.shard)

    def identity(self) -> dict:
        """The entry key's part: the mesh, the groups, and the dims they split (so that a
        changed declaration makes the entry stale)."""
        return {"mesh": [[a, n] for a, n in self.axes], "shard": dict(self.shard),
                "split": dict(self.split)}

    def local_dims(self, dims: Mapping[str, int]) -> dict:
        """The dims one device sees."""
        sizes, split = self.axis_sizes, dict(self.split)
        return {d: (v // sizes[split[d]] if d in split else v) for d, v in dims.items()}

    def spec_of(self, arg) -> tuple[str | None, ...]:
        """The partition of an array argument: its split dims' axes, None elsewhere; a tree
        (whose leaves carry no dimension names) is replicated."""
        if arg.is_tree:
            return ()
        split = dict(self.split)
        return tuple(split.get(d) if isinstance(d, str) else None for d in arg.dims)

    def describe(self) -> str:
        mesh = ",".join(f"{a}={n}" for a, n in self.axes)
        return f"mesh {mesh} ({', '.join(f'{g} over {a}' for g, a in self.shard)})"


def layout_of(record: Mapping[str, Any]) -> Layout | None:
    """The layout a (schema-checked) record was built for; None for a single-device entry."""
    if "mesh" not in record:
        return None
    return Layout(tuple((a, int(n)) for a, n in record["mesh"]), tuple(sorted(record["shard"].items())),
                  tuple(sorted(record["split"].items())))


def summary(record: Mapping[str, Any]) -> dict:
    """What `ejaot ls --json` shows of an entry's mesh: axes (None: one device), device
    count, and the groups split."""
    layout = layout_of(record) if isinstance(record.get("mesh"), list) else None
    if layout is None:
        return {"mesh": None, "devices": 1, "shard": None}
    return {"mesh": dict(layout.axes), "devices": layout.devices, "shard": dict(layout.shard)}


# -- the kernel's declaration -------------------------------------------------------------

def shardable_groups(spec) -> dict[str, tuple[str, ...]]:
    """{group: dims split together} from `sharding.toml` in the kernel's package ({} when
    it has none). Raises ValueError naming the file when it is malformed."""
    return dict(_groups(spec.package, tuple(spec.dims)))


@functools.lru_cache(maxsize=None)
def _groups(package: str, dims: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    try:
        ref = importlib.resources.files(package) / SHARDING_FILE
        if not ref.is_file():
            return ()
        raw = tomllib.loads(ref.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, TypeError):        # no such package, or not a folder
        return ()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{package}/{SHARDING_FILE}: cannot be read: {e}") from None
    out = []
    for group, names in raw.items():
        if (not isinstance(names, list) or not names
                or not all(isinstance(n, str) and n in dims for n in names)):
            raise ValueError(f"{package}/{SHARDING_FILE}: {group}: expected a list of the kernel's "
                             f"dimensions {list(dims)}, got {names!r}")
        out.append((group, tuple(names)))
    return tuple(out)


# -- manifest checks ----------------------------------------------------------------------

def check_table(t: Mapping[str, Any], where: str, spec, fail) -> list[tuple[tuple, tuple]] | None:
    """The `mesh` and `shard` keys of a [[kernel]] table: None when neither is given, else
    one (axes, shard) per mesh the table builds (a list of sizes builds each). Every problem
    is a ManifestError (through `fail`) naming the key."""
    if "mesh" not in t and "shard" not in t:
        return None
    if "mesh" not in t:
        raise fail(f"{where}.shard", "given without `mesh`: declare the mesh's axes, e.g. mesh = { tp = 4 }")
    mesh = t["mesh"]
    if not isinstance(mesh, dict) or not mesh:
        raise fail(f"{where}.mesh", "expected a table of axis = size, e.g. mesh = { tp = 4 }, got "
                                    + ("an empty table" if mesh == {} else _kind(mesh)))
    sizes: dict[str, list[int]] = {}
    for axis, v in mesh.items():
        key = f"{where}.mesh.{axis}"
        if not axis.isidentifier():
            raise fail(key, "an axis name must be an identifier (letters, digits, _)")
        values = v if isinstance(v, list) else [v]
        if not values:
            raise fail(key, "empty list: give a size or a list of sizes")
        for i, n in enumerate(values):
            k = key + (f"[{i}]" if isinstance(v, list) else "")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise fail(k, f"expected a positive integer (the axis' device count), got {_kind(n)} {n!r}")
        sizes[axis] = list(dict.fromkeys(values))

    if "shard" not in t:
        raise fail(f"{where}.mesh", "given without `shard`: say which dimension groups are split over "
                                    f"which axis, e.g. shard = {{ {next(iter(shardable_groups(spec)), 'heads')} "
                                    f"= \"{next(iter(mesh))}\" }}")
    try:
        groups = shardable_groups(spec)
    except ValueError as e:
        raise fail(f"{where}.shard", str(e)) from None
    if not groups:
        raise fail(f"{where}.mesh", f"kernel {spec.name} declares no dimensions that may be split over a "
                                    f"mesh (no {SHARDING_FILE} in {spec.package})")
    if spec.has_trees:
        raise fail(f"{where}.mesh", f"kernel {spec.name} takes tree arguments, which cannot be split over a mesh")
    shard = t["shard"]
    if not isinstance(shard, dict) or not shard:
        raise fail(f"{where}.shard", f"expected a table of group = axis, e.g. shard = {{ heads = \"tp\" }}; "
                                     f"{spec.name}'s groups: {_show_groups(groups)}")
    used: dict[str, str] = {}
    for group, axis in shard.items():
        key = f"{where}.shard.{group}"
        if group not in groups:
            raise fail(key, f"{spec.name} has no dimension group {group!r}; expected one of "
                            f"{_show_groups(groups)}")
        if not isinstance(axis, str):
            raise fail(key, f"expected a mesh axis name (a string), got {_kind(axis)} {axis!r}")
        if axis not in sizes:
            raise fail(key, f"axis {axis!r} is not an axis of the mesh {list(sizes)}")
        if axis in used:
            raise fail(key, f"axis {axis!r} already splits group {used[axis]!r}: one axis splits one group")
        used[axis] = group
    idle = [a for a in sizes if a not in used and any(n > 1 for n in sizes[a])]
    if idle:
        raise fail(f"{where}.mesh.{idle[0]}", f"axis {idle[0]!r} splits nothing (no group of `shard` "
                                              "names it): every device would compute the same result")
    names = list(sizes)
    out = []
    for combo in _product([sizes[a] for a in names]):
        axes = tuple(zip(names, combo))
        count = math.prod(combo)
        if count > MAX_DEVICES:
            raise fail(f"{where}.mesh", f"{count} devices is more than {MAX_DEVICES}")
        out.append((axes, tuple(sorted(shard.items()))))
    return out


def make_layout(axes, shard, spec) -> Layout:
    groups = shardable_groups(spec)
    split = {d: axis for group, axis in shard for d in groups[group]}
    return Layout(tuple(axes), tuple(shard), tuple(sorted(split.items())))


def check_bucket(layout: Layout, dims: Mapping[str, int], static, spec, where: str, origin: str, fail) -> None:
    """Every split dim divides evenly over its axis, and the per-device dims pass the
    kernel's own checks."""
    sizes = layout.axis_sizes
    for d, axis in layout.split:
        if d in dims and dims[d] % sizes[axis]:
            raise fail(origin, f"{d} = {dims[d]} does not divide over mesh axis {axis!r} of {sizes[axis]} "
                               f"devices (bucket {dict(dims)}; {layout.describe()})")
    if spec.check:
        local = layout.local_dims(dims)
        try:
            spec.check(local, static)
        except Exception as e:
            why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            raise fail(where, f"on each of the {layout.devices} devices of {layout.describe()}, the "
                              f"shard {local} does not fit {spec.name}: {why}") from None


def _product(lists):
    import itertools
    return itertools.product(*lists)


def _show_groups(groups) -> str:
    return ", ".join(f"{g} ({', '.join(d)})" for g, d in groups.items())


def _kind(v) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(v), f"a {type(v).__name__}")


def record_problem(record: Mapping[str, Any], spec) -> str | None:
    """Whether a multi-chip record (schema-checked) still fits the installed kernel's
    declaration: its groups exist and split the dims the record says, evenly."""
    try:
        groups = shardable_groups(spec)
    except ValueError as e:
        return str(e)
    unknown = sorted(set(record["shard"]) - set(groups))
    if unknown:
        return f"record splits group {unknown[0]!r}, which {spec.name} does not declare here"
    layout = layout_of(record)
    if dict(make_layout(layout.axes, layout.shard, spec).split) != record["split"]:
        return f"record splits {record['split']}, which is not what {spec.name}'s groups split here (stale)"
    sizes = layout.axis_sizes
    for d, axis in layout.split:
        if record["dims"].get(d, 0) % sizes[axis]:
            return f"record dim {d} = {record['dims'].get(d)} does not divide over axis {axis!r}"
    return None


def concrete_mesh(layout: Layout, devices):
    """The layout's mesh over the first `layout.devices` of `devices`, axes in declared order."""
    import numpy as np
    from jax.sharding import AxisType, Mesh
    names = tuple(a for a, _ in layout.axes)
    grid = np.array(list(devices)[:layout.devices], dtype=object).reshape([n for _, n in layout.axes])
    return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))

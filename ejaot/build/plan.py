"""Planning: a manifest and a target become the list of entries to build.

An entry is one kernel × bucket × dtype × static set × target, with the backend and
config chosen for it. Its key hashes everything that determines the artifact's bytes,
so an unchanged key means the stored artifact can be reused as it is.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

from .. import toolchain as tc
from ..artifact.canonical import canonical_bytes
from ..spec import KernelSpec
from .manifest import DEFAULT_MAX_ENTRIES, Manifest, check_entry_limit
from ..spec.mesh import Layout
from ..spec.registry import get_kernel
from ..targets import Target
from . import tuned

# Bump when the engine changes how any artifact is lowered or what it contains.
LOWERING_VERSION = 1


@dataclass(frozen=True)
class EntrySpec:
    kernel: str
    backend: str
    target: str
    platform: str
    dims: dict
    dtype: str
    present: tuple[str, ...]              # optional inputs passed
    static: dict
    config: dict
    config_source: dict                   # {"kind": "heuristic"} or {"kind": "tuned", ...}
    source_hash: str
    toolchain: dict = field(default_factory=dict)
    module: str | None = None             # an outside kernel's module (None: the collection)
    layout: Layout | None = None          # a multi-chip entry's mesh (None: one device)
    vjp: bool = False                     # the portable tier also holds the VJP (jax.export vjp_order=1)

    @property
    def spec(self) -> KernelSpec:
        return get_kernel(self.kernel, self.module)

    def identity(self) -> dict:
        """Everything that determines the artifact, in canonical form."""
        out = dict(lowering=LOWERING_VERSION, kernel=self.kernel, backend=self.backend,
                   target=self.target, platform=self.platform, dims=self.dims, dtype=self.dtype,
                   present=list(self.present), static=self.static, config=self.config,
                   source_hash=self.source_hash, toolchain=self.toolchain)
        if self.module is not None:
            out["module"] = self.module
        if self.layout is not None:       # absent for one device: single-device keys are unchanged
            out.update(self.layout.identity())
        if self.vjp:                      # likewise: entries without a stored VJP keep their keys
            out["vjp"] = 1
        return out

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_bytes(self.identity())).hexdigest()

    def input_avals(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of every array the artifact takes, in order."""
        spec = self.spec
        return spec.leaf_avals(spec.inputs, self.dims, self.static, self.dtype, self.present)

    def describe(self) -> str:
        dims = " ".join(f"{k}={v}" for k, v in self.dims.items())
        stat = ",".join(f"{k}={v}" for k, v in self.static.items() if v not in (None, False))
        mesh = f" {self.layout.describe()}" if self.layout is not None else ""
        vjp = " +vjp" if self.vjp else ""
        return f"{self.kernel}[{self.backend}] {self.dtype} {dims} {stat}".strip() + mesh + vjp


@dataclass(frozen=True)
class Skipped:
    where: str
    kernel: str
    reason: str


def plan(manifest: Manifest, target: Target, max_entries: int | None = DEFAULT_MAX_ENTRIES
         ) -> tuple[list[EntrySpec], list[Skipped]]:
    """Every entry of `manifest` for `target`. More than `max_entries` (None: no limit) is a
    ManifestError naming the largest tables, raised before any entry is planned."""
    check_entry_limit(manifest.path, [(b.where, b.kernel.name, b.count,
                                       f"{len(b.buckets):,} buckets × {len(b.dtypes)} dtypes × "
                                       f"{len(b.statics)} static sets"
                                       + (f" × {len(b.layouts)} meshes" if len(b.layouts) > 1 else ""))
                                      for b in manifest.blocks if b.applies_to(target)],
                      target.name, max_entries)
    entries: dict[str, EntrySpec] = {}
    skipped: list[Skipped] = []
    for block in manifest.blocks:
        spec = block.kernel
        if block.targets is not None and target.name not in block.targets:
            continue
        if spec.choose_backend(target.backends) is None:
            skipped.append(Skipped(block.where, spec.name,
                                   f"no implementation for {target.name} (has {sorted(spec.backends)})"))
            continue
        for dims, dtype, static, layout in itertools.product(block.buckets, block.dtypes, block.statics,
                                                             block.layouts):
            # a multi-chip entry's kernel runs on one device's shard: its config is for those dims
            local = dims if layout is None else layout.local_dims(dims)
            backend = spec.choose_backend(target.backends, local, static)
            if backend is None:
                skipped.append(Skipped(block.where, spec.name,
                                       f"no backend for {target.name} runs {dict(local)} {static}"))
                continue
            tools = tc.toolchain(target.platform, backend)
            config, source = tuned.choose_config(spec, backend, target, local, dtype, static, tools)
            e = EntrySpec(kernel=spec.name, backend=backend, target=target.name,
                          platform=target.platform, dims=dict(dims), dtype=dtype,
                          present=tuple(a.name for a in spec.inputs if a.name in block.present),
                          static=dict(static), config=config, config_source=source,
                          source_hash=spec.source_hash(backend), toolchain=tools,
                          module=block.module, layout=layout, vjp=block.vjp)
            entries.setdefault(e.key, e)
    return list(entries.values()), skipped

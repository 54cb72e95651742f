"""Sharded builds: `ejaot build --shard I/N` builds a deterministic share of the planned
entries, so N machines (a CI matrix) build one store between them; `ejaot merge` joins the
shard stores.

Assignment is bounded-load rendezvous hashing over the entries' keys, heaviest entries
first: each entry goes to the first shard in its own hash order (a ranking of the N shards
that depends on the entry's key alone) whose estimated cost stays within 10% above the
mean. So the shares are balanced by cost, not count, and when the manifest grows most
entries keep their shard (an entry's ranking never changes; only a load bound can move it),
so a CI cache of shard stores keeps most of its entries.
"""
from __future__ import annotations

import hashlib
import math
import re

from ..backends import get_backend
from ..errors import EjaotError

# A model's step is a whole program; each backend declares its own cost (BackendInfo).
_OUTSIDE_COST = 10.0
_SLACK = 1.10


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" (1-based) -> (I, N); a clear error otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise EjaotError(f"--shard must be I/N (e.g. 2/3), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if not 1 <= i <= n:
        raise EjaotError(f"--shard {text}: I must be between 1 and N")
    return i, n


def estimated_cost(entry) -> float:
    """An entry's build cost, in units of a small XLA entry."""
    base = _OUTSIDE_COST if entry.module is not None else get_backend(entry.backend).build_cost
    size = math.prod(max(1, int(v)) for v in entry.dims.values())
    return base * (1.0 + math.log2(size) / 32.0)


def _ranking(key: str, n: int) -> list[int]:
    scores = [(hashlib.sha256(f"{key}/{i}".encode()).digest(), i) for i in range(n)]
    return [i for _, i in sorted(scores, reverse=True)]


def assign(entries, n: int) -> dict[str, int]:
    """entry key -> shard (0-based) for every entry."""
    entries = sorted(entries, key=lambda e: (-estimated_cost(e), e.key))
    bound = _SLACK * sum(estimated_cost(e) for e in entries) / n if entries else 0.0
    load = [0.0] * n
    out = {}
    for e in entries:
        cost = estimated_cost(e)
        ranked = _ranking(e.key, n)
        shard = next((s for s in ranked if load[s] + cost <= bound), min(ranked, key=lambda s: load[s]))
        load[shard] += cost
        out[e.key] = shard
    return out


def select(entries, shard: tuple[int, int]):
    """The entries of shard I of N (1-based), in planning order."""
    i, n = shard
    owner = assign(entries, n)
    return [e for e in entries if owner[e.key] == i - 1]

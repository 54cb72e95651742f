"""Tile sizes and segment ids of the Pallas TPU flash attention (ejkernel's interface).

Pure Python (no jax import), so configs and the planner may use it freely.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

_BACKWARD_FIELDS = ("block_q_major_dkv", "block_k_major_dkv", "block_k_dkv", "block_q_dkv",
                    "block_k_major_dq", "block_k_dq", "block_q_dq")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the forward, dq and dk/dv kernels. They change speed, not results.

    block_q / block_k_major are the grid tiles of the forward pass; block_k is the
    compute tile walked inside a block_k_major tile. The _dkv and _dq fields play the
    same roles for the two backward kernels (None: use the forward's)."""
    block_q: int
    block_k_major: int
    block_k: int
    block_b: int
    block_q_major_dkv: int | None = None
    block_k_major_dkv: int | None = None
    block_k_dkv: int | None = None
    block_q_dkv: int | None = None
    block_k_major_dq: int | None = None
    block_k_dq: int | None = None
    block_q_dq: int | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"BlockSizes.{f.name} must be a positive int, got {v!r}")

    @property
    def has_backward_blocks(self) -> bool:
        return all(getattr(self, f) is not None for f in _BACKWARD_FIELDS)

    @classmethod
    def get_default(cls, batch_size, num_heads, q_seq_len, kv_len, d_model) -> "BlockSizes":
        """128-wide tiles (the MXU edge), shrunk to short sequences."""
        bq, bk = min(128, q_seq_len), min(128, kv_len)
        return cls(block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
                   block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq,
                   block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq)

    @classmethod
    def from_config(cls, config, batch_size, num_heads, q_seq_len, kv_len, d_model) -> "BlockSizes":
        """A config dict's block fields (other keys ignored); an empty one gives the
        defaults, missing backward fields fall back to the forward ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in dict(config or {}).items() if k in names}
        if not given:
            return cls.get_default(batch_size, num_heads, q_seq_len, kv_len, d_model)
        base = cls.get_default(batch_size, num_heads, q_seq_len, kv_len, d_model)
        fwd = {f: given.get(f, getattr(base, f)) for f in ("block_q", "block_k_major", "block_k", "block_b")}
        fallback = {"block_q_major_dkv": fwd["block_q"], "block_k_major_dkv": fwd["block_k_major"],
                    "block_k_dkv": fwd["block_k"], "block_q_dkv": fwd["block_q"],
                    "block_k_major_dq": fwd["block_k_major"], "block_k_dq": fwd["block_k"],
                    "block_q_dq": fwd["block_q"]}
        bwd = {f: given.get(f) if given.get(f) is not None else fallback[f] for f in _BACKWARD_FIELDS}
        return cls(**fwd, **bwd)


class SegmentIds(NamedTuple):
    """Segment ids of packed sequences: query i sees key j only when q[i] == kv[j]."""
    q: Any   # [batch, q_seq] int32
    kv: Any  # [batch, kv_seq] int32

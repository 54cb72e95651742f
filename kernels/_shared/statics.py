"""Static-argument normalizers that several kernels' specs use (no jax import): each maps a
user value to its canonical, msgpack-able form or raises ValueError saying what is
expected."""
from __future__ import annotations

import math


def norm_bool(name):
    def norm(v):
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be true or false, got {v!r}")
        return v
    return norm


def norm_positive_float(name):
    def norm(v):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"{name} must be a positive number or none, got {v!r}")
        return float(v)
    return norm


def norm_scale(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"softmax_scale must be a finite number or none, got {v!r}")
    return float(v)


def norm_window(v):
    """int w -> [w, w]; (left, right) -> [left, right]; none -> none."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
        return [int(v[0]), int(v[1])]
    raise ValueError(f"sliding_window must be a non-negative int or [left, right], got {v!r}")

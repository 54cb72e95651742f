"""Gluon device functions the Hopper kernels share (flash_attention's gluon_sm90.py and
the MLA decode kernels of mla_triton.py). Importable without Gluon (older triton, or
none): the functions then cannot lower."""
from __future__ import annotations

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    _gluon_jit = gluon.jit
except ImportError:  # pragma: no cover - older triton, or none
    gluon = gl = None

    def _gluon_jit(fn):
        return fn


@_gluon_jit
def zero_tail(tile, n_valid, BLOCK_N: gl.constexpr, W: gl.constexpr, L: gl.constexpr):
    """Zeroes rows n_valid.. of a landed [BLOCK_N, W] shared-memory tile (the rows of the
    last K/V block past the valid keys), in column blocks of 64 to keep registers low; L:
    the register layout the blocks pass through. Those rows get zero weight, but they may
    hold anything (a padded or paged cache's rows past a context: stale or never written)
    and 0 * NaN in p @ V is NaN, so their values must go."""
    CW: gl.constexpr = 64 if W >= 64 else W
    keep = (gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, L)) < n_valid)[:, None]
    for c in gl.static_range(W // CW):
        part = tile.slice(c * CW, CW, dim=1)
        part.store(gl.where(keep, part.load(L), 0.0).to(tile.dtype))

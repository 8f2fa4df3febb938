"""Window sort keys for flattened-window attention (FlatFormer), following the authors' code
(mit-han-lab/flatformer, mmdet3d/models/middle_encoders/flatformer.py: `get_window_coors_shift`
and `FlattenedWindowMapping`).

Points of a batch are flat: N token slots, each with a sample id (-1 for an empty slot) and an
integer voxel coordinate (x, y) on a bird's-eye grid of shape (nx, ny). With the window shape
(wx, wy) and `shift` adding (wx // 2, wy // 2) to the coordinates first,
    x1, x2 = divmod(x, wx)   (window column, column inside the window)
    y1, y2 = divmod(y, wy)
and windows per axis nwx = ceil(nx / wx) + 1, nwy = ceil(ny / wy) + 1 (the authors' "+1" leaves
room for the shifted windows). The authors pack everything into one integer,
    vx = (2nwx * y1 + (-1)^y1 * x1) * 4wx*wy + (-1)^y1 * (2wy * x2 + (-1)^x2 * y2)
         + sample * nx * ny * 10
    vy = (2nwy * x1 + (-1)^x1 * y1) * 4wx*wy + (-1)^x1 * (2wx * y2 + (-1)^y2 * x2)
         + sample * nx * ny * 10
(their n1, m1, n2, m2 are returned doubled, which keeps the signed terms from overlapping), and
argsort it. Sorting vx is the same as sorting lexicographically by
    sample,
    row     = y1                                                  (rows of windows),
    across  = x1 if y1 even else nwx - 1 - x1                     (snake across windows),
    inside  = x2 * wy + (y2 if x2 even else wy - 1 - y2),  reversed (wx*wy - 1 - inside) when y1
              is odd                                             (snake inside the window),
and vy the same with the roles of x and y swapped. These four keys are what `window_sort_keys`
returns: each stays below the windows along one axis or the cells of one window, so no grid is
large enough to overflow int32, while the authors' packed sum does (and their sample offset
nx*ny*10 only separates samples when the windows are small against the grid). `window_order`
packs (row, across, inside) into one int32 key when that cannot overflow (it sorts faster).

axis='x' is the authors' "x" mapping (vx): consecutive windows step along x, and rows of windows
follow each other along y; axis='y' (vy) steps windows along y.

Coordinates must lie in [0, nx) x [0, ny) (not checked: the keys are computed under jit). Slots
with a negative sample id sort after every real token, in their original order; ties (two tokens
on the same voxel) keep their original order (the sort is stable, unlike the authors' torch.sort).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

AXES = ("x", "y")
PADDING_SAMPLE_KEY = jnp.iinfo(jnp.int32).max


def _check(coords, sample_ids, grid_shape, window_shape, axis):
    if getattr(coords, "ndim", None) != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be an int array [N, 2] of (x, y) voxel coordinates; got "
                         f"shape {getattr(coords, 'shape', type(coords))}")
    if getattr(sample_ids, "shape", None) != (coords.shape[0],):
        raise ValueError(f"sample_ids must be [N]={coords.shape[0],} to match coords{coords.shape}; "
                         f"got {getattr(sample_ids, 'shape', type(sample_ids))}")
    for name, x in (("coords", coords), ("sample_ids", sample_ids)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be an integer array; got {x.dtype}")
    for name, shape in (("grid_shape", grid_shape), ("window_shape", window_shape)):
        if (not isinstance(shape, Sequence) or len(shape) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise ValueError(f"{name} must be two positive ints (x, y); got {shape!r}")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}; got {axis!r}")


def _snake(i, n, odd):
    """i when `odd` is False, n - 1 - i when it is True (a reversed row)."""
    return jnp.where(odd, n - 1 - i, i)


def window_sort_keys(coords, sample_ids, *, grid_shape, window_shape, axis="x", shift=False):
    """(sample, row, across, inside): int32 [N] keys; sorting by them lexicographically gives
    FlatFormer's order (see the module docstring). Padding slots (sample id < 0) get sample key
    int32 max and zeros for the others."""
    _check(coords, sample_ids, grid_shape, window_shape, axis)
    (nx, ny), (wx, wy) = grid_shape, window_shape
    coords = coords.astype(jnp.int32)
    x, y = coords[:, 0], coords[:, 1]
    if shift:
        x, y = x + wx // 2, y + wy // 2
    nwx, nwy = math.ceil(nx / wx) + 1, math.ceil(ny / wy) + 1
    x1, x2 = x // wx, x % wx
    y1, y2 = y // wy, y % wy
    if axis == "x":
        odd_row = y1 % 2 == 1
        row, across = y1, _snake(x1, nwx, odd_row)
        inside = _snake(x2 * wy + _snake(y2, wy, x2 % 2 == 1), wx * wy, odd_row)
    else:
        odd_col = x1 % 2 == 1
        row, across = x1, _snake(y1, nwy, odd_col)
        inside = _snake(y2 * wx + _snake(x2, wx, y2 % 2 == 1), wx * wy, odd_col)
    real = sample_ids >= 0
    sample = jnp.where(real, sample_ids.astype(jnp.int32), PADDING_SAMPLE_KEY)
    zero = jnp.zeros_like(inside)
    return (sample,) + tuple(jnp.where(real, key, zero) for key in (row, across, inside))


def window_order(coords, sample_ids, *, grid_shape, window_shape, axis="x", shift=False):
    """int32 permutation [N]: token slots in FlatFormer's window order (samples in ascending id,
    each sample's tokens contiguous, padding slots last); `x[order]` is the sorted sequence."""
    keys = window_sort_keys(coords, sample_ids, grid_shape=grid_shape, window_shape=window_shape,
                            axis=axis, shift=shift)
    sample, row, across, inside = keys
    (nx, ny), (wx, wy) = grid_shape, window_shape
    per_row = math.ceil((nx if axis == "x" else ny) / (wx if axis == "x" else wy)) + 1
    windows = (math.ceil(nx / wx) + 1) * (math.ceil(ny / wy) + 1)
    if windows * wx * wy <= jnp.iinfo(jnp.int32).max:
        # Fewer keys sort faster: (row, across, inside) packed into one int32 when it cannot
        # overflow.
        keys = (sample, (row * per_row + across) * (wx * wy) + inside)
    iota = jnp.arange(coords.shape[0], dtype=jnp.int32)
    # A stable lexicographic sort by the keys; the iota rides along and comes out as the order.
    *_, order = jax.lax.sort(keys + (iota,), num_keys=len(keys), is_stable=True)
    return order

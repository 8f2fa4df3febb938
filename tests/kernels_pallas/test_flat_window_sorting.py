"""Window sort keys and order (FlatFormer) against plain numpy written from the authors' code
(mit-han-lab/flatformer: get_window_coors_shift, FlattenedWindowMapping), on random clouds."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.flat_window_attention import window_order, window_sort_keys


def authors_packed_key(x, y, sample, grid_shape, window_shape, axis, shift):
    """vx / vy of FlattenedWindowMapping.forward for one token, in Python ints (no overflow).

    The authors add sample * nx * ny * 10; here the offset is 10**15, which separates samples
    for any window shape (theirs only does when windows are small against the grid)."""
    nx, ny = grid_shape
    n2, m2 = window_shape
    n1, m1 = int(np.ceil(nx / n2) + 1), int(np.ceil(ny / m2) + 1)
    if shift:
        x, y = x + n2 // 2, y + m2 // 2
    x1, y1, x2, y2 = x // n2, y // m2, x % n2, y % m2
    n2, m2, n1, m1 = 2 * n2, 2 * m2, 2 * n1, 2 * m1  # get_window_coors_shift returns them doubled
    if axis == "x":
        v = (n1 * y1 + (-1) ** y1 * x1) * n2 * m2 + (-1) ** y1 * (m2 * x2 + (-1) ** x2 * y2)
    else:
        v = (m1 * x1 + (-1) ** x1 * y1) * m2 * n2 + (-1) ** x1 * (n2 * y2 + (-1) ** y2 * x2)
    return v + sample * 10 ** 15


def numpy_keys(coords, sample_ids, grid_shape, window_shape, axis, shift):
    """(sample, row, across, inside) per token by loops and if/else: the snake orders spelled
    out."""
    nx, ny = grid_shape
    wx, wy = window_shape
    nwx, nwy = math.ceil(nx / wx) + 1, math.ceil(ny / wy) + 1
    keys = []
    for (x, y), s in zip(coords.tolist(), sample_ids.tolist()):
        if s < 0:
            keys.append((2 ** 31 - 1, 0, 0, 0))
            continue
        if shift:
            x, y = x + wx // 2, y + wy // 2
        x1, x2, y1, y2 = x // wx, x % wx, y // wy, y % wy
        if axis == "x":  # rows of windows along y; inside a row, x forwards on even rows
            row, across = y1, (x1 if y1 % 2 == 0 else nwx - 1 - x1)
            inside = x2 * wy + (y2 if x2 % 2 == 0 else wy - 1 - y2)
            if y1 % 2 == 1:
                inside = wx * wy - 1 - inside
        else:
            row, across = x1, (y1 if x1 % 2 == 0 else nwy - 1 - y1)
            inside = y2 * wx + (x2 if y2 % 2 == 0 else wx - 1 - x2)
            if x1 % 2 == 1:
                inside = wx * wy - 1 - inside
        keys.append((s, row, across, inside))
    return np.array(keys, np.int64).T


def random_cloud(rng, counts, grid_shape, padding):
    """Slots of len(counts) samples (counts[s] points each, duplicate voxels possible) and
    `padding` slots with id -1 and garbage coordinates, shuffled together."""
    sid = np.concatenate([np.full(c, s) for s, c in enumerate(counts)] + [np.full(padding, -1)])
    coords = np.stack([rng.integers(0, grid_shape[0], sid.size),
                       rng.integers(0, grid_shape[1], sid.size)], 1)
    coords[sid < 0] = rng.integers(-50, 10 ** 6, (int((sid < 0).sum()), 2))
    perm = rng.permutation(sid.size)
    return coords[perm].astype(np.int32), sid[perm].astype(np.int32)


CASES = [  # grid_shape, window_shape, counts per sample, padding slots
    ((20, 17), (5, 4), [40, 0, 1, 97], 13),
    ((64, 64), (13, 13), [300, 250], 0),
    ((31, 9), (3, 7), [5, 120, 60], 7),
    ((12, 40), (1, 1), [80], 3),
    ((9, 9), (9, 9), [30, 30, 2], 5),   # one window covers the grid (two when shifted)
]


@pytest.fixture(scope="module")
def jitted():
    fns = {}

    def get(grid, window, axis, shift):
        key = (grid, window, axis, shift)
        if key not in fns:
            kw = dict(grid_shape=grid, window_shape=window, axis=axis, shift=shift)
            fns[key] = jax.jit(lambda c, s: (window_sort_keys(c, s, **kw), window_order(c, s, **kw)))
        return fns[key]
    return get


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("shift", [False, True])
def test_keys_and_order_match_numpy_and_the_authors(jitted, case, axis, shift):
    grid, window, counts, padding = CASES[case]
    rng = np.random.default_rng([case, axis == "y", shift])
    coords, sid = random_cloud(rng, counts, grid, padding)
    keys, order = jitted(grid, window, axis, shift)(jnp.asarray(coords), jnp.asarray(sid))
    want = numpy_keys(coords, sid, grid, window, axis, shift)
    assert all(k.dtype == jnp.int32 for k in keys)
    np.testing.assert_array_equal(np.stack([np.asarray(k) for k in keys]), want)
    # Stable lexicographic order: np.lexsort sorts by its last key first.
    want_order = np.lexsort((np.arange(sid.size),) + tuple(want[::-1]))
    np.testing.assert_array_equal(np.asarray(order), want_order)
    # The authors' packed key gives the same order on real tokens (stable on ties), and
    # padding slots come last in their original order.
    real = np.flatnonzero(sid >= 0)
    packed = np.array([authors_packed_key(int(x), int(y), int(s), grid, window, axis, shift)
                       for (x, y), s in zip(coords[real], sid[real])], dtype=object)
    authors = real[sorted(range(real.size), key=lambda i: (packed[i], real[i]))]
    np.testing.assert_array_equal(np.asarray(order)[:real.size], authors)
    np.testing.assert_array_equal(np.asarray(order)[real.size:], np.flatnonzero(sid < 0))
    assert sorted(np.asarray(order).tolist()) == list(range(sid.size))


def test_snake_order_visits_neighbouring_windows_and_cells():
    """On a full grid, consecutive tokens in the order are never far apart: the snake never
    jumps across a row of windows (and inside a window never across a row of cells)."""
    grid, window = (12, 10), (4, 5)
    xs, ys = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    coords = jnp.asarray(np.stack([xs.ravel(), ys.ravel()], 1), jnp.int32)
    sid = jnp.zeros(coords.shape[0], jnp.int32)
    for axis in ("x", "y"):
        order = np.asarray(window_order(coords, sid, grid_shape=grid, window_shape=window, axis=axis))
        path = np.asarray(coords)[order]
        step = np.abs(np.diff(path, axis=0)).sum(1)
        assert step.max() <= 1 + max(window), (axis, step.max())
        assert (step == 1).mean() > 0.9


def test_int32_keys_do_not_overflow_on_huge_grids():
    grid, window = (200_000, 200_000), (1, 1)   # 4e10 windows: the authors' packed key overflows
    coords = jnp.asarray([[199_999, 199_999], [0, 0], [199_999, 0], [5, 199_998]], jnp.int32)
    sid = jnp.zeros(4, jnp.int32)
    for axis in ("x", "y"):
        keys = window_sort_keys(coords, sid, grid_shape=grid, window_shape=window, axis=axis)
        want = numpy_keys(np.asarray(coords), np.asarray(sid), grid, window, axis, False)
        np.testing.assert_array_equal(np.stack([np.asarray(k) for k in keys]), want)
        order = window_order(coords, sid, grid_shape=grid, window_shape=window, axis=axis)
        np.testing.assert_array_equal(np.asarray(order), np.lexsort(tuple(want[::-1])))


@pytest.mark.parametrize("kwargs, message", [
    (dict(coords=jnp.zeros((4, 3), jnp.int32)), r"coords must be an int array \[N, 2\]"),
    (dict(coords=jnp.zeros((4, 2))), "coords must be an integer array"),
    (dict(sample_ids=jnp.zeros((5,), jnp.int32)), r"sample_ids must be \[N\]"),
    (dict(grid_shape=(10,)), "grid_shape must be two positive ints"),
    (dict(window_shape=(0, 3)), "window_shape must be two positive ints"),
    (dict(axis="z"), "axis must be one of"),
])
def test_bad_inputs_name_the_problem(kwargs, message):
    args = dict(coords=jnp.zeros((4, 2), jnp.int32), sample_ids=jnp.zeros((4,), jnp.int32),
                grid_shape=(10, 10), window_shape=(3, 3), axis="x")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        window_sort_keys(args.pop("coords"), args.pop("sample_ids"), **args)

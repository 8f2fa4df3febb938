"""FlatFormer's own properties: equivariance to the order of the points, samples and padding that
never mix, empty and single-point samples, the four window orderings, the authors' position
encoding. Shapes, jit, retracing, parameter gradients, init and axes are in test_common.py; every
forward pass here reuses the case's one compiled function (same batch shape)."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.models import flatformer
from fintrans.models.config import ConfigError
from model_cases import _point_clouds, built, config_of, jit

NAME = "flatformer"


def _forward(batch):
    b = built(NAME)
    return np.asarray(b.forward(b.params, batch))


def test_empty_and_single_point_samples_give_finite_outputs_and_zero_padding():
    rng = np.random.default_rng(0)
    batch = _point_clouds(rng, counts=(40, 0, 1))
    out = _forward(batch)
    chex.assert_shape(out, (3, 40, 5))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[~batch["mask"]], 0.0)
    assert np.abs(out[batch["mask"]]).min(axis=-1).max() > 0


def test_permuting_points_within_each_sample_permutes_the_outputs():
    rng = np.random.default_rng(1)
    batch = _point_clouds(rng, counts=(40, 0, 23))
    perm = np.stack([rng.permutation(40) for _ in range(3)])  # real and padding slots alike
    permuted = {k: np.take_along_axis(v, perm.reshape(perm.shape + (1,) * (v.ndim - 2)), axis=1)
                for k, v in batch.items()}
    out, out_p = _forward(batch), _forward(permuted)
    expected = np.take_along_axis(out, perm[..., None], axis=1)
    np.testing.assert_allclose(out_p, expected, atol=2e-5, rtol=2e-5)
    assert not np.allclose(out_p, out, atol=1e-3)  # the permutation did move points


def test_padding_rows_do_not_affect_real_rows():
    rng = np.random.default_rng(2)
    batch = _point_clouds(rng, counts=(40, 0, 17))
    junk = dict(batch)
    pad = ~batch["mask"]
    junk["points"] = np.where(pad[..., None], 1e4 * rng.normal(size=batch["points"].shape), batch["points"]
                              ).astype(np.float32)
    junk["coords"] = np.where(pad[..., None], rng.integers(-100, 10_000, batch["coords"].shape),
                              batch["coords"]).astype(np.int32)
    out, out_junk = _forward(batch), _forward(junk)
    np.testing.assert_allclose(out_junk, out, atol=1e-6)
    np.testing.assert_array_equal(out_junk[pad], 0.0)


def test_samples_do_not_interact():
    rng = np.random.default_rng(3)
    batch = _point_clouds(rng, counts=(40, 0, 1))
    other = _point_clouds(rng, counts=(25, 0, 1))
    other["points"][2], other["coords"][2] = batch["points"][2], batch["coords"][2]
    out, out_other = _forward(batch), _forward(other)
    np.testing.assert_allclose(out_other[2], out[2], atol=1e-6)  # the lone point sees only itself
    assert not np.allclose(out_other[0, :25], out[0, :25], atol=1e-3)


def test_one_compile_for_any_point_counts():
    b = built(NAME)  # forward is wrapped in chex.assert_max_traces(n=1)
    rng = np.random.default_rng(4)
    for counts in ((40, 40, 40), (1, 0, 0), (0, 0, 0), (17, 33, 2)):
        out = _forward(_point_clouds(rng, counts=counts))
        assert np.isfinite(out).all()


@functools.lru_cache(maxsize=None)
def _input_grad():
    b = built(NAME)

    def loss(points, batch, weights):
        return jnp.sum(b.model.apply(b.params, {**batch, "points": points}) * weights)

    return jit(jax.grad(loss))


def test_input_gradients_are_finite_and_zero_on_padding():
    rng = np.random.default_rng(5)
    batch = _point_clouds(rng, counts=(40, 0, 1))
    weights = rng.normal(size=(3, 40, 5)).astype(np.float32)
    g = np.asarray(_input_grad()(batch["points"], batch, weights))
    assert np.isfinite(g).all()
    np.testing.assert_array_equal(g[~batch["mask"]], 0.0)
    assert np.abs(g[batch["mask"]]).sum(-1).min() > 0  # every real point, the lone one included


def test_each_ordering_groups_the_points_differently():
    cfg = config_of(NAME)
    rng = np.random.default_rng(6)
    batch = _point_clouds(rng, counts=(40, 0, 23))

    def plans_of(batch):
        coords, sample_ids = flatformer.flatten_points(batch)
        return sample_ids, flatformer.group_plans(cfg, coords, sample_ids, 3)

    sample_ids, plans = jit(plans_of)(batch)
    sample_ids = np.asarray(sample_ids)
    assert list(plans) == ["x", "x_shift", "y", "y_shift"]
    real = np.flatnonzero(sample_ids >= 0)
    groups = {}
    for name, plan in plans.items():
        gather = np.asarray(plan.gather_index).reshape(plan.num_groups, plan.group_size)
        # Samples are laid out in order: sample 0's 40 points fill the first three groups of 16 (the
        # last completed by repeats), sample 2's 23 points the next two.
        mine = [frozenset(row) for row in gather[:3]]
        assert all(np.all(sample_ids[list(g)] == 0) for g in mine) and frozenset().union(*mine) == frozenset(range(40))
        assert np.all(sample_ids[gather[3:5]] == 2)
        groups[name] = frozenset(mine)
        np.testing.assert_array_equal(  # every real token is read back from a copy of itself
            np.asarray(plan.gather_index)[np.asarray(plan.scatter_index)[real]], real)
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert groups[a] != groups[b], f"orderings {a} and {b} give the same groups"


def _authors_position_encoding(coords, feat_dim, temperature=10000.0, sparse_shape=None):
    """numpy port of PositionalEmbedding.forward in mit-han-lab/flatformer."""
    x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    if sparse_shape is not None:
        x = x / sparse_shape[0] * 2 * 3.1415
        y = y / sparse_shape[1] * 2 * 3.1415
    pos_length = (feat_dim // 4) * 2
    inv_freq = temperature ** (2 * (np.arange(pos_length) // 2) / pos_length)
    pex, pey = x[:, None] / inv_freq[None], y[:, None] / inv_freq[None]
    pex = np.stack([np.sin(pex[:, ::2]), np.cos(pex[:, 1::2])], axis=-1).reshape(len(x), -1)
    pey = np.stack([np.sin(pey[:, ::2]), np.cos(pey[:, 1::2])], axis=-1).reshape(len(x), -1)
    pe = np.concatenate([pex, pey], axis=-1)
    return np.pad(pe, ((0, 0), (0, feat_dim - pe.shape[1])))


@pytest.mark.parametrize("features,normalize", [(32, False), (30, False), (128, True)])
def test_position_encoding_matches_the_authors(features, normalize):
    rng = np.random.default_rng(7)
    coords = rng.integers(0, 468, (50, 2)).astype(np.int32)
    grid = (468, 400)
    got = flatformer.position_encoding(jnp.asarray(coords), features, grid_shape=grid if normalize else None)
    want = _authors_position_encoding(coords, features, sparse_shape=grid if normalize else None)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


def test_backbone_only_returns_features():
    b = built(NAME)
    model = flatformer.FlatFormer(config_of(NAME, num_classes=0))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), b.batch)
    assert "head" not in variables["params"]
    out = jax.eval_shape(model.apply, variables, b.batch)
    assert out.shape == (3, 40, 32) and out.dtype == jnp.float32


def test_defaults_follow_the_paper_and_bad_fields_are_named():
    cfg = flatformer.FlatFormerConfig()
    assert (cfg.window_shape, cfg.group_size, cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.num_blocks) == (
        (13, 13), 144, 128, 8, 16, 2)
    with pytest.raises(ConfigError, match="group_size=2048"):
        config_of(NAME, group_size=2048)
    with pytest.raises(ConfigError, match="attention_impl"):
        config_of(NAME, attention_impl="cudnn")
    with pytest.raises(ConfigError, match="attention"):
        config_of(NAME, attention="sst")
    for impl in ("xla", "reference", "xla_dense"):
        assert config_of(NAME, attention_impl=impl).attention_impl == impl


def test_window_layouts_put_each_window_in_its_own_padded_row_and_drop_past_capacity():
    cfg = config_of(NAME, attention="window", window_capacity=3)
    batch = _point_clouds(np.random.default_rng(8), counts=(40, 0, 23))
    coords, sample_ids = flatformer.flatten_points(batch)
    layouts = jit(lambda c, s: flatformer.window_layouts(cfg, c, s, 3))(coords, sample_ids)
    (wx, wy), mask, m = cfg.window_shape, batch["mask"], 3
    w = flatformer.num_windows(cfg)
    assert w == (16 // 4 + 1) ** 2
    for name, _, shift in flatformer.ORDERINGS:
        lay = jax.tree.map(np.asarray, layouts[name])
        cell = (batch["coords"] + (np.array([wx // 2, wy // 2]) if shift else 0)) // np.array([wx, wy])
        for r in range(3):
            real = np.flatnonzero(mask[r])
            # Points of one window, in slot order: the first `m` kept, in that window's padded row.
            want_kept = np.zeros(40, bool)
            rows = {}
            for i in real:
                members = [j for j in real if (cell[r, j] == cell[r, i]).all()]
                want_kept[i] = members.index(i) < m
                rows.setdefault(tuple(cell[r, i]), set()).add(lay.back[r, i] // m if want_kept[i] else None)
            np.testing.assert_array_equal(lay.kept[r], want_kept)
            for ids in rows.values():   # one padded row per window, distinct windows distinct rows
                ids.discard(None)
                assert len(ids) == 1
            assert len({next(iter(v)) for v in rows.values()}) == len(rows)
            np.testing.assert_array_equal(lay.gather[r, lay.back[r, want_kept]], np.flatnonzero(want_kept))
            assert lay.slot_valid[r].sum() == want_kept.sum()
        assert lay.gather.shape == (3, w * m)
    assert not np.asarray(layouts["x"].kept)[0, :40].all()   # capacity 3 drops points here


def test_window_attention_equals_flat_groups_where_the_partitions_coincide():
    """Same parameters; with one window covering each sample (shifted too) and samples of exactly one
    group, both modes are full attention within each sample, so they give the same outputs."""
    flat_cfg = config_of(NAME, window_shape=(32, 32), dropout_rate=0.0)
    window_cfg = config_of(NAME, window_shape=(32, 32), dropout_rate=0.0, attention="window", window_capacity=16)
    assert window_cfg.attention_ops() == ("attention",) and flat_cfg.attention_ops() == ("grouped_attention",)
    batch = _point_clouds(np.random.default_rng(9), counts=(16, 0, 16))
    flat, window = flatformer.FlatFormer(flat_cfg), flatformer.FlatFormer(window_cfg)
    params = built(NAME).params
    shapes = lambda tree: jax.tree.map(jnp.shape, nn.meta.unbox(tree))
    assert shapes(jax.eval_shape(window.init, jax.random.PRNGKey(0), batch)) == shapes(params)
    out_flat = np.asarray(jit(flat.apply)(params, batch))
    out_window = np.asarray(jit(window.apply)(params, batch))
    np.testing.assert_allclose(out_window, out_flat, atol=2e-5, rtol=2e-5)
    # Small windows: padded windows with room for every point equal the uncapped segment-id form,
    # and differ from the flat groups (the partition matters).
    capped = flatformer.FlatFormer(config_of(NAME, attention="window", dropout_rate=0.0, window_capacity=16))
    uncapped = flatformer.FlatFormer(config_of(NAME, attention="window", dropout_rate=0.0))
    out_capped = np.asarray(jit(capped.apply)(params, batch))
    np.testing.assert_allclose(np.asarray(jit(uncapped.apply)(params, batch)), out_capped, atol=2e-5, rtol=2e-5)
    assert not np.allclose(out_capped, out_flat, atol=1e-3)

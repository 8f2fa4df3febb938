"""Shared layers: attention masks (padding, segments, cross), embeddings, norms, MLP, pooling."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import layers


def _init_apply(module, *args, **kwargs):
    variables = module.init(jax.random.PRNGKey(0), *args, **kwargs)
    return variables, module.apply(variables, *args, **kwargs)


def _x(key, shape):
    return jax.random.normal(jax.random.PRNGKey(key), shape)


def test_segment_ids_isolate_packed_sequences():
    attn = layers.MultiHeadAttention(num_heads=4, head_dim=8, num_kv_heads=2)
    x = _x(0, (1, 10, 32))
    segments = jnp.array([[0] * 4 + [1] * 6])
    variables, out = _init_apply(attn, x, segment_ids=segments, causal=True)
    changed = x.at[:, 6:].set(_x(1, (1, 4, 32)))  # edit the second sequence only
    out2 = attn.apply(variables, changed, segment_ids=segments, causal=True)
    chex.assert_trees_all_close(out[:, :4], out2[:, :4], atol=1e-6)  # the first sequence does not see it
    chex.assert_trees_all_close(out[:, 4:6], out2[:, 4:6], atol=1e-6)  # causal: earlier tokens of its own neither
    assert not np.allclose(out[:, 6:], out2[:, 6:])


def test_padding_mask_hides_padded_keys():
    attn = layers.MultiHeadAttention(num_heads=2, head_dim=8)
    x = _x(2, (2, 6, 16))
    valid = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    mask = layers.padding_mask(valid)
    variables, out = _init_apply(attn, x, mask=mask)
    noisy = x.at[0, 4:].set(100.0)
    out2 = attn.apply(variables, noisy, mask=mask)
    chex.assert_trees_all_close(out[0, :4], out2[0, :4], atol=1e-5)
    chex.assert_trees_all_close(out[1], out2[1], atol=1e-6)


def test_cross_attention_reads_the_context():
    attn = layers.MultiHeadAttention(num_heads=2, head_dim=8, out_features=16)
    x, context = _x(3, (2, 5, 16)), _x(4, (2, 7, 12))
    variables, out = _init_apply(attn, x, context)
    chex.assert_shape(out, (2, 5, 16))
    chex.assert_shape(nn.unbox(variables["params"]["key"]["kernel"]), (12, 2, 8))
    out2 = attn.apply(variables, x, context[:, ::-1])  # attention is order-free over the keys
    chex.assert_trees_all_close(out, out2, atol=1e-5)
    assert not np.allclose(out, attn.apply(variables, x, context * 2))


def test_rotary_positions_make_attention_relative():
    q, k = _x(5, (1, 1, 1, 16)), _x(6, (1, 1, 1, 16))
    score = lambda pq, pk: jnp.sum(layers.apply_rotary(q, jnp.array([[pq]])) *
                                   layers.apply_rotary(k, jnp.array([[pk]])))
    np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)  # depends on the offset only
    assert not np.isclose(score(3, 1), score(3, 2))
    np.testing.assert_allclose(jnp.linalg.norm(layers.apply_rotary(q, jnp.array([[7]]))), jnp.linalg.norm(q),
                               rtol=1e-6)


def test_sinusoidal_table_matches_the_paper():
    table = layers.sinusoidal_positions(50, 16)
    pos, i = 17, 3
    np.testing.assert_allclose(table[pos, 2 * i], np.sin(pos / 10_000 ** (2 * i / 16)), rtol=1e-5)
    np.testing.assert_allclose(table[pos, 2 * i + 1], np.cos(pos / 10_000 ** (2 * i / 16)), rtol=1e-5)


def test_norms_normalise():
    x = _x(7, (3, 5, 32)) * 4 + 2
    _, y = _init_apply(layers.LayerNorm(), x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)
    _, r = _init_apply(layers.RMSNorm(), x)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(r ** 2, -1)), 1, atol=1e-3)
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'"):
        layers.make_norm("batchnorm", epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32)


def test_glu_mlp_is_gated():
    mlp = layers.MLP(hidden_dim=24, activation="silu", glu=True)
    x = _x(8, (2, 3, 8))
    variables, y = _init_apply(mlp, x)
    p = variables["params"]
    unbox = lambda name: nn.unbox(p[name]["kernel"])
    expected = (jax.nn.silu(x @ unbox("wi_gate") + nn.unbox(p["wi_gate"]["bias"])) *
                (x @ unbox("wi") + nn.unbox(p["wi"]["bias"]))) @ unbox("wo") + nn.unbox(p["wo"]["bias"])
    chex.assert_trees_all_close(y, expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        _init_apply(layers.MLP(hidden_dim=4, activation="swish2"), x)


def test_pooling_respects_padding():
    x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    valid = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_allclose(layers.pool(x, "mean", valid)[0], x[0, :2].mean(0))
    np.testing.assert_allclose(layers.pool(x, "max", valid)[0], x[0, 1])
    np.testing.assert_allclose(layers.pool(x, "cls"), x[:, 0])


def test_dense_annotates_and_checks_axes():
    dense = layers.Dense((4, 8), ("embed",), ("heads", "head_dim"))
    variables = dense.init(jax.random.PRNGKey(0), jnp.ones((2, 16)))
    assert variables["params"]["kernel"].names == ("embed", "heads", "head_dim")
    with pytest.raises(ValueError, match="out_axes"):
        layers.Dense(4, ("embed",), ("mlp", "heads")).init(jax.random.PRNGKey(0), jnp.ones((2, 16)))

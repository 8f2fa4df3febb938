"""Shared convolutions (against jax.lax's), streaming steps, series utilities, and the injectable matmul."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import layers, models
from fintrans.layers.dense import Dense

X = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 4))


def _reference_conv1d(x, kernel, bias, *, padding, stride, dilation, groups):
    """jax.lax.conv_general_dilated with the padding spelled out (circular: wrapped by hand)."""
    total = (kernel.shape[0] - 1) * dilation
    left = {"causal": total, "valid": 0}.get(padding, total // 2)
    right = 0 if padding == "valid" else total - left
    if padding == "circular":
        x = jnp.concatenate([x[:, x.shape[1] - left:], x, x[:, :right]], axis=1) if total else x
        left = right = 0
    y = jax.lax.conv_general_dilated(x, kernel, (stride,), [(left, right)], rhs_dilation=(dilation,),
                                     feature_group_count=groups, dimension_numbers=("NWC", "WIO", "NWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y + bias


@pytest.mark.parametrize("padding,kernel_size,stride,dilation,groups", [
    ("causal", 3, 1, 1, 1), ("causal", 2, 1, 3, 1), ("same", 4, 1, 1, 1), ("same", 3, 2, 2, 2),
    ("circular", 3, 1, 1, 1), ("valid", 3, 2, 1, 4),  # groups=4=C: depthwise
])
def test_conv1d_equals_lax_conv(padding, kernel_size, stride, dilation, groups):
    conv = layers.Conv1D(8, kernel_size, padding=padding, stride=stride, dilation=dilation, groups=groups)
    variables = conv.init(jax.random.PRNGKey(1), X)
    params = nn.unbox(variables)["params"]
    params = {**params, "bias": jax.random.normal(jax.random.PRNGKey(2), (8,))}
    chex.assert_shape(params["kernel"], (kernel_size, 4 // groups, 8))
    ours = conv.apply({"params": params}, X)
    ref = _reference_conv1d(X, params["kernel"], params["bias"], padding=padding, stride=stride, dilation=dilation,
                            groups=groups)
    chex.assert_trees_all_close(ours, ref, atol=1e-5)
    if padding in ("causal", "same", "circular") and stride == 1:
        assert ours.shape[1] == X.shape[1]


def test_causal_conv_output_depends_only_on_the_past():
    conv = layers.Conv1D(3, 3, padding="causal", dilation=2)
    params = conv.init(jax.random.PRNGKey(3), X[:1])
    # d y[t] / d x[s] for every (t, s): zero above the diagonal, nonzero within the receptive field.
    jac = jax.jacobian(lambda x: conv.apply(params, x).sum(-1))(X[:1])[0, :, 0].sum(-1)  # [t, s]
    jac = np.abs(np.asarray(jac))
    assert (np.triu(jac, 1) == 0).all()
    for t in range(X.shape[1]):
        for s in (t, t - 2, t - 4):
            if s >= 0:
                assert jac[t, s] > 0


def test_causal_conv_steps_equal_the_parallel_call():
    conv = layers.Conv1D(5, 3, padding="causal", dilation=2)
    params = conv.init(jax.random.PRNGKey(4), X)
    full = conv.apply(params, X)
    state = conv.init_state(X.shape[0], X.shape[2])
    outs = []
    for t in range(X.shape[1]):
        state, y = conv.apply(params, state, X[:, t], method=layers.Conv1D.step)
        outs.append(y)
    chex.assert_trees_all_close(jnp.stack(outs, 1), full, atol=1e-6)
    with pytest.raises(ValueError, match="padding='causal'"):
        layers.Conv1D(5, 3, padding="same").init_state(2, 4)


def test_conv_errors_name_the_problem():
    with pytest.raises(ValueError, match="padding 'full'"):
        layers.Conv1D(4, 3, padding="full").init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        layers.Conv1D(6, 3, groups=3).init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="shorter than the kernel"):
        layers.Conv1D(4, 5, padding="valid", dilation=3).init(jax.random.PRNGKey(0), X)


def test_conv2d_equals_conv1d_on_one_row_and_takes_an_injected_convolution():
    calls = []

    def counting_conv(*args, **kwargs):
        calls.append(kwargs["feature_group_count"])
        return jax.lax.conv_general_dilated(*args, **kwargs)

    conv2d = layers.Conv2D(6, (1, 3), padding=((0, 0), (1, 1)), groups=2, conv_general_dilated=counting_conv)
    images = X[:, None]  # [B, 1, W, C]
    params = nn.unbox(conv2d.init(jax.random.PRNGKey(5), images))["params"]
    conv1d = layers.Conv1D(6, 3, padding="same", groups=2)
    ours = conv2d.apply({"params": params}, images)[:, 0]
    chex.assert_trees_all_close(ours, conv1d.apply({"params": {"kernel": params["kernel"][0], "bias": params["bias"]}},
                                                   X), atol=1e-5)
    assert calls and set(calls) == {2}


def test_series_decomp_is_moving_average_plus_remainder():
    seasonal, trend = layers.series_decomp(X, 5)
    chex.assert_trees_all_close(seasonal + trend, X, atol=1e-6)
    # Interior steps: the plain centred mean; the ends repeat the first/last value.
    chex.assert_trees_all_close(trend[:, 2:-2], jnp.stack([X[:, t - 2:t + 3].mean(1) for t in range(2, 9)], 1),
                                atol=1e-6)
    chex.assert_trees_all_close(layers.SeriesDecomp(5).apply({}, X), seasonal)


def _fake_quant(x):
    """Symmetric per-tensor int8 fake quantisation."""
    scale = jnp.max(jnp.abs(x)) / 127.0
    return jnp.round(x / scale) * scale


def fake_quant_dot(lhs, rhs, dimension_numbers, **kwargs):
    return jax.lax.dot_general(_fake_quant(lhs), _fake_quant(rhs), dimension_numbers, **kwargs)


def test_dense_uses_its_dot_general():
    dense = Dense(5, ("embed",), ("mlp",), dot_general=fake_quant_dot)
    x = X[0]
    params = nn.unbox(dense.init(jax.random.PRNGKey(6), x))["params"]
    expected = _fake_quant(x) @ _fake_quant(params["kernel"]) + params["bias"]
    chex.assert_trees_all_close(dense.apply({"params": params}, x), expected, atol=1e-6)
    assert not np.allclose(dense.apply({"params": params}, x), x @ params["kernel"] + params["bias"], atol=1e-5)


def test_injected_dot_general_reaches_every_dense_and_conv_of_a_model():
    cfg = models.get("t2").config.from_dict(dict(max_len=12, num_channels=3, num_classes=4, embed_dim=16,
                                                 conv_kernel_size=3, num_layers=2, num_heads=2, mlp_dim=32))
    model = models.get("t2").module(cfg)
    batch = {"inputs": np.asarray(X[:, :10, :3])}
    params = nn.unbox(model.init(jax.random.PRNGKey(7), batch))
    plain = model.apply(params, batch)

    dots, matmul_layers = [], []

    def counting_fake_quant_dot(*args, **kwargs):
        dots.append(1)
        return fake_quant_dot(*args, **kwargs)

    def count_layers(next_fun, args, kwargs, context):
        if isinstance(context.module, (Dense, layers.Conv1D)) and context.method_name == "__call__":
            matmul_layers.append(context.module.name)
        return next_fun(*args, **kwargs)

    with layers.inject_dot_general(counting_fake_quant_dot), nn.intercept_methods(count_layers):
        quantised = model.apply(params, batch)
    # 1 conv + per block (q, k, v, out, wi, wo) + the head
    assert len(matmul_layers) == 1 + 2 * 6 + 1 and len(dots) == len(matmul_layers)
    relative = float(jnp.abs(quantised - plain).max() / jnp.abs(plain).max())
    assert 0 < relative < 0.1, relative  # int8 rounding moves the logits a little, not wildly
    chex.assert_trees_all_equal(model.apply(params, batch), plain)  # outside the block: the plain matmul again

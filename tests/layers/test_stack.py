"""Block and Stack: scanned == unrolled (outputs and gradients), remat changes memory not values,
looped == repeated application, drop-path and layer scale, per-call keywords reach the token mixer."""
from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import axes, layers

LAYERS = 3
BLOCK = functools.partial(layers.TransformerBlock, num_heads=2, head_dim=4, mlp_dim=16, num_kv_heads=1,
                          norm="rmsnorm", rotary=True, use_bias=False)
X = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
POSITIONS = jnp.broadcast_to(jnp.arange(6), (2, 6))


def _stack(mode="unrolled", remat="none", **kw):
    return layers.Stack(BLOCK, LAYERS, mode=mode, remat_policy=remat, **kw)


@functools.lru_cache(maxsize=None)
def _unrolled_params():
    return nn.unbox(_stack().init(jax.random.PRNGKey(1), X, causal=True, positions=POSITIONS))["params"]


@functools.lru_cache(maxsize=None)
def _loss_and_grad(mode, remat):
    """jitted params -> (outputs, grads of a scalar loss) for a stack of this mode and remat policy."""
    stack = _stack(mode, remat)

    def loss(params):
        y = stack.apply({"params": params}, X, causal=True, positions=POSITIONS)
        return jnp.sum(jnp.sin(y)), y

    return jax.jit(jax.grad(loss, has_aux=True))


def _params(mode):
    per_block = layers.unstack_params(_unrolled_params())
    return layers.stack_params(per_block, mode)


def test_scanned_params_carry_a_leading_layers_axis():
    variables = _stack("scan").init(jax.random.PRNGKey(1), X, causal=True, positions=POSITIONS)
    boxed = variables["params"]["layers"]["attention"]["query"]["kernel"]
    assert boxed.names == (axes.LAYERS, axes.EMBED, axes.HEADS, axes.HEAD_DIM)
    unboxed = jax.tree.map(jnp.shape, nn.unbox(variables)["params"])
    assert unboxed == jax.tree.map(jnp.shape, _params("scan"))


def test_scanned_equals_unrolled_outputs_and_gradients():
    grads_u, y_u = _loss_and_grad("unrolled", "none")(_params("unrolled"))
    grads_s, y_s = _loss_and_grad("scan", "none")(_params("scan"))
    chex.assert_trees_all_close(y_s, y_u, atol=1e-5)
    chex.assert_trees_all_close(layers.unstack_params(grads_s), layers.unstack_params(grads_u), atol=1e-5)
    assert float(jnp.abs(y_u - X).max()) > 1e-2  # the blocks do something


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
@pytest.mark.parametrize("mode", ["unrolled", "scan"])
def test_remat_keeps_outputs_and_gradients(mode, remat):
    grads_ref, y_ref = _loss_and_grad(mode, "none")(_params(mode))
    grads, y = _loss_and_grad(mode, remat)(_params(mode))
    chex.assert_trees_all_close(y, y_ref, atol=1e-6)
    # Recomputing the forward inside the backward lets XLA fuse (and so round) it differently:
    # gradients of magnitude ~4 were seen 2e-6 apart under remat="full" on this machine.
    chex.assert_trees_all_close(grads, grads_ref, rtol=1e-5, atol=1e-6)


def _residual_bytes(remat):
    """Bytes the backward pass keeps from the forward pass (the vjp's residuals, params excluded)."""
    stack, params = _stack("unrolled", remat), _params("unrolled")
    _, vjp = jax.vjp(lambda x: stack.apply({"params": params}, x, causal=True, positions=POSITIONS), X)
    param_ids = {id(p) for p in jax.tree.leaves(params)}
    return sum(r.nbytes for r in jax.tree.leaves(vjp) if id(r) not in param_ids)


def test_remat_keeps_fewer_activations_for_the_backward_pass():
    none, dots, full = (_residual_bytes(r) for r in ("none", "dots", "full"))
    assert full < dots < none, (full, dots, none)


def test_unknown_remat_policy_and_mode_are_named():
    with pytest.raises(ValueError, match="remat policy 'dotz'.*dots_no_batch"):
        _stack(remat="dotz").init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="stack mode 'scanned'.*unrolled"):
        _stack("scanned").init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="loops=2"):
        _stack("scan", loops=2).init(jax.random.PRNGKey(0), X)


def test_looped_equals_one_block_applied_repeatedly():
    loops = 3
    stack = layers.Stack(BLOCK, 1, mode="looped", loops=loops)
    params = nn.unbox(stack.init(jax.random.PRNGKey(2), X, causal=True))["params"]
    assert list(params) == ["loop"] and list(params["loop"]) == ["block_0"]  # one set of weights
    block = BLOCK()
    expected = X
    for _ in range(loops):
        expected = block.apply({"params": params["loop"]["block_0"]}, expected, causal=True)
    chex.assert_trees_all_close(stack.apply({"params": params}, X, causal=True), expected, atol=1e-5)


def test_call_keywords_reach_the_token_mixer_in_every_mode():
    for mode in ("unrolled", "scan"):
        stack, params = _stack(mode), {"params": _params(mode)}
        causal = stack.apply(params, X, causal=True, positions=POSITIONS)
        # Causal: changing the last token leaves the others alone; without causal it does not.
        changed = X.at[:, -1].add(1.0)
        chex.assert_trees_all_close(stack.apply(params, changed, causal=True, positions=POSITIONS)[:, :-1],
                                    causal[:, :-1], atol=1e-5)
        assert not np.allclose(stack.apply(params, changed, positions=POSITIONS)[:, :-1], causal[:, :-1], atol=1e-3)
        # Array keywords (rotary positions) reach the mixer through nn.scan too.
        assert not np.allclose(stack.apply(params, X, causal=True, positions=POSITIONS * 2), causal, atol=1e-3)


def test_drop_path_drops_whole_samples_or_rescales_them():
    x = jnp.ones((64, 5, 3))
    drop = layers.DropPath(0.25)
    chex.assert_trees_all_equal(drop.apply({}, x, deterministic=True), x)
    y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)}))
    per_sample = y.reshape(64, -1)
    dropped = (per_sample == 0).all(1)
    kept = np.isclose(per_sample, 1 / 0.75).all(1)
    assert (dropped | kept).all()  # nothing in between: a sample's branch goes or stays whole
    assert 0 < dropped.sum() < 64


class _Scale(nn.Module):
    """A token mixer with a known output: 2x (so a block's branch is visible)."""

    def __call__(self, x, *, deterministic=True):
        return 2.0 * x


def test_block_drop_path_and_layer_scale():
    block = layers.Block(token_mixer=_Scale, norm=None, layer_scale_init=0.1, drop_path_rate=0.5)
    x = jnp.ones((32, 4, 3))
    variables = block.init(jax.random.PRNGKey(0), x)
    chex.assert_trees_all_close(nn.unbox(variables)["params"]["token_mixer_layer_scale"], jnp.full((3,), 0.1))
    chex.assert_trees_all_close(block.apply(variables, x), x * 1.2)  # x + 0.1 · 2x; no drop-path at eval
    y = np.asarray(block.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}))
    per_sample = y.reshape(32, -1)
    dropped, kept = np.isclose(per_sample, 1.0).all(1), np.isclose(per_sample, 1.0 + 0.2 / 0.5).all(1)
    assert (dropped | kept).all() and 0 < dropped.sum() < 32


def test_block_post_norm_and_custom_norm_factory():
    calls = []

    class Halve(nn.Module):
        def __call__(self, x):
            calls.append(self.name)
            return x / 2

    block = layers.Block(token_mixer=_Scale, norm=Halve, norm_position="post")
    x = jnp.ones((1, 2, 3))
    chex.assert_trees_all_close(block.apply({}, x), (x + 2 * x) / 2)
    assert calls == ["token_mixer_norm"]
    with pytest.raises(ValueError, match="norm_position 'middle'"):
        layers.Block(token_mixer=_Scale, norm_position="middle").apply({}, x)


@pytest.mark.parametrize("mode", ["scan", "looped"])
def test_kv_cache_decoding_matches_the_full_forward_pass(mode):
    """Token-by-token decoding through the stack's 'cache' collection (stacked per layer, or per pass when
    looped) gives the causal forward pass's outputs."""
    loops, num_layers = (2, 1) if mode == "looped" else (1, LAYERS)
    full = layers.Stack(BLOCK, num_layers, mode=mode, loops=loops)
    decoding = layers.Stack(functools.partial(BLOCK, decode=True), num_layers, mode=mode, loops=loops)
    params = nn.unbox(jax.jit(functools.partial(full.init, causal=True))(jax.random.PRNGKey(3), X))["params"]
    cache = jax.eval_shape(decoding.init, jax.random.PRNGKey(3), X)["cache"]  # sized by the longest input
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
    assert jax.tree.leaves(cache)[0].shape[0] == (loops if mode == "looped" else num_layers)
    step = jax.jit(lambda c, x: decoding.apply({"params": params, "cache": c}, x, mutable=["cache"]))
    outs = []
    for t in range(X.shape[1]):
        y, updates = step(cache, X[:, t:t + 1])
        cache = updates["cache"]
        outs.append(y)
    expected = jax.jit(functools.partial(full.apply, causal=True))({"params": params}, X)
    chex.assert_trees_all_close(jnp.concatenate(outs, 1), expected, atol=1e-5)


def test_weight_decay_mask_sees_through_the_layers_axis():
    """Biases and norm scales are rank 1 per block; scanned they are [layers, d] and must still be excluded."""
    from fintrans.train.optim import _decay_mask
    unrolled, scanned = _decay_mask(_params("unrolled")), _decay_mask(_params("scan"))
    assert scanned["layers"] == unrolled["block_0"]
    assert not scanned["layers"]["attention_norm"]["scale"] and scanned["layers"]["mlp"]["wi"]["kernel"]


def test_pooling_mixer_averages_neighbours_minus_the_token():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 3))
    y = layers.PoolingMixer(3).apply({}, x)
    expected = jnp.stack([x[:, max(t - 1, 0):t + 2].mean(1) for t in range(5)], 1) - x  # edges: padding not counted
    chex.assert_trees_all_close(y, expected, atol=1e-6)
    images = jax.random.normal(jax.random.PRNGKey(5), (1, 4, 4, 2))
    chex.assert_trees_all_close(layers.PoolingMixer(3).apply({}, images)[0, 1, 2],
                                images[0, :3, 1:4].mean((0, 1)) - images[0, 1, 2], atol=1e-6)


def test_token_mixing_mlp_block_mixes_across_tokens():
    block = layers.Block(token_mixer=functools.partial(layers.TokenMixingMLP, 8),
                         channel_mixer=functools.partial(layers.MLP, 16), norm="layernorm")
    params = block.init(jax.random.PRNGKey(6), X)
    assert nn.unbox(params)["params"]["token_mixer"]["token_wi"]["kernel"].shape == (X.shape[1], 8)
    jac = jax.jacobian(lambda x: block.apply(params, x)[0, 0].sum())(X)[0]  # d out[token 0] / d x[every token]
    assert (jnp.abs(jac).sum(-1) > 0).all()  # token 0 sees every token

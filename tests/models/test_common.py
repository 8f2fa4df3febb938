"""Properties every registered model must have: shapes, jit, tracing, gradients, init, registry,
config validation, input validation and logical axes."""
from __future__ import annotations

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fintrans.models as models
from fintrans import axes
from fintrans.models.config import AttentionConfig, ConfigError, ModelConfig
from model_cases import CASES, built, config_of, grad_fn, jit, train_fn

NAMES = sorted(CASES)
# Models whose configs carry attention_impl: those that run an attention op.
ATTENTION_NAMES = [n for n in NAMES if issubclass(models.get(n).config, AttentionConfig)]
AXIS_NAMES = {v for k, v in vars(axes).items() if k.isupper() and isinstance(v, str)}


def test_every_registered_model_has_a_case():
    assert set(models.names()) == set(CASES), (
        "add a case to tests/models/model_cases.py for every registered model")


@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name):
    b = built(name)
    out = b.forward(b.params, b.batch)
    chex.assert_shape(out, b.case.output_shape)
    assert out.dtype == jnp.float32
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager(name):
    b = built(name)
    eager = b.model.apply(b.params, b.batch)
    chex.assert_trees_all_close(b.forward(b.params, b.batch), eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_no_retrace_on_same_shapes(name):
    b = built(name)  # forward is wrapped in chex.assert_max_traces(n=1)
    rng = np.random.default_rng(1)
    outs = [b.forward(b.params, b.case.make_batch(rng)) for _ in range(3)]
    assert not np.allclose(outs[0], outs[1]), "different inputs should give different outputs"


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_and_reach_every_parameter(name):
    b = built(name)
    loss, grads = grad_fn(name)(b.params, b.batch, jax.random.PRNGKey(1))
    assert np.isfinite(loss)
    chex.assert_trees_all_equal_structs(grads, b.params)
    chex.assert_tree_all_finite(grads)
    unused = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
              if not np.any(np.asarray(g))]
    assert not unused, f"{name}: parameters with zero gradient: {unused}"


@pytest.mark.parametrize("name", NAMES)
def test_dropout_active_only_in_training(name):
    b = built(name)
    eval_out = b.forward(b.params, b.batch)
    train = train_fn(name)
    if not b.case.uses_dropout:  # no dropout anywhere: training mode changes nothing
        assert "dropout_rate" not in b.config.field_names()
        chex.assert_trees_all_close(train(b.params, b.batch, jax.random.PRNGKey(0)), eval_out, atol=1e-6)
        return
    assert b.config.dropout_rate > 0
    out0, out1 = (train(b.params, b.batch, jax.random.PRNGKey(seed)) for seed in (0, 1))
    assert not np.allclose(out0, eval_out, atol=1e-4)
    assert not np.allclose(out0, out1, atol=1e-4)
    chex.assert_trees_all_close(train(b.params, b.batch, jax.random.PRNGKey(0)), out0)  # same rng, same mask


@pytest.mark.parametrize("name", NAMES)
def test_init_is_deterministic(name):
    b = built(name)
    again = nn.unbox(b.init(jax.random.PRNGKey(0), b.batch))
    chex.assert_trees_all_equal(again, b.params)
    other = nn.unbox(b.init(jax.random.PRNGKey(1), b.batch))
    chex.assert_trees_all_equal_shapes_and_dtypes(other, b.params)
    random_leaves = [(p, a, o) for (p, a), o in zip(jax.tree_util.tree_leaves_with_path(b.params),
                                                     jax.tree.leaves(other))
                     if np.unique(np.asarray(a)).size > 1]  # skip constant inits (norm scales, zero biases)
    assert random_leaves
    same = [jax.tree_util.keystr(p) for p, a, o in random_leaves if np.array_equal(a, o)]
    assert not same, f"{name}: leaves identical across init rngs: {same}"


@pytest.mark.parametrize("name", NAMES)
def test_parameters_carry_logical_axes(name):
    b = built(name)
    leaves = jax.tree.leaves(b.variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), f"{name}: a parameter without logical axes: {leaf}"
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= AXIS_NAMES | {None}, leaf.names
        named = [n for n in leaf.names if n is not None]
        assert len(named) == len(set(named)), f"{name}: a logical axis repeats in {leaf.names}"
    # Every annotation must resolve to mesh axes under the default rules (what sharded init does).
    for leaf in leaves:
        nn.logical_to_mesh_axes(leaf.names, axes.DEFAULT_RULES)


def test_only_models_with_attention_have_attention_impl():
    without = {"autoformer", "dlinear", "lmuformer", "nlinear", "sansformer"}
    assert set(NAMES) - set(ATTENTION_NAMES) == without
    for name in NAMES:
        assert ("attention_impl" in models.get(name).config.field_names()) == (name in ATTENTION_NAMES)


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_blockwise_attention_gives_the_dense_outputs(name):
    """The config's attention_impl reaches every attention layer (masks and all)."""
    b = built(name)  # the case's default: dense at these lengths
    assert b.config.attention_impl is None
    model = models.get(name).module(config_of(name, attention_impl="xla_blockwise"))
    np.testing.assert_allclose(jit(model.apply)(b.params, b.batch), b.forward(b.params, b.batch),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_low_precision_config_traces(name):
    b = built(name)
    cfg = b.config.replace(dtype="bfloat16", param_dtype="bfloat16")
    model = models.get(name).module(cfg)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), b.batch)
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype(jnp.bfloat16)}
    out = jax.eval_shape(model.apply, nn.unbox(variables), b.batch)
    assert out.shape == b.case.output_shape and out.dtype == jnp.float32


# --- registry and config validation ---

@pytest.mark.parametrize("name", NAMES)
def test_registry_round_trip(name):
    spec = models.get(name)
    cfg_cls, module_cls = spec.config, spec.module
    assert issubclass(cfg_cls, ModelConfig) and issubclass(module_cls, nn.Module)
    assert {"dtype", "param_dtype"} <= set(cfg_cls.field_names())
    cfg = config_of(name)
    assert isinstance(cfg, cfg_cls) and cfg.replace() == cfg
    built_model = models.build(name, CASES[name].config)
    assert type(built_model) is module_cls and built_model.config == cfg
    default = cfg_cls()  # defaults are valid
    assert cfg_cls.from_dict({}) == default


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(ConfigError, match="no_such_model") as err:
        models.get("no_such_model")
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_field_is_named(name):
    cfg_cls = models.get(name).config
    with pytest.raises(ConfigError, match="bogus_field") as err:
        cfg_cls.from_dict({**CASES[name].config, "bogus_field": 1})
    assert "valid fields" in str(err.value)
    with pytest.raises(ConfigError, match="bogus_field"):
        models.build(name, {"bogus_field": 1})


@pytest.mark.parametrize("name", NAMES)
def test_bad_config_values_are_named(name):
    cfg_cls = models.get(name).config
    extra = (("attention_impl", "flash"),) if name in ATTENTION_NAMES else ()
    for field, value in CASES[name].bad_values + (("dtype", "float8"),) + extra:
        with pytest.raises(ConfigError, match=re.escape(field)):
            cfg_cls.from_dict({**CASES[name].config, field: value})


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_shapes_raise(name):
    b = built(name)
    for batch, fragments in b.case.bad_inputs:
        with pytest.raises(ValueError) as err:
            jax.eval_shape(b.model.apply, b.params, batch)
        msg = str(err.value)
        for fragment in (name + ":",) + fragments:
            assert fragment in msg, f"{fragment!r} not in error message {msg!r}"

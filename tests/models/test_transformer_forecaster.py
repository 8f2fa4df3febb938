"""transformer_forecaster: batch permutation, both heads, every input step reaches every output."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from fintrans.models import transformer_forecaster as tf
from model_cases import built, config_of, jit

NAME = "transformer_forecaster"


def test_permuting_the_batch_permutes_the_forecasts():
    b = built(NAME)
    perm = np.array([1, 2, 0])
    out = b.forward(b.params, b.batch)
    permuted = b.forward(b.params, {"inputs": np.asarray(b.batch["inputs"])[perm]})
    chex.assert_trees_all_close(permuted, out[perm], atol=1e-5)


@pytest.mark.parametrize("head", ["flatten", "per_step"])
def test_every_input_step_and_channel_reaches_every_output(head):
    """Direct multi-step: the Jacobian of each forecast w.r.t. each input value is nonzero."""
    cfg = config_of(NAME, head=head, num_layers=1)
    model = tf.TransformerForecaster(cfg)
    x = np.asarray(built(NAME).batch["inputs"])[:1]
    params = nn.unbox(jit(model.init)(jax.random.PRNGKey(0), {"inputs": x}))
    if head == "per_step":
        assert set(params["params"]) >= {"step_proj", "time_proj"} and "head" not in params["params"]
    jac = jit(jax.jacobian(lambda v: model.apply(params, {"inputs": v})))(x)  # [1, H, C, 1, L, C]
    chex.assert_shape(jac, (1, cfg.horizon, cfg.num_channels, 1, cfg.input_len, cfg.num_channels))
    assert np.all(np.abs(np.asarray(jac)) > 0)

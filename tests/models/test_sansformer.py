"""SANSformer: causal token mixing (future visits never change past outputs), its init, the Poisson count
loss on its outputs, and the GSP -> fine-tuning parameter transfer."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import sansformer_visits
from fintrans import tasks
from fintrans.models.sansformer import HEAD, CausalTokenMixing, SANSformer, SANSformerConfig
from fintrans.train import train_and_evaluate
from model_cases import jit

TINY = dict(seq_len=10, num_features=7, num_classes=3, num_summaries=4, embed_dim=16, hidden_dim=24, num_layers=2)


@functools.lru_cache(maxsize=None)
def _built(mode):
    model = SANSformer(SANSformerConfig(mode=mode, **TINY))
    x = np.zeros((2, 10, 7), np.float32)
    params = nn.unbox(jit(model.init)(jax.random.PRNGKey(0), {"inputs": x}))
    # Random (not ≈0) token-mixing weights, so the causality checks see real mixing.
    key = iter(jax.random.split(jax.random.PRNGKey(1), 8))
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: jax.random.normal(next(key), v.shape) if "token_mixing" in jax.tree_util.keystr(p)
        and "kernel" in jax.tree_util.keystr(p) else v, params)
    return model, params, jit(lambda p, x: model.apply(p, {"inputs": x}))


def test_token_mixing_is_causal_and_starts_near_the_bias():
    rng = np.random.default_rng(0)
    mix = CausalTokenMixing(6, jnp.float32, jnp.float32)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    params = nn.unbox(mix.init(jax.random.PRNGKey(0), x))
    w = params["params"]["kernel"] - 1e-3 / 6
    assert np.abs(w).max() <= 1e-3 / 6 and np.abs(w).max() > 0
    np.testing.assert_allclose(mix.apply(params, x), np.tril(w) @ x + 1.0, rtol=1e-5, atol=1e-6)
    # The masked upper triangle gets no gradient; every visit t reads visits <= t only.
    g = jax.grad(lambda p: jnp.sum(mix.apply(p, x) ** 2))(params)["params"]["kernel"]
    g = np.asarray(g)
    assert np.all(np.triu(g, 1) == 0) and np.all(g[np.tril_indices(6)] != 0)


@pytest.mark.parametrize("mode", ["gsp", "regress"])
def test_future_visits_do_not_change_past_outputs(mode):
    model, params, apply = _built(mode)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 10, 7)).astype(np.float32)
    k = int(rng.integers(2, 8))
    y = x.copy()
    y[:, k:] = rng.normal(size=y[:, k:].shape)
    a, b = apply(params, x), apply(params, y)
    if mode == "gsp":  # output t summarises the window after visit t from visits <= t
        assert a.shape == (2, 10, 4)
        np.testing.assert_allclose(a[:, :k], b[:, :k], atol=1e-5)
        assert not np.allclose(a[:, k:], b[:, k:], atol=1e-3)
    else:  # the regression pools every visit
        assert a.shape == (2,) and not np.allclose(a, b, atol=1e-4)
        z = x.copy()
        z[:, 0] = rng.normal(size=z[:, 0].shape)
        assert not np.allclose(apply(params, z), a, atol=1e-4)


def test_count_regression_loss_is_the_poisson_nll_of_the_outputs():
    model, params, apply = _built("gsp")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 10, 7)).astype(np.float32)
    y = rng.poisson(3.0, size=(2, 10, 4)).astype(np.float32)
    batch = {"inputs": x, "targets": y}
    task = tasks.build("count_regression")
    task.check_batch(batch)
    eta = np.asarray(apply(params, x), np.float64)
    loss, metrics = task.loss_from_outputs(jnp.asarray(eta), batch)
    # Poisson NLL without the log(y!) constant: rate - y * log(rate).
    np.testing.assert_allclose(loss, np.mean(np.exp(eta) - y * eta), rtol=1e-5)
    np.testing.assert_allclose(metrics["mae"][0] / metrics["mae"][1], np.mean(np.abs(np.exp(eta) - y)), rtol=1e-5)
    with pytest.raises(ValueError, match="counts and must be >= 0"):
        task.check_batch({"inputs": x, "targets": -y - 1})


def test_finetuning_starts_from_the_gsp_run_but_its_head(tmp_path):
    """sansformer_visits.py's pretrained= switch: the trainer's warm start takes every parameter but the head."""
    def config(arg, steps, lr):
        c = sansformer_visits.get_config(arg)
        c.total_steps, c.log_every, c.eval_every, c.checkpoint_every, c.progress_bar = steps, 1, 0, 0, False
        c.optimizer.learning_rate = lr
        return c

    gsp = train_and_evaluate(config("stage=gsp,runlocal", 3, 3e-3), tmp_path / "gsp")["state"].params
    # Learning rate 0: the fine-tuning runs end with the parameters they started from.
    fresh = train_and_evaluate(config("runlocal", 1, 0.0), tmp_path / "fresh")["state"].params
    warm = train_and_evaluate(config(f"runlocal,pretrained={tmp_path / 'gsp'}", 1, 0.0), tmp_path / "warm")
    assert warm["init_from"]["step"] == 3 and {p.split("/")[0] for p in warm["init_from"]["unused"]} == {HEAD}
    params = warm["state"].params
    assert set(params) == set(gsp) and HEAD in params
    for name in params:
        expected = fresh[name] if name == HEAD else gsp[name]
        for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(ValueError, match="pretrained= .* needs stage=finetune"):
        sansformer_visits.get_config(f"stage=gsp,pretrained={tmp_path / 'gsp'}")
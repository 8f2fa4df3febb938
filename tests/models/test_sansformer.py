"""SANSformer: the authors' layer against a numpy transcription of their module, causal token mixing (future
visits never change past outputs), its init, the Poisson count loss on its outputs, and the GSP ->
fine-tuning parameter transfer."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import sansformer_visits
from fintrans import tasks
from scipy.special import erf

from fintrans.models.sansformer import HEAD, AuthorsLayer, CausalTokenMixing, SANSformer, SANSformerConfig
from fintrans.train import train_and_evaluate
from model_cases import jit

TINY = dict(seq_len=10, num_features=7, num_classes=3, num_summaries=4, embed_dim=16, hidden_dim=24, mlp_dim=32,
            num_layers=2)


@functools.lru_cache(maxsize=None)
def _built(mode, block="authors"):
    model = SANSformer(SANSformerConfig(mode=mode, block=block, **TINY))
    x = np.zeros((2, 10, 7), np.float32)
    params = nn.unbox(jit(model.init)(jax.random.PRNGKey(0), {"inputs": x}))
    # Random (not ≈0) token-mixing weights, so the causality checks see real mixing.
    key = iter(jax.random.split(jax.random.PRNGKey(1), 8))
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: jax.random.normal(next(key), v.shape) if "token_mixing" in jax.tree_util.keystr(p)
        and "kernel" in jax.tree_util.keystr(p) else v, params)
    return model, params, jit(lambda p, x: model.apply(p, {"inputs": x}))


def _np_layer_norm(x, p, axes=(-1,), eps=1e-5):
    mean = x.mean(axes, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axes, keepdims=True) + eps)
    return y if p is None else y * p["scale"] + p["bias"]


def _np_gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _np_authors_layer(p, x):
    """A float64 transcription of the authors' code (ykumards/sansformers, src/models/attention_blocks.py and
    the model's loop): x + SansformerLayer(F.layer_norm(x, [T, E])), SansformerLayer(u) = norm2(s + ff(s)) with
    s = norm1(FullMLPLayer(u)), FullMLPLayer(u) = proj_out(res * conv(norm2(gate))), where
    res, gate = chunk(act(proj_ch1(norm1(u)))) and proj_ch1 = Linear + GELU."""
    t = x.shape[1]
    u = _np_layer_norm(x, None, axes=(1, 2))
    g = p["gating"]
    h = _np_layer_norm(u, p["unit_norm"])
    w_in = g["w_in"]["kernel"].reshape(h.shape[-1], -1)  # [E, 2, h] -> [E, 2h]: res first, as chunk(2)
    z = _np_gelu(_np_gelu(h @ w_in + g["w_in"]["bias"].reshape(-1)))
    res, gate = np.split(z, 2, axis=-1)
    gate = _np_layer_norm(gate, g["gate_norm"])
    w = g["token_mixing"]["kernel"] - 1e-3 / t  # the stored U(0, 2 eps) draw, shifted to U(-eps, eps)
    w = np.where(np.triu(np.ones((t, t), bool), 1), 0.0, w)  # weight.masked_fill(triu(1), 0)
    gate = np.einsum("ts,bsc->btc", w, gate) + g["token_mixing"]["bias"][None, :, None]  # conv1d over visits
    s = (res * gate) @ g["w_out"]["kernel"] + g["w_out"]["bias"]
    s = _np_layer_norm(s, p["gating_norm"])
    mlp = p["mlp"]
    ff = _np_gelu(s @ mlp["wi"]["kernel"] + mlp["wi"]["bias"]) @ mlp["wo"]["kernel"] + mlp["wo"]["bias"]
    return x + _np_layer_norm(s + ff, p["out_norm"])


def test_authors_layer_matches_a_transcription_of_their_module():
    cfg = SANSformerConfig(seq_len=7, embed_dim=8, hidden_dim=16, mlp_dim=32)
    layer = AuthorsLayer(cfg)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 8)).astype(np.float32)
    params = nn.unbox(layer.init(jax.random.PRNGKey(0), x))
    # Random, not the near-zero init, so every weight (the token mixing's included) shows in the output.
    leaves, tree = jax.tree.flatten(params)
    params = jax.tree.unflatten(tree, [rng.normal(size=v.shape).astype(np.float32) * 0.5 for v in leaves])
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(layer.apply(params, x), np.float64)
    expected = _np_authors_layer(jax.tree.map(lambda v: np.asarray(v, np.float64), params["params"]),
                                 x.astype(np.float64))
    np.testing.assert_allclose(ours, expected, rtol=2e-4, atol=2e-4)


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


@pytest.mark.parametrize("block", ["authors", "gmlp"])
@pytest.mark.parametrize("mode", ["gsp", "regress"])
def test_future_visits_do_not_change_past_outputs(mode, block):
    model, params, apply = _built(mode, block)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 10, 7)).astype(np.float32)
    k = int(rng.integers(2, 8))
    y = x.copy()
    y[:, k:] = rng.normal(size=y[:, k:].shape)
    a, b = apply(params, x), apply(params, y)
    if mode == "gsp":  # output t summarises the window after visit t from visits <= t
        assert a.shape == (2, 10, 4)
        # The authors' joint LayerNorm over visits is followed by a per-visit one, which undoes its shift and
        # scale: future visits reach the past only through the epsilon (measured ~1e-5), hence the atol.
        np.testing.assert_allclose(a[:, :k], b[:, :k], atol=1e-5 if block == "gmlp" else 5e-5)
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
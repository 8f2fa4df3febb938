"""t2: the class-activation-map identity, padding invariance, the embedding + sinusoidal positions
against numpy, and astronet's dropout placement (none inside the FFN)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from fintrans import models
from model_cases import built, config_of, jit


@functools.lru_cache(maxsize=None)
def _cam_fn():
    b = built("t2")
    return jit(lambda params, batch: b.model.apply(params, batch, method="class_activation_maps"))


def _batch(seed):
    return built("t2").case.make_batch(np.random.default_rng(seed))


def test_cam_decomposes_the_logits():
    """logits[b, k] = sum_t cam[b, t, k] / n_valid[b] + bias[k]: mean pooling then a linear head."""
    b = built("t2")
    batch = _batch(5)
    logits, cam = _cam_fn()(b.params, batch)
    mask = batch["mask"]
    assert not mask.all(), "the case must have padded rows"
    np.testing.assert_allclose(logits, b.forward(b.params, batch), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cam)[~mask], 0.0)
    bias = np.asarray(b.params["params"]["head"]["bias"])
    recon = np.asarray(cam, np.float64).sum(1) / mask.sum(1)[:, None] + bias
    np.testing.assert_allclose(recon, logits, atol=1e-5, rtol=1e-5)
    # The same maps come out of the 'intermediates' collection of an ordinary call.
    _, state = b.model.apply(b.params, batch, mutable=["intermediates"])
    np.testing.assert_allclose(state["intermediates"]["cam"][0], cam, atol=1e-6)


def test_padded_steps_do_not_change_outputs():
    b = built("t2")
    batch = _batch(6)
    mask = batch["mask"]
    logits, cam = _cam_fn()(b.params, batch)
    noisy = dict(batch, inputs=np.where(mask[..., None], batch["inputs"],
                                        np.random.default_rng(7).normal(size=batch["inputs"].shape) * 50)
                 .astype(np.float32))
    logits2, cam2 = _cam_fn()(b.params, noisy)
    np.testing.assert_allclose(logits2, logits, atol=1e-5)
    np.testing.assert_allclose(cam2, cam, atol=1e-5)
    # A padded row classifies as its unpadded series alone (the case's conv kernel is 3 wide).
    row = int(np.argmin(mask.sum(1)))
    n = int(mask[row].sum())
    alone = b.model.apply(b.params, {"inputs": batch["inputs"][row:row + 1, :n]})
    np.testing.assert_allclose(alone[0], logits[row], atol=1e-5)
    assert not np.allclose(logits[row], logits[(row + 1) % len(logits)], atol=1e-3)


def test_embedding_and_sinusoidal_positions_match_numpy():
    """The first block's input is ReLU(conv1d(x)) + PE, PE from the paper's formula in numpy."""
    b = built("t2")
    batch = _batch(8)
    seen = {}

    def grab(next_fun, args, kwargs, context):
        if context.module.name == "block_0" and context.method_name == "__call__":
            seen["x"] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        b.model.apply(b.params, batch)
    t, d = batch["inputs"].shape[1], b.config.embed_dim
    # astronet's PositionalEncoding: sin(p / 10000^(2i/d)) on even features, cos on odd ones.
    p, i = np.meshgrid(np.arange(t), np.arange(d // 2))
    pe = np.empty((t, d))
    pe[:, 0::2] = np.sin(p / 10000 ** (2 * i / d)).T
    pe[:, 1::2] = np.cos(p / 10000 ** (2 * i / d)).T
    conv = b.params["params"]["embed"]
    w, bias = np.asarray(conv["kernel"], np.float64), np.asarray(conv["bias"], np.float64)  # [k, C, d]
    k = w.shape[0]
    x = np.where(batch["mask"][..., None], batch["inputs"], 0).astype(np.float64)
    xp = np.pad(x, ((0, 0), ((k - 1) // 2, k - 1 - (k - 1) // 2), (0, 0)))
    emb = sum(xp[:, j:j + t] @ w[j] for j in range(k)) + bias
    expected = np.maximum(emb, 0) + pe
    np.testing.assert_allclose(np.asarray(seen["x"]), expected, atol=1e-5)


def test_feed_forward_has_no_hidden_dropout_by_default():
    """astronet's FFN is Dense(relu) -> Dense with no dropout between them (an earlier version applied
    dropout_rate there): in train mode the FFN's
    output layer sees exactly relu(wi · x), while dropout still acts on the sublayer outputs (so the
    train-mode block output differs from the deterministic one). mlp_dropout_rate turns it on."""
    batch = _batch(9)

    def hidden_in_train_mode(cfg):
        model = models.get("t2").module(cfg)
        params = nn.unbox(model.init(jax.random.PRNGKey(0), batch))
        seen = {}

        def grab(next_fun, args, kwargs, context):
            path = "/".join(context.module.path)
            if context.method_name == "__call__" and path.endswith("block_0/mlp"):
                seen["x"] = args[0]
            if context.method_name == "__call__" and path.endswith("block_0/mlp/wo"):
                seen["h"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(grab):
            model.apply(params, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
        wi = params["params"]["block_0"]["mlp"]["wi"]
        x = np.asarray(seen["x"], np.float64)
        expected = np.maximum(x @ np.asarray(wi["kernel"], np.float64) + np.asarray(wi["bias"], np.float64), 0)
        return np.asarray(seen["h"], np.float64), expected, model, params

    cfg = config_of("t2")
    assert cfg.mlp_dropout_rate == 0.0 and cfg.dropout_rate > 0
    h, expected, model, params = hidden_in_train_mode(cfg)
    np.testing.assert_allclose(h, expected, atol=1e-5)
    train = model.apply(params, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(train, model.apply(params, batch), atol=1e-4)  # the sublayer dropouts act
    h, expected, *_ = hidden_in_train_mode(config_of("t2", mlp_dropout_rate=0.5))
    dropped = (h == 0) & (expected > 0)
    assert dropped.mean() > 0.2  # about half the active units dropped

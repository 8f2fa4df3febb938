"""The forecasting task: MSE and MAE against numpy, padding rows left out."""
import jax
import numpy as np
import pytest

from fintrans import tasks


def test_mse_and_mae_match_numpy():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(5, 3, 2)).astype(np.float32)
    batch = {"inputs": rng.normal(size=(5, 8, 2)).astype(np.float32),
             "targets": rng.normal(size=(5, 3, 2)).astype(np.float32), "valid": np.arange(5) < 3}
    task = tasks.build("forecasting")
    task.check_batch(batch)
    loss, metrics = jax.jit(task.loss_from_outputs)(pred, batch)
    err = (pred - batch["targets"])[:3]
    np.testing.assert_allclose(loss, np.mean(err ** 2), rtol=1e-5)
    summary = tasks.summarize(jax.device_get(metrics))
    np.testing.assert_allclose([summary["mse"], summary["mae"]], [np.mean(err ** 2), np.mean(np.abs(err))], rtol=1e-5)


def test_channel_mismatch_is_rejected():
    with pytest.raises(ValueError, match="inputs have 2 channels but targets 3"):
        tasks.build("forecasting").check_batch({"inputs": np.zeros((1, 4, 2), np.float32),
                                                "targets": np.zeros((1, 2, 3), np.float32)})


@pytest.mark.parametrize("window_norm", ["mean_std", "last"])
def test_window_norm_round_trip(window_norm):
    """Normalising a window and mapping its own normalised values back returns the window; 'mean_std'
    windows have zero mean and (almost) unit std per channel, 'last' windows end at zero."""
    from fintrans.tasks.forecasting import denormalize_forecast, normalize_window
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(4, 16, 3)).astype(np.float32)
    z, stats = normalize_window(x, window_norm)
    np.testing.assert_allclose(denormalize_forecast(z, stats), x, rtol=1e-5, atol=1e-5)
    if window_norm == "mean_std":
        np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(z.std(axis=1), 1.0, atol=1e-3)
    else:
        np.testing.assert_allclose(z[:, -1], 0.0, atol=1e-6)


@pytest.mark.parametrize("window_norm", ["none", "mean_std", "last"])
def test_window_norm_makes_forecasts_shift_equivariant(window_norm):
    """With per-window normalisation a model (DLinear, which has none of its own) forecasts x + c as its
    forecast of x plus c, per window and channel; without it, it does not."""
    from fintrans import models
    spec = models.get("dlinear")
    model = spec.module(spec.config(input_len=16, horizon=4, num_channels=2))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 16, 2)).astype(np.float32)
    c = rng.normal(0.0, 5.0, size=(3, 1, 2)).astype(np.float32)
    batch = {"inputs": x, "targets": np.zeros((3, 4, 2), np.float32)}
    params = model.init(jax.random.key(0), batch)["params"]
    apply = lambda p, b, rng=None: model.apply({"params": p}, b, train=False)  # noqa: E731
    task = tasks.build("forecasting", {"window_norm": window_norm})
    shifted = task.forecast(apply, params, {**batch, "inputs": x + c})
    expected = task.forecast(apply, params, batch) + c
    if window_norm == "none":
        assert not np.allclose(shifted, expected, atol=1e-3)
    else:
        np.testing.assert_allclose(shifted, expected, rtol=1e-4, atol=1e-4)


def test_unknown_window_norm_is_rejected():
    with pytest.raises(ValueError, match="window_norm='revin'"):
        tasks.build("forecasting", {"window_norm": "revin"})

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

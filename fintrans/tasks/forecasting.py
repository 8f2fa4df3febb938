"""Multi-step forecasting on normalised series: MSE loss, MSE and MAE metrics."""
from __future__ import annotations

import jax.numpy as jnp

from fintrans.tasks.base import check_keys, example_weights, weighted

name = "forecasting"
BATCH_SPEC = {"inputs": (3, "float"), "targets": (3, "float")}


def check_batch(batch) -> None:
    check_keys(name, batch, BATCH_SPEC)
    if batch["inputs"].shape[2] != batch["targets"].shape[2]:
        raise ValueError(f"forecasting: inputs have {batch['inputs'].shape[2]} channels but targets "
                         f"{batch['targets'].shape[2]}")


def loss_and_metrics(predictions, batch):
    """predictions [batch, horizon, channels] -> (mean squared error, metric sums)."""
    targets = batch["targets"]
    if predictions.shape != targets.shape:
        raise ValueError(f"forecasting: predictions {predictions.shape} do not match targets {targets.shape}")
    w = example_weights(batch, targets.shape[0])
    err = predictions.astype(jnp.float32) - targets.astype(jnp.float32)
    mse_sum, count = weighted(jnp.square(err), w)
    return mse_sum / jnp.maximum(count, 1.0), {"loss": (mse_sum, count), "mse": (mse_sum, count),
                                               "mae": weighted(jnp.abs(err), w)}


def derived(summary):
    return {}

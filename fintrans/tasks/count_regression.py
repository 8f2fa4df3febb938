"""Count regression (SANSformer's GSP pretraining and its fine-tuning): the model outputs the log of a
Poisson rate for every count in 'targets' (any shape after the batch: one count per patient, or summary
statistics per visit); the loss is the Poisson negative log-likelihood exp(η) - y·η (the authors' code
ships torch's poisson_nll_loss with log inputs among its losses), or the squared error of the rate
(loss='mse'). Metrics: loss, and the MAE / MSE of the predicted mean exp(η) against the counts."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from fintrans.models.config import ConfigError
from fintrans.tasks.base import TASKS, Task, check_keys, example_weights, weighted

LOSSES = ("poisson", "mse")


class CountRegression(Task):
    name = "count_regression"
    batch_spec = {"inputs": (-1, "any"), "targets": (-1, "float")}

    def __init__(self, *, loss: str = "poisson"):
        if loss not in LOSSES:
            raise ConfigError(f"count_regression: loss={loss!r} is not one of {LOSSES}")
        self.loss = loss

    def check_batch(self, batch) -> None:
        check_keys(self.name, batch, self.batch_spec)
        if np.any(np.asarray(batch["targets"]) < 0):
            raise ValueError("count_regression: targets are counts and must be >= 0")

    def loss_from_outputs(self, log_rate, batch):
        """log_rate: the shape of batch['targets'] -> (mean loss per count, metric sums)."""
        y = batch["targets"].astype(jnp.float32)
        if log_rate.shape != y.shape:
            raise ValueError(f"count_regression: outputs {log_rate.shape} do not match targets {y.shape}")
        w = example_weights(batch, y.shape[0])
        eta = log_rate.astype(jnp.float32)
        mean = jnp.exp(eta)
        per = mean - y * eta if self.loss == "poisson" else jnp.square(mean - y)
        loss_sum, count = weighted(per, w)
        return loss_sum / jnp.maximum(count, 1.0), {"loss": (loss_sum, count), "mae": weighted(jnp.abs(mean - y), w),
                                                   "mse": weighted(jnp.square(mean - y), w)}

    def sample(self, run, params, print_fn) -> dict[str, Any]:
        """Predicted means against the true counts for the first test examples (their first count)."""
        n = run.config.sample.num_examples
        outputs, batch = run.predict(params, run.first_batch("test"))
        pred = np.exp(np.asarray(outputs, np.float64)).reshape(len(outputs), -1)[:n, 0]
        true = np.asarray(batch["targets"], np.float64).reshape(len(outputs), -1)[:n, 0]
        print_fn("\n--- test examples: predicted mean / true count ---")
        for p, y in zip(pred, true):
            print_fn(f"{p:8.2f} / {y:g}")
        return {"predicted": pred.tolist(), "true": true.tolist()}


TASKS.register(CountRegression.name, CountRegression)

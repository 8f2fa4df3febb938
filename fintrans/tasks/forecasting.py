"""Multi-step forecasting on normalised series: MSE loss, MSE and MAE metrics; the sample is the first
test window's forecast against the truth (printed, and plotted to WORKDIR/forecast.png).

Option `window_norm` (config.task_options.window_norm) normalises each input window by its own statistics
before the model sees it and maps the model's output back, so every forecaster gets per-window
normalisation without a change of its own; loss and metrics stay in the data's (train-standardised) units:
- 'none' (default): the model sees the windows as the data gives them.
- 'mean_std': RevIN without its affine parameters (Kim et al., ICLR 2022), as iTransformer's and the
  Non-stationary Transformer's `use_norm`: subtract each channel's window mean, divide by its window std
  (sqrt(biased variance + 1e-5)); the output is multiplied by that std and the mean added back.
- 'last': NLinear's normalisation: subtract each channel's last observed value, add it back to the output.
A model's own built-in normalisation (NLinear's last-value subtraction, iTransformer's use_norm) is the
model's and is applied on top of (after) this one.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from fintrans.models.config import ConfigError
from fintrans.tasks.base import TASKS, Task, check_keys, example_weights, weighted

WINDOW_NORMS = ("none", "mean_std", "last")
REVIN_EPS = 1e-5  # the authors' (RevIN, iTransformer) variance epsilon


def window_stats(inputs, window_norm: str):
    """(shift, scale), each [batch, 1, channels], of each input window: normalised = (x - shift) / scale."""
    inputs = jnp.asarray(inputs, jnp.float32)
    if window_norm == "mean_std":
        shift = inputs.mean(axis=1, keepdims=True)
        scale = jnp.sqrt(inputs.var(axis=1, keepdims=True) + REVIN_EPS)
    elif window_norm == "last":
        shift, scale = inputs[:, -1:, :], jnp.ones_like(inputs[:, -1:, :])
    elif window_norm == "none":
        shift, scale = jnp.zeros_like(inputs[:, -1:, :]), jnp.ones_like(inputs[:, -1:, :])
    else:
        raise ValueError(f"window_norm={window_norm!r}; choose from {WINDOW_NORMS}")
    return shift, scale


def normalize_window(inputs, window_norm: str):
    """(normalised inputs, (shift, scale)) for `denormalize_forecast`."""
    shift, scale = window_stats(inputs, window_norm)
    return (inputs - shift) / scale, (shift, scale)


def denormalize_forecast(outputs, stats):
    """The model's output [batch, horizon, channels] back in the units of the un-normalised inputs."""
    shift, scale = stats
    return outputs * scale + shift


class Forecasting(Task):
    name = "forecasting"
    batch_spec = {"inputs": (3, "float"), "targets": (3, "float")}

    def __init__(self, window_norm: str = "none"):
        if window_norm not in WINDOW_NORMS:
            raise ConfigError(f"forecasting: task_options.window_norm={window_norm!r}; choose from {WINDOW_NORMS}")
        self.window_norm = window_norm

    def check_batch(self, batch) -> None:
        check_keys(self.name, batch, self.batch_spec)
        if batch["inputs"].shape[2] != batch["targets"].shape[2]:
            raise ValueError(f"forecasting: inputs have {batch['inputs'].shape[2]} channels but targets "
                             f"{batch['targets'].shape[2]}")

    def model_batch(self, batch):
        """(the batch the model sees, the statistics that map its output back): only the inputs change."""
        inputs, stats = normalize_window(batch["inputs"], self.window_norm)
        return {**batch, "inputs": inputs}, stats

    def forecast(self, apply_fn, params, batch, rng=None):
        """The forecast [batch, horizon, channels] in the data's units: normalise, apply, map back."""
        if self.window_norm == "none":
            return apply_fn(params, batch, rng=rng)
        seen, stats = self.model_batch(batch)
        return denormalize_forecast(apply_fn(params, seen, rng=rng), stats)

    def loss_and_metrics(self, apply_fn, params, batch, rng, *, train):
        # 'none' keeps the batch (targets included) exactly as before the option existed.
        return self.loss_from_outputs(self.forecast(apply_fn, params, batch, rng), batch)

    def loss_from_outputs(self, predictions, batch):
        """predictions [batch, horizon, channels] -> (mean squared error, metric sums)."""
        targets = batch["targets"]
        if predictions.shape != targets.shape:
            raise ValueError(f"forecasting: predictions {predictions.shape} do not match targets {targets.shape}")
        w = example_weights(batch, targets.shape[0])
        err = predictions.astype(jnp.float32) - targets.astype(jnp.float32)
        mse_sum, count = weighted(jnp.square(err), w)
        return mse_sum / jnp.maximum(count, 1.0), {"loss": (mse_sum, count), "mse": (mse_sum, count),
                                                   "mae": weighted(jnp.abs(err), w)}

    def predict(self, run, params, batch):
        """(forecasts, batch) as numpy through the trainer's predict, with this task's window_norm."""
        if self.window_norm == "none":
            return run.predict(params, batch)
        seen, stats = self.model_batch(batch)
        outputs, _ = run.predict(params, {k: np.asarray(v) for k, v in seen.items()})
        return (np.asarray(denormalize_forecast(outputs, stats)), {k: np.asarray(v) for k, v in batch.items()})

    def sample(self, run, params, print_fn) -> dict[str, Any]:
        """The first test window in the data's units, for the 'close' channel if there is one."""
        outputs, batch = self.predict(run, params, run.first_batch("test"))
        predictions = outputs[0]
        info = run.dataset.info
        mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
        names = list(info.get("channels", range(predictions.shape[-1])))
        lowered = [str(n).lower() for n in names]
        channel = lowered.index("close") if "close" in lowered else 0
        denorm = lambda x: x[:, channel] * std[channel] + mean[channel]  # noqa: E731
        pred, true, history = denorm(predictions), denorm(batch["targets"][0]), denorm(batch["inputs"][0])
        print_fn(f"\n--- first test window, channel {names[channel]!r}: predicted / true ---")
        for h, (p, y) in enumerate(zip(pred, true)):
            print_fn(f"t+{h + 1:<3d} {p:12.4f} {y:12.4f}")
        out = {"channel": names[channel], "history": history.tolist(), "predicted": pred.tolist(),
               "true": true.tolist()}
        if run.is_main and run.workdir is not None:
            out["plot"] = str(plot_forecast(run.workdir / "forecast.png", history, pred, true, names[channel]))
            print_fn(f"plot: {out['plot']}")
        return out


def plot_forecast(path, history, pred, true, name):
    # A bare Figure, not pyplot: switching pyplot's backend (matplotlib.use) would stop a notebook's
    # inline figures after training.
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 3))
    ax = fig.subplots()
    t_hist = np.arange(-len(history), 0)
    t_future = np.arange(len(pred))
    ax.plot(t_hist, history, color="gray", label="history")
    ax.plot(t_future, true, color="black", label="true")
    ax.plot(t_future, pred, color="tab:red", label="predicted")
    ax.set_xlabel("trading days from forecast start")
    ax.set_ylabel(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


TASKS.register(Forecasting.name, Forecasting)

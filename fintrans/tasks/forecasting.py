"""Multi-step forecasting on normalised series: MSE loss, MSE and MAE metrics; the sample is the first
test window's forecast against the truth (printed, and plotted to WORKDIR/forecast.png)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from fintrans.tasks.base import TASKS, Task, check_keys, example_weights, weighted


class Forecasting(Task):
    name = "forecasting"
    batch_spec = {"inputs": (3, "float"), "targets": (3, "float")}

    def check_batch(self, batch) -> None:
        check_keys(self.name, batch, self.batch_spec)
        if batch["inputs"].shape[2] != batch["targets"].shape[2]:
            raise ValueError(f"forecasting: inputs have {batch['inputs'].shape[2]} channels but targets "
                             f"{batch['targets'].shape[2]}")

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

    def sample(self, run, params, print_fn) -> dict[str, Any]:
        """The first test window in the data's units, for the 'close' channel if there is one."""
        outputs, batch = run.predict(params, run.first_batch("test"))
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

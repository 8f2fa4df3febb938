"""What a finished run shows: generated text, predicted labels, or a forecast against the truth."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from fintrans import parallel


def _first_batch(trainer, split: str) -> dict[str, np.ndarray]:
    it = trainer.dataset.iterator(split, trainer.config.eval_batch_size, shuffle=False, num_epochs=1)
    return next(iter(it))


def _predict(trainer, params, batch):
    """Outputs on `batch` (this host's rows) and the batch itself, both gathered from every host: each
    process gets the same global arrays, so predictions and their inputs/labels stay row-aligned."""
    global_batch = parallel.global_batch(batch, trainer.batch_sharding)
    out = jax.jit(lambda p, b: trainer.model.apply({"params": p}, b, train=False))(params, global_batch)
    gathered = multihost_utils.process_allgather({"out": out, "batch": global_batch}, tiled=True)
    return np.asarray(gathered["out"]), {k: np.asarray(v) for k, v in gathered["batch"].items()}


def lm_sample(trainer, params, print_fn) -> dict[str, Any]:
    from fintrans.models.decoder_lm import generate
    s = trainer.config.sample
    batch = _first_batch(trainer, "validation")
    # Process 0's first row on every host: generate takes the prompt as replicated, so all hosts must pass the same.
    prompt = jnp.asarray(multihost_utils.broadcast_one_to_all(np.asarray(batch["inputs"][:1, : s.prompt_len])))
    num_tokens = min(s.num_tokens, trainer.model_config.max_len - prompt.shape[1])
    tokens = jax.jit(lambda p, x, r: generate(trainer.model_config, p, x, num_tokens, r, temperature=s.temperature,
                                              top_k=s.top_k or None))(params, prompt, jax.random.PRNGKey(0))
    tokens = np.asarray(tokens)[0]
    prompt_text = trainer.dataset.decode(tokens[: prompt.shape[1]])
    continuation = trainer.dataset.decode(tokens[prompt.shape[1]:])
    print_fn(f"\n--- prompt ---\n{prompt_text}\n--- generated ({num_tokens} tokens, temperature "
             f"{s.temperature}) ---\n{continuation}\n")
    return {"prompt": prompt_text, "generated": continuation}


def classification_sample(trainer, params, print_fn) -> dict[str, Any]:
    n = trainer.config.sample.num_examples
    outputs, batch = _predict(trainer, params, _first_batch(trainer, "test"))
    predicted = outputs.argmax(-1)[:n]
    labels = batch["label"][:n]
    print_fn("\n--- test examples: predicted / true ---")
    for i in range(len(labels)):
        shown = ""
        if hasattr(trainer.dataset, "decode") and np.issubdtype(batch["inputs"].dtype, np.integer):
            shown = "  " + trainer.dataset.decode(batch["inputs"][i][batch["mask"][i]] if "mask" in batch
                                                  else batch["inputs"][i])
        print_fn(f"{predicted[i]} / {labels[i]}{shown}")
    return {"predicted": predicted.tolist(), "label": labels.tolist()}


def forecasting_sample(trainer, params, print_fn) -> dict[str, Any]:
    outputs, batch = _predict(trainer, params, _first_batch(trainer, "test"))
    predictions = outputs[0]
    info = trainer.dataset.info
    mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
    names = list(info.get("channels", range(predictions.shape[-1])))
    lowered = [str(n).lower() for n in names]
    channel = lowered.index("close") if "close" in lowered else 0
    denorm = lambda x: x[:, channel] * std[channel] + mean[channel]
    pred, true, history = denorm(predictions), denorm(batch["targets"][0]), denorm(batch["inputs"][0])
    print_fn(f"\n--- first test window, channel {names[channel]!r}: predicted / true ---")
    for h, (p, y) in enumerate(zip(pred, true)):
        print_fn(f"t+{h + 1:<3d} {p:12.4f} {y:12.4f}")
    out = {"channel": names[channel], "history": history.tolist(), "predicted": pred.tolist(), "true": true.tolist()}
    if trainer.is_main:
        out["plot"] = str(_plot_forecast(trainer.workdir / "forecast.png", history, pred, true, names[channel]))
        print_fn(f"plot: {out['plot']}")
    return out


def segmentation_sample(trainer, params, print_fn) -> dict[str, Any]:
    """Per-class point counts, predicted and true, and the accuracy on the first test example."""
    outputs, batch = _predict(trainer, params, _first_batch(trainer, "test"))
    mask = batch["mask"][0]
    predicted, labels = outputs[0].argmax(-1)[mask], batch["label"][0][mask]
    num_classes = outputs.shape[-1]
    names = list(trainer.dataset.info.get("classes", range(num_classes)))
    pred_counts = np.bincount(predicted, minlength=num_classes)
    true_counts = np.bincount(labels, minlength=num_classes)
    accuracy = float(np.mean(predicted == labels)) if len(labels) else float("nan")
    print_fn(f"\n--- first test example ({len(labels)} points, accuracy {accuracy:.3f}): points per class, "
             "predicted / true ---")
    for c in range(num_classes):
        print_fn(f"{str(names[c]):<12s} {pred_counts[c]:8d} {true_counts[c]:8d}")
    return {"accuracy": accuracy, "classes": [str(n) for n in names], "predicted_counts": pred_counts.tolist(),
            "true_counts": true_counts.tolist()}


def _plot_forecast(path, history, pred, true, name):
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


_SAMPLERS: dict[str, Callable] = {"lm": lm_sample, "classification": classification_sample,
                                  "forecasting": forecasting_sample, "segmentation": segmentation_sample}


def show_sample(trainer, params, print_fn=print) -> dict[str, Any]:
    return _SAMPLERS[trainer.config.task](trainer, params, print_fn)

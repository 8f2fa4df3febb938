"""Next-token language modelling: per-token cross-entropy, accuracy, perplexity."""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from fintrans.tasks.base import check_keys, example_weights, weighted

name = "lm"
BATCH_SPEC = {"inputs": (2, "int"), "targets": (2, "int")}


def check_batch(batch) -> None:
    check_keys(name, batch, BATCH_SPEC)
    if batch["inputs"].shape != batch["targets"].shape:
        raise ValueError(f"lm: inputs {batch['inputs'].shape} and targets {batch['targets'].shape} differ in shape")


def loss_and_metrics(logits, batch):
    """logits [batch, length, vocab] -> (mean token loss, metric sums)."""
    targets = batch["targets"]
    w = example_weights(batch, targets.shape[0])[:, None] * jnp.ones(targets.shape, jnp.float32)
    if "weights" in batch:  # per-token weights (e.g. padding of packed sequences)
        w = w * batch["weights"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    loss_sum, count = weighted(ce, w)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return loss_sum / jnp.maximum(count, 1.0), {"loss": (loss_sum, count), "accuracy": weighted(correct, w)}


def derived(summary: dict[str, float]) -> dict[str, float]:
    return {"perplexity": math.exp(min(summary["loss"], 50.0))} if "loss" in summary else {}

"""Classification: softmax cross-entropy on integer labels, accuracy."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from fintrans.tasks.base import check_keys, example_weights, weighted

name = "classification"
BATCH_SPEC = {"inputs": (-1, "any"), "label": (1, "int")}


def check_batch(batch) -> None:
    check_keys(name, batch, BATCH_SPEC)


def loss_and_metrics(logits, batch):
    """logits [batch, classes] -> (mean loss, metric sums)."""
    labels = batch["label"]
    if logits.shape[0] != labels.shape[0] or logits.ndim != 2:
        raise ValueError(f"classification: logits {logits.shape} do not match labels {labels.shape}")
    w = example_weights(batch, labels.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    loss_sum, count = weighted(ce, w)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss_sum / jnp.maximum(count, 1.0), {"loss": (loss_sum, count), "accuracy": weighted(correct, w)}


def derived(summary):
    return {}

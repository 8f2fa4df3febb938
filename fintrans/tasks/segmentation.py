"""Per-point semantic segmentation: masked softmax cross-entropy, accuracy and mean IoU.

Batch: 'label' int[B, N] (class per point) and 'mask' bool[B, N] (real points); the model's
outputs are logits [B, N, classes]. Only real points of real examples count (mask, and 'valid' on
evaluation batches).

Mean IoU needs each class's intersection and union summed over the whole evaluation set, not a
mean of per-batch IoUs. The metric sums carry them without changing the (sum, count) plumbing:
`class{c}_intersection` and `class{c}_union` are (points, real points), so after `summarize` they
are fractions of the evaluated points with a common denominator, and `derived` takes their ratio:
`class{c}_iou` = intersection / union, and `mean_iou` = the mean over classes whose union is not
empty (classes neither labelled nor predicted anywhere are left out, as with nanmean).
"""
from __future__ import annotations

import re

import jax.numpy as jnp
import optax

from fintrans.tasks.base import check_keys, example_weights, weighted

name = "segmentation"
BATCH_SPEC = {"label": (2, "int"), "mask": (2, "bool")}
_CLASS_KEY = re.compile(r"^class(\d+)_(intersection|union)$")


def check_batch(batch) -> None:
    check_keys(name, batch, BATCH_SPEC)
    if batch["label"].shape != batch["mask"].shape:
        raise ValueError(f"segmentation: label {batch['label'].shape} and mask {batch['mask'].shape} must have "
                         "the same shape [batch, points]")


def loss_and_metrics(logits, batch):
    """logits [batch, points, classes] -> (mean loss over real points, metric sums)."""
    labels = batch["label"]
    if logits.ndim != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"segmentation: logits {logits.shape} do not match labels {labels.shape} "
                         "(want [batch, points, classes])")
    num_classes = logits.shape[-1]
    w = example_weights(batch, labels.shape[0])[:, None] * batch["mask"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    loss_sum, count = weighted(ce, w)
    predicted = jnp.argmax(logits, -1)
    metrics = {"loss": (loss_sum, count), "accuracy": weighted((predicted == labels).astype(jnp.float32), w)}
    classes = jnp.arange(num_classes)
    is_pred = (predicted[..., None] == classes).astype(jnp.float32) * w[..., None]  # [B, N, C]
    is_true = (labels[..., None] == classes).astype(jnp.float32) * w[..., None]
    intersection = (is_pred * is_true).sum((0, 1))
    union = (is_pred + is_true).sum((0, 1)) - intersection
    for c in range(num_classes):
        metrics[f"class{c}_intersection"] = (intersection[c], count)
        metrics[f"class{c}_union"] = (union[c], count)
    return loss_sum / jnp.maximum(count, 1.0), metrics


def derived(summary: dict[str, float]) -> dict[str, float]:
    """Per-class IoU and mean IoU from the summed intersections and unions."""
    parts: dict[int, dict[str, float]] = {}
    for key, value in summary.items():
        m = _CLASS_KEY.match(key)
        if m:
            parts.setdefault(int(m.group(1)), {})[m.group(2)] = value
    out, ious = {}, []
    for c in sorted(parts):
        inter, union = parts[c].get("intersection"), parts[c].get("union")
        if inter is None or union is None or union <= 0:
            continue
        out[f"class{c}_iou"] = inter / union
        ious.append(out[f"class{c}_iou"])
    if ious:
        out["mean_iou"] = sum(ious) / len(ious)
    return out

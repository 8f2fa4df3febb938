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
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from fintrans.tasks.base import TASKS, Task, check_keys, example_weights, weighted

_CLASS_KEY = re.compile(r"^class(\d+)_(intersection|union)$")


class Segmentation(Task):
    name = "segmentation"
    batch_spec = {"label": (2, "int"), "mask": (2, "bool")}

    def check_batch(self, batch) -> None:
        check_keys(self.name, batch, self.batch_spec)
        if batch["label"].shape != batch["mask"].shape:
            raise ValueError(f"segmentation: label {batch['label'].shape} and mask {batch['mask'].shape} must have "
                             "the same shape [batch, points]")

    def loss_from_outputs(self, logits, batch):
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

    def derived(self, summary):
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

    def sample(self, run, params, print_fn) -> dict[str, Any]:
        """Per-class point counts, predicted and true, and the accuracy on the first test example."""
        outputs, batch = run.predict(params, run.first_batch("test"))
        mask = batch["mask"][0]
        predicted, labels = outputs[0].argmax(-1)[mask], batch["label"][0][mask]
        num_classes = outputs.shape[-1]
        names = list(run.dataset.info.get("classes", range(num_classes)))
        pred_counts = np.bincount(predicted, minlength=num_classes)
        true_counts = np.bincount(labels, minlength=num_classes)
        accuracy = float(np.mean(predicted == labels)) if len(labels) else float("nan")
        print_fn(f"\n--- first test example ({len(labels)} points, accuracy {accuracy:.3f}): points per class, "
                 "predicted / true ---")
        for c in range(num_classes):
            print_fn(f"{str(names[c]):<12s} {pred_counts[c]:8d} {true_counts[c]:8d}")
        return {"accuracy": accuracy, "classes": [str(n) for n in names], "predicted_counts": pred_counts.tolist(),
                "true_counts": true_counts.tolist()}


TASKS.register(Segmentation.name, Segmentation)

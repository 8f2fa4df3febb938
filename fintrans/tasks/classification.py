"""Classification: softmax cross-entropy on integer labels, accuracy; the sample shows test predictions."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from fintrans.tasks.base import TASKS, Task, example_weights, weighted


class Classification(Task):
    name = "classification"
    batch_spec = {"inputs": (-1, "any"), "label": (1, "int")}

    def loss_from_outputs(self, logits, batch):
        """logits [batch, classes] -> (mean loss, metric sums)."""
        labels = batch["label"]
        if logits.shape[0] != labels.shape[0] or logits.ndim != 2:
            raise ValueError(f"classification: logits {logits.shape} do not match labels {labels.shape}")
        w = example_weights(batch, labels.shape[0])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        loss_sum, count = weighted(ce, w)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return loss_sum / jnp.maximum(count, 1.0), {"loss": (loss_sum, count), "accuracy": weighted(correct, w)}

    def sample(self, run, params, print_fn) -> dict[str, Any]:
        """Predicted and true labels of the first test examples (and their text, for token inputs)."""
        n = run.config.sample.num_examples
        outputs, batch = run.predict(params, run.first_batch("test"))
        predicted = outputs.argmax(-1)[:n]
        labels = batch["label"][:n]
        print_fn("\n--- test examples: predicted / true ---")
        for i in range(len(labels)):
            shown = ""
            if hasattr(run.dataset, "decode") and np.issubdtype(batch["inputs"].dtype, np.integer):
                shown = "  " + run.dataset.decode(batch["inputs"][i][batch["mask"][i]] if "mask" in batch
                                                  else batch["inputs"][i])
            print_fn(f"{predicted[i]} / {labels[i]}{shown}")
        return {"predicted": predicted.tolist(), "label": labels.tolist()}


TASKS.register(Classification.name, Classification)

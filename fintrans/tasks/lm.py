"""Next-token language modelling: per-token cross-entropy, accuracy, perplexity; the sample is text
generated through the model's registered `generate` hook."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from fintrans.tasks.base import TASKS, Task, check_keys, example_weights, weighted


class LanguageModelling(Task):
    name = "lm"
    batch_spec = {"inputs": (2, "int"), "targets": (2, "int")}

    def check_batch(self, batch) -> None:
        check_keys(self.name, batch, self.batch_spec)
        if batch["inputs"].shape != batch["targets"].shape:
            raise ValueError(f"lm: inputs {batch['inputs'].shape} and targets {batch['targets'].shape} differ in "
                             "shape")

    def loss_from_outputs(self, logits, batch):
        """logits [batch, length, vocab] -> (mean token loss, metric sums)."""
        targets = batch["targets"]
        w = example_weights(batch, targets.shape[0])[:, None] * jnp.ones(targets.shape, jnp.float32)
        if "weights" in batch:  # per-token weights (e.g. padding of packed sequences)
            w = w * batch["weights"].astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        loss_sum, count = weighted(ce, w)
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        return loss_sum / jnp.maximum(count, 1.0), {"loss": (loss_sum, count), "accuracy": weighted(correct, w)}

    def derived(self, summary):
        return {"perplexity": math.exp(min(summary["loss"], 50.0))} if "loss" in summary else {}

    def sample(self, run, params, print_fn) -> dict[str, Any]:
        """A continuation of the first validation sequence's prefix (config.sample), through the model
        registry's generate hook (fintrans.models.ModelSpec.generate)."""
        generate = run.model_spec.generate
        if generate is None:
            print_fn(f"\n(model {run.config.model.name!r} registers no generate hook: no text sample)")
            return {}
        s = run.config.sample
        batch = run.first_batch("validation")
        # Process 0's first row on every host: generate takes the prompt as replicated, so all hosts pass the same.
        prompt = jnp.asarray(multihost_utils.broadcast_one_to_all(np.asarray(batch["inputs"][:1, : s.prompt_len])))
        num_tokens = min(s.num_tokens, run.model_config.max_len - prompt.shape[1])
        tokens = jax.jit(lambda p, x, r: generate(run.model_config, p, x, num_tokens, r, temperature=s.temperature,
                                                  top_k=s.top_k or None))(params, prompt, jax.random.PRNGKey(0))
        tokens = np.asarray(tokens)[0]
        prompt_text = run.dataset.decode(tokens[: prompt.shape[1]])
        continuation = run.dataset.decode(tokens[prompt.shape[1]:])
        print_fn(f"\n--- prompt ---\n{prompt_text}\n--- generated ({num_tokens} tokens, temperature "
                 f"{s.temperature}) ---\n{continuation}\n")
        return {"prompt": prompt_text, "generated": continuation}


TASKS.register(LanguageModelling.name, LanguageModelling)

"""Contrastive representation learning: NT-Xent (SimCLR) over two views of each example.

Batch: either `view_a` and `view_b` (two views made by the data pipeline, same shape; the way for
tokens or images) or float `inputs` [B, ..., channels] (series or features; the task makes two views
with its own augmentation), plus any fields the model reads
(mask, ...), and `valid` bool[B] on evaluation.
The model is called twice per loss, once per view, as apply_fn(params, {**batch, "inputs": view}),
with independent dropout rngs, and returns embeddings [B, D] (or [B, ..., D], flattened).

Loss: for the 2B embeddings z (L2-normalised when `normalize`), sim = z z^T / temperature; each
embedding's positive is the other view of its example and its negatives are the other 2B - 2
embeddings of the batch (padding rows are neither); loss = mean over the 2B anchors of
-log softmax(sim)[anchor, positive]. Metrics: loss, accuracy (the positive is the most similar
of the 2B - 1 others: top-1 retrieval), positive_cosine and negative_cosine (mean cosine of positive
and negative pairs; both near 1 means the embeddings collapsed).

Augmentations for series/feature inputs (`augment` option, applied in this order, each independently
per view): "jitter" adds N(0, jitter_std^2) noise; "scaling" multiplies each example's channels
(last axis) by N(1, scaling_std^2) factors; "masking" zeroes each element with probability mask_rate.
In evaluation without an rng, the views use a fixed key so the metrics are reproducible.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fintrans.models.config import ConfigError
from fintrans.tasks.base import TASKS, BatchError, Task, check_keys, example_weights, weighted

AUGMENTATIONS = ("jitter", "scaling", "masking")


def augment(x: jax.Array, rng: jax.Array, *, kinds: Sequence[str], jitter_std: float, scaling_std: float,
            mask_rate: float) -> jax.Array:
    """One random view of float inputs [B, ..., channels]."""
    x = x.astype(jnp.float32)
    k_jitter, k_scale, k_mask = jax.random.split(rng, 3)
    if "jitter" in kinds:
        x = x + jitter_std * jax.random.normal(k_jitter, x.shape)
    if "scaling" in kinds:
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        x = x * (1.0 + scaling_std * jax.random.normal(k_scale, shape))
    if "masking" in kinds:
        x = jnp.where(jax.random.bernoulli(k_mask, mask_rate, x.shape), 0.0, x)
    return x


def nt_xent(z_a: jax.Array, z_b: jax.Array, weights: jax.Array, *, temperature: float, normalize: bool = True):
    """Per-anchor NT-Xent terms of two views [B, D] -> dict of float[2B] arrays:
    loss, correct (1.0 when the positive is the nearest other embedding), positive_cosine, negative_cosine
    (mean over the anchor's real negatives). `weights` [B] (0 for padding rows) removes padding rows
    from the negatives and zeroes their own terms; the caller weights the anchors."""
    b = z_a.shape[0]
    z = jnp.concatenate([z_a, z_b]).astype(jnp.float32)
    unit = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    if normalize:
        z = unit
    sim = z @ z.T / temperature
    index = jnp.arange(2 * b)
    positive = (index + b) % (2 * b)
    real = jnp.concatenate([weights, weights]) > 0
    others = real[None, :] & (index[None, :] != index[:, None])  # candidates of each anchor
    logits = jnp.where(others, sim, -jnp.inf)
    log_p = logits[index, positive] - jax.nn.logsumexp(logits, axis=-1)
    cosine = unit @ unit.T
    is_negative = others & (index[None, :] != positive[:, None])
    n_negative = jnp.maximum(is_negative.sum(-1), 1)
    # Padding anchors' terms are zeroed (their positive is masked out, so -log_p is inf there).
    return {"loss": jnp.where(real, -log_p, 0.0),
            "correct": (real & (jnp.argmax(logits, -1) == positive)).astype(jnp.float32),
            "positive_cosine": jnp.where(real, cosine[index, positive], 0.0),
            "negative_cosine": jnp.sum(jnp.where(is_negative, cosine, 0.0), -1) / n_negative}


class Contrastive(Task):
    """NT-Xent over two views per example (see module doc)."""

    name = "contrastive"

    def __init__(self, *, temperature: float = 0.1, normalize: bool = True,
                 augment: Sequence[str] = ("jitter", "scaling"), jitter_std: float = 0.03,
                 scaling_std: float = 0.1, mask_rate: float = 0.15):
        augment = (augment,) if isinstance(augment, str) else tuple(augment)
        unknown = [a for a in augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"{self.name}: unknown augmentations {unknown}; choose from {AUGMENTATIONS}")
        if not temperature > 0:
            raise ConfigError(f"{self.name}: temperature must be > 0, got {temperature!r}")
        if not 0 <= mask_rate < 1 or jitter_std < 0 or scaling_std < 0:
            raise ConfigError(f"{self.name}: need 0 <= mask_rate < 1 and non-negative jitter_std, scaling_std; got "
                             f"{mask_rate!r}, {jitter_std!r}, {scaling_std!r}")
        self.temperature, self.normalize, self.augment = float(temperature), bool(normalize), augment
        self.augment_options = {"jitter_std": jitter_std, "scaling_std": scaling_std, "mask_rate": mask_rate}

    def check_batch(self, batch) -> None:
        if "view_a" in batch or "view_b" in batch:
            check_keys(self.name, batch, {"view_a": (-1, "any"), "view_b": (-1, "any")})
            if np.shape(batch["view_a"]) != np.shape(batch["view_b"]):
                raise BatchError(f"{self.name}: view_a {np.shape(batch['view_a'])} and view_b "
                                 f"{np.shape(batch['view_b'])} must have the same shape")
        else:
            check_keys(self.name, batch, {"inputs": (-1, "float")})
            if np.ndim(batch["inputs"]) < 2:
                raise BatchError(f"{self.name}: batch['inputs'] must be [batch, ..., channels] to augment, got "
                                 f"shape {np.shape(batch['inputs'])}")

    def views(self, batch, rng):
        """The two views of the batch: the data pipeline's, or two augmentations of `inputs`."""
        if "view_a" in batch:
            return batch["view_a"], batch["view_b"]
        k_a, k_b = jax.random.split(rng)
        opts = dict(kinds=self.augment, **self.augment_options)
        return augment(batch["inputs"], k_a, **opts), augment(batch["inputs"], k_b, **opts)

    def embeddings(self, apply_fn, params, batch, rng):
        """(z_a, z_b) [B, D]: the model applied to each view, with independent dropout rngs."""
        view_rng = jax.random.PRNGKey(0) if rng is None else jax.random.fold_in(rng, 0)
        view_a, view_b = self.views(batch, view_rng)
        model_rngs = (None, None) if rng is None else jax.random.split(jax.random.fold_in(rng, 1))
        fields = {k: v for k, v in batch.items() if k not in ("view_a", "view_b")}
        out = [apply_fn(params, {**fields, "inputs": view}, rng=r) for view, r in zip((view_a, view_b), model_rngs)]
        return tuple(o.reshape(o.shape[0], -1) for o in out)

    def loss_and_metrics(self, apply_fn, params, batch, rng, *, train: bool):
        z_a, z_b = self.embeddings(apply_fn, params, batch, rng)
        w = example_weights(batch, z_a.shape[0])
        terms = nt_xent(z_a, z_b, w, temperature=self.temperature, normalize=self.normalize)
        anchor_w = jnp.concatenate([w, w])
        metrics = {"loss": weighted(terms["loss"], anchor_w), "accuracy": weighted(terms["correct"], anchor_w),
                   "positive_cosine": weighted(terms["positive_cosine"], anchor_w),
                   "negative_cosine": weighted(terms["negative_cosine"], anchor_w)}
        loss_sum, count = metrics["loss"]
        return loss_sum / jnp.maximum(count, 1.0), metrics

    def derived(self, summary) -> dict[str, Any]:
        return {}

    def sample(self, run, params, print_fn):
        """Retrieval accuracy and cosines of the two views of the first test batch, and how many
        directions the embeddings use (a collapsed encoder uses one)."""
        batch = run.first_batch("test")
        view_a, view_b = (np.asarray(v) for v in self.views(batch, jax.random.PRNGKey(0)))
        fields = {k: v for k, v in batch.items() if k not in ("view_a", "view_b")}
        z_a, _ = run.predict(params, {**fields, "inputs": view_a})
        z_b, gathered = run.predict(params, {**fields, "inputs": view_b})
        z_a, z_b = (np.asarray(z, np.float32).reshape(len(z), -1) for z in (z_a, z_b))
        w = np.asarray(gathered.get("valid", np.ones(len(z_a), bool)), np.float32)
        terms = {k: np.asarray(v) for k, v in nt_xent(jnp.asarray(z_a), jnp.asarray(z_b), jnp.asarray(w),
                                                      temperature=self.temperature, normalize=self.normalize).items()}
        real = np.concatenate([w, w]) > 0
        z = np.concatenate([z_a, z_b])[real]
        singular = np.linalg.svd(z - z.mean(0), compute_uv=False)
        energy = singular ** 2 / max(np.sum(singular ** 2), 1e-12)
        effective_rank = float(np.exp(-np.sum(energy * np.log(np.maximum(energy, 1e-12)))))
        out = {k: float(terms[m][real].mean()) for k, m in (("loss", "loss"), ("accuracy", "correct"),
                                                             ("positive_cosine", "positive_cosine"),
                                                             ("negative_cosine", "negative_cosine"))}
        out["effective_rank"] = effective_rank
        print_fn(f"\n--- first test batch, two views of {int(w.sum())} examples ---")
        print_fn("  ".join(f"{k} {v:.4f}" for k, v in out.items()) + f"  (embedding dim {z.shape[1]})")
        return out


TASKS.register(Contrastive.name, Contrastive)

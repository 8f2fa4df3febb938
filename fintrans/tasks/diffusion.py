"""Denoising diffusion (DDPM training, DDIM sampling) on continuous data.

Batch: the clean data x0 float[B, ...] under `data_key` (default "inputs"), any conditioning fields the
model reads, and `valid` bool[B] on evaluation.
The model is called once per loss as apply_fn(params, {**batch, data_key: x_t, "timesteps": t}) with
t int32[B] in [0, num_timesteps) and returns a prediction shaped like x0: the noise eps
(prediction="epsilon"), v = sqrt(ab) eps - sqrt(1 - ab) x0 (prediction="v", Salimans & Ho 2022), or x0.

Forward process: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, eps ~ N(0, I), with ab = alphas_cumprod of
a "linear" (Ho et al. 2020, betas 1e-4..0.02 at T = 1000, rescaled by 1000 / T for other T) or
"cosine" (Nichol & Dhariwal 2021) schedule; t = 0 is the least noisy step.
Loss: per-example mean squared error of the prediction, t uniform over [0, T); with `min_snr_gamma`
each example is weighted by min(SNR_t, gamma) / SNR_t for epsilon, / (SNR_t + 1) for v, and
min(SNR_t, gamma) for x0 (Hang et al. 2023, SNR = ab / (1 - ab)), which equals the x0-space weight
min(SNR, gamma) for every parameterisation. Metrics: loss (weighted), mse (unweighted), and the
loss per timestep bucket (`num_buckets` equal ranges of t: loss_t0-249, ...), which shows where
the model is weak. Evaluation without an rng draws t and eps from a fixed key, so every evaluation
sees the same noise.

Sampling: DDIM (Song et al. 2021) with eta = 0, a deterministic map from x_T ~ N(0, I) to x0 over
`sample_steps` evenly spaced timesteps: at each step x0 and eps are recovered from the prediction and
x_{t'} = sqrt(ab_{t'}) x0 + sqrt(1 - ab_{t'}) eps (ab = 1 after the last step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fintrans.models.config import ConfigError
from fintrans.tasks.base import TASKS, BatchError, Task, check_keys, example_weights, weighted

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v", "x0")


@dataclass(frozen=True)
class NoiseSchedule:
    """betas and alphas_cumprod (float64 numpy, length T): ab[t] = prod_{s <= t} (1 - beta_s)."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def ab(self, t) -> jax.Array:
        """alphas_cumprod at integer timesteps t (any shape), float32."""
        return jnp.asarray(self.alphas_cumprod, jnp.float32)[t]


def noise_schedule(kind: str, num_timesteps: int) -> NoiseSchedule:
    if kind not in SCHEDULES:
        raise ConfigError(f"noise schedule must be one of {SCHEDULES}, got {kind!r}")
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 2:
        raise ConfigError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    if kind == "linear":
        scale = 1000.0 / num_timesteps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    else:
        s = 0.008
        f = np.cos((np.arange(num_timesteps + 1) / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
        betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)  # the clip keeps the last steps finite
    return NoiseSchedule(betas, np.cumprod(1.0 - betas))


def _expand(a: jax.Array, x: jax.Array) -> jax.Array:
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(x0, eps, ab):
    """x_t from clean data, noise and alphas_cumprod per example [B]."""
    ab = _expand(ab, x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def prediction_target(kind: str, x0, eps, ab):
    """What the model should output for (x0, eps) at alphas_cumprod ab [B]."""
    if kind == "epsilon":
        return eps
    if kind == "x0":
        return x0
    ab = _expand(ab, x0)
    return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0


def x0_and_eps(kind: str, prediction, x_t, ab):
    """(x0, eps) recovered from a prediction at x_t: exact inverses of q_sample and prediction_target."""
    ab = _expand(ab, x_t)
    if kind == "v":
        return (jnp.sqrt(ab) * x_t - jnp.sqrt(1.0 - ab) * prediction,
                jnp.sqrt(1.0 - ab) * x_t + jnp.sqrt(ab) * prediction)
    if kind == "epsilon":
        return (x_t - jnp.sqrt(1.0 - ab) * prediction) / jnp.sqrt(ab), prediction
    return prediction, (x_t - jnp.sqrt(ab) * prediction) / jnp.sqrt(1.0 - ab)


def min_snr_weight(kind: str, ab, gamma: float):
    """Min-SNR-gamma loss weight per example for a prediction kind."""
    snr = ab / (1.0 - ab)
    clipped = jnp.minimum(snr, gamma)
    return {"epsilon": clipped / snr, "v": clipped / (snr + 1.0), "x0": clipped}[kind]


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Descending, distinct timesteps from T - 1 to 0 for a DDIM run of at most num_steps steps."""
    steps = np.round(np.linspace(num_timesteps - 1, 0, max(1, min(num_steps, num_timesteps)))).astype(np.int32)
    return np.unique(steps)[::-1]


def ddim_sample(predict_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: NoiseSchedule, x_T,
                num_steps: int, prediction: str = "epsilon", clip_x0: float | None = None):
    """Deterministic DDIM (eta = 0) from noise x_T; predict_fn(x_t, t int32[B]) -> the model's prediction.
    With clip_x0, the recovered x0 is clipped to [-clip_x0, clip_x0] (and eps recomputed) at each step."""
    x = jnp.asarray(x_T, jnp.float32)
    steps = ddim_timesteps(schedule.num_timesteps, num_steps)
    for i, t in enumerate(steps):
        ab = jnp.full((x.shape[0],), schedule.alphas_cumprod[t], jnp.float32)
        x0, eps = x0_and_eps(prediction, jnp.asarray(predict_fn(x, jnp.full((x.shape[0],), t, jnp.int32))), x, ab)
        if clip_x0 is not None:
            x0 = jnp.clip(x0, -clip_x0, clip_x0)
            eps = (x - jnp.sqrt(_expand(ab, x)) * x0) / jnp.sqrt(1.0 - _expand(ab, x))
        ab_next = schedule.alphas_cumprod[steps[i + 1]] if i + 1 < len(steps) else 1.0
        x = np.sqrt(ab_next) * x0 + np.sqrt(1.0 - ab_next) * eps
    return x


class Diffusion(Task):
    """DDPM training with epsilon / v / x0 prediction and DDIM sampling (see module doc)."""

    name = "diffusion"

    def __init__(self, *, schedule: str = "cosine", num_timesteps: int = 1000, prediction: str = "epsilon",
                 min_snr_gamma: float | None = None, num_buckets: int = 4, data_key: str = "inputs",
                 sample_steps: int = 50, clip_x0: float | None = None):
        if prediction not in PREDICTIONS:
            raise ConfigError(f"{self.name}: prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ConfigError(f"{self.name}: min_snr_gamma must be > 0 or None, got {min_snr_gamma!r}")
        if not isinstance(num_buckets, int) or not 1 <= num_buckets <= num_timesteps:
            raise ConfigError(f"{self.name}: num_buckets must be an integer in [1, num_timesteps], got {num_buckets!r}")
        self.schedule = noise_schedule(schedule, num_timesteps)
        self.prediction, self.min_snr_gamma, self.num_buckets = prediction, min_snr_gamma, num_buckets
        self.data_key, self.sample_steps, self.clip_x0 = data_key, int(sample_steps), clip_x0
        edges = np.linspace(0, num_timesteps, num_buckets + 1).round().astype(int)
        self.bucket_names = [f"loss_t{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]
        self._bucket_edges = edges

    def check_batch(self, batch) -> None:
        check_keys(self.name, batch, {self.data_key: (-1, "float")})
        if np.ndim(batch[self.data_key]) < 2:
            raise BatchError(f"{self.name}: batch[{self.data_key!r}] must be [batch, ...], got shape "
                             f"{np.shape(batch[self.data_key])}")
        if "timesteps" in batch:
            raise BatchError(f"{self.name}: batch already has 'timesteps'; the task draws them")

    def loss_and_metrics(self, apply_fn, params, batch, rng, *, train: bool):
        x0 = batch[self.data_key].astype(jnp.float32)
        b = x0.shape[0]
        data_rng = jax.random.PRNGKey(0) if rng is None else jax.random.fold_in(rng, 0)
        k_t, k_eps = jax.random.split(data_rng)
        t = jax.random.randint(k_t, (b,), 0, self.schedule.num_timesteps, jnp.int32)
        eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
        ab = self.schedule.ab(t)
        x_t = q_sample(x0, eps, ab)
        model_rng = None if rng is None else jax.random.fold_in(rng, 1)
        prediction = apply_fn(params, {**batch, self.data_key: x_t, "timesteps": t}, rng=model_rng)
        if prediction.shape != x0.shape:
            raise ValueError(f"{self.name}: the model's prediction {prediction.shape} must have the data's shape "
                             f"{x0.shape}")
        target = prediction_target(self.prediction, x0, eps, ab)
        mse = jnp.mean(jnp.square(prediction.astype(jnp.float32) - target).reshape(b, -1), -1)
        per_example = mse if self.min_snr_gamma is None else mse * min_snr_weight(self.prediction, ab,
                                                                                   self.min_snr_gamma)
        w = example_weights(batch, b)
        metrics = {"loss": weighted(per_example, w), "mse": weighted(mse, w)}
        bucket = jnp.searchsorted(jnp.asarray(self._bucket_edges[1:-1]), t, side="right")
        for i, name in enumerate(self.bucket_names):
            metrics[name] = weighted(per_example, w * (bucket == i))
        loss_sum, count = metrics["loss"]
        return loss_sum / jnp.maximum(count, 1.0), metrics

    def derived(self, summary) -> dict[str, Any]:
        return {}

    def sample(self, run, params, print_fn):
        """DDIM samples for the first test batch's conditioning, compared with its data: mean, std,
        range, and per-channel mean/std of the last axis when it is small."""
        batch = run.first_batch("test")
        x0 = np.asarray(batch[self.data_key], np.float32)
        n = len(x0)
        start = n * jax.process_index()  # predict returns every host's rows; keep this host's

        def predict(x, t):
            out, _ = run.predict(params, {**batch, self.data_key: np.asarray(x), "timesteps": np.asarray(t)})
            return np.asarray(out)[start:start + n] if len(out) != n else np.asarray(out)

        noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape, jnp.float32)
        samples = np.asarray(ddim_sample(predict, self.schedule, noise, self.sample_steps, self.prediction,
                                         self.clip_x0))
        real = np.asarray(batch.get("valid", np.ones(n, bool)), bool)
        stats = {}
        for label, x in (("samples", samples[real]), ("data", x0[real])):
            stats[label] = {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
                            "max": float(x.max())}
            if x.shape[-1] <= 8:
                flat = x.reshape(-1, x.shape[-1])
                stats[label]["channel_mean"] = flat.mean(0).tolist()
                stats[label]["channel_std"] = flat.std(0).tolist()
        num_steps = len(ddim_timesteps(self.schedule.num_timesteps, self.sample_steps))
        print_fn(f"\n--- {int(real.sum())} DDIM samples ({num_steps} steps) against the first test batch ---")
        for label, s in stats.items():
            print_fn(f"{label:8s} mean {s['mean']:9.4f}  std {s['std']:9.4f}  min {s['min']:9.4f}  max {s['max']:9.4f}")
        return stats


TASKS.register(Diffusion.name, Diffusion)

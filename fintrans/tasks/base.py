"""What a task is: the batch it expects, its forward passes and loss, its metrics, and its sample.

A task is an instance of a `Task` subclass, built by name with `build(name, options)` from the
`TASKS` registry (options are the class's keyword arguments). The trainer hands
`loss_and_metrics` an `apply_fn(params, batch, *, rng=None, **model_kwargs) -> outputs` that runs
the model (threading BatchNorm statistics and sown auxiliary losses itself), so a task may call the
model several times, on modified inputs or params, with rngs of its own choosing.

Metrics are returned as {name: (sum, count)} so that evaluation over many batches (with padded
rows marked invalid) averages exactly; sums may be arrays (e.g. a histogram), and `summarize`
turns accumulated sums into means (floats, or numpy arrays for array sums).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fintrans.models.config import ConfigError
from fintrans.registry import Registry

Metrics = dict[str, tuple[jax.Array, jax.Array]]
ApplyFn = Callable[..., Any]

# Modules holding Task classes; imported on the registry's first lookup.
TASK_MODULES = (
    "fintrans.tasks.lm",
    "fintrans.tasks.classification",
    "fintrans.tasks.forecasting",
    "fintrans.tasks.segmentation",
    "fintrans.tasks.ranking",
    "fintrans.tasks.multitask",
    "fintrans.tasks.contrastive",
    "fintrans.tasks.diffusion",
    "fintrans.tasks.count_regression",
)
TASKS: Registry[type] = Registry("task", load=TASK_MODULES, error=ConfigError)


class BatchError(ValueError):
    """A batch is missing a key or has the wrong rank or dtype for the task."""


class Task:
    """Base class of every task. Subclasses set `name` and `batch_spec` and either override
    `loss_and_metrics` (several forward passes, rng use of their own) or implement
    `loss_from_outputs` for the common case of one forward pass. Options are `__init__`'s keyword
    arguments (validated there, raising ConfigError)."""

    name: ClassVar[str] = ""
    # key -> (rank or -1 for any, 'int' | 'float' | 'bool' | 'any'); see check_keys.
    batch_spec: ClassVar[Mapping[str, tuple[int, str]]] = {}

    def __init__(self) -> None:
        """No options; subclasses with options take them as keyword arguments."""

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Host-side check of a numpy batch; raises BatchError naming the key and shape."""
        check_keys(self.name, batch, self.batch_spec)

    def loss_and_metrics(self, apply_fn: ApplyFn, params: Any, batch: Mapping[str, Any], rng: jax.Array | None,
                         *, train: bool) -> tuple[jax.Array, Metrics]:
        """(scalar loss, {metric: (sum, count)}). The default runs the model once with the step's rng
        unchanged, which keeps single-pass training bitwise identical to calling the model directly."""
        return self.loss_from_outputs(apply_fn(params, batch, rng=rng), batch)

    def loss_from_outputs(self, outputs: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, Metrics]:
        raise NotImplementedError(f"task {self.name!r} ({type(self).__name__}) must override loss_and_metrics "
                                  "or loss_from_outputs")

    def derived(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Metrics computed from the accumulated means (perplexity, IoU from sums, AUC from a histogram)."""
        return {}

    def sample(self, run: Any, params: Any, print_fn: Callable[..., None]) -> dict[str, Any]:
        """What a finished run shows (printed with print_fn) and returns; see Trainer for `run`."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def option_names(cls: type) -> tuple[str, ...]:
    """The keyword options a task class accepts (its __init__'s named parameters)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def build(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """The task `name` built with `options` (config.task_options); unknown or missing options raise
    ConfigError naming them and the valid ones."""
    cls = TASKS.get(name)
    options = dict(options.to_dict() if hasattr(options, "to_dict") else (options or {}))
    valid = option_names(cls)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    unknown = sorted(set(options) - set(valid))
    if unknown and not takes_any:  # a class taking **options validates them itself
        raise ConfigError(f"task {name!r} has no option(s) {unknown}; its options are {list(valid) or 'none'}")
    try:
        inspect.signature(cls.__init__).bind(None, **options)
    except TypeError as e:
        raise ConfigError(f"task {name!r}: {e} (config.task_options)") from None
    return cls(**options)


def example_weights(batch: Mapping[str, Any], batch_size: int) -> jax.Array:
    """1.0 per real example, 0.0 for the padding rows of a final evaluation batch."""
    valid = batch.get("valid")
    return jnp.ones((batch_size,), jnp.float32) if valid is None else valid.astype(jnp.float32)


def weighted(values: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of values·weights, sum of weights) with weights broadcast over trailing dims."""
    w = jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim)), values.shape)
    return (values * w).sum(), w.sum()


def check_keys(task: str, batch: Mapping[str, Any], spec: Mapping[str, tuple[int, str]]) -> None:
    """spec: key -> (rank, 'int' | 'float' | 'bool' | 'any')."""
    for key, (rank, kind) in spec.items():
        if key not in batch:
            raise BatchError(f"{task} batch has no {key!r}; it needs {sorted(spec)} (got {sorted(batch)})")
        x = batch[key]
        if np.ndim(x) != rank and rank >= 0:
            raise BatchError(f"{task} batch[{key!r}] must have rank {rank}, got shape {np.shape(x)}")
        dt = np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
        ok = {"int": jnp.issubdtype(dt, jnp.integer), "float": jnp.issubdtype(dt, jnp.floating),
              "bool": dt == bool, "any": True}[kind]
        if not ok:
            raise BatchError(f"{task} batch[{key!r}] must be {kind}, got {dt}")
    sizes = {k: np.shape(batch[k])[0] for k in batch}
    if len(set(sizes.values())) > 1:
        raise BatchError(f"{task} batch arrays disagree on the batch size: {sizes}")


def summarize(sums: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Accumulated {name: (sum, count)} -> {name: sum / count}: a float for scalar sums, a numpy array
    (elementwise) for array sums."""
    out: dict[str, Any] = {}
    for key, (total, count) in sums.items():
        mean = np.asarray(total, np.float64) / np.maximum(np.asarray(count, np.float64), 1e-12)
        out[key] = float(mean) if mean.ndim == 0 else mean
    return out


def accumulate(total: Metrics | None, new: Metrics) -> Metrics:
    if total is None:
        return dict(new)
    return {k: (total[k][0] + s, total[k][1] + c) for k, (s, c) in new.items()}


def scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a summary (what the trainer logs); array entries are left out."""
    return {k: float(v) for k, v in summary.items() if np.ndim(v) == 0}

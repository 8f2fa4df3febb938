"""Optimiser from config: AdamW with linear warmup then cosine decay, global-norm clipping, and an
optional trainable subset (config.trainable) outside which parameters are frozen."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import optax

from fintrans.models.config import ConfigError
from fintrans.layers.stack import per_block_ndim

OPTIMIZERS = ("adamw", "sgd")


def learning_rate_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    peak = cfg["learning_rate"]
    warmup = min(int(cfg.get("warmup_steps", 0)), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak * cfg.get("end_lr_ratio", 0.0))


def _decay_mask(params):
    # No weight decay on biases and norm scales (rank-1 parameters), as is standard for transformers;
    # the rank within one block, so a scanned stack's [layers, features] biases are still excluded.
    return jax.tree_util.tree_map_with_path(lambda path, p: per_block_ndim(path, p) > 1, params)


def parse_trainable(spec: str) -> tuple[str, ...]:
    """config.trainable -> its patterns: comma-separated regexes ('' = everything trainable)."""
    return tuple(p.strip() for p in (spec or "").split(",") if p.strip())


def param_path(path) -> str:
    """'/'-joined dict keys of a tree path ('block_0/attention/query/kernel'); logical-axis boxes'
    attribute keys are skipped, so boxed and unboxed trees give the same paths."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def trainable_mask(params: Any, patterns: Sequence[str]) -> Any:
    """A tree of bools like `params`: True where a parameter's path matches one of `patterns`.

    A pattern matches a path or a prefix of it that ends at a '/' ('head' selects 'head/kernel' and
    'head/bias'; 'block_.*/attention' every block's attention). A pattern that selects nothing is a
    ConfigError naming it, so a typo never silently freezes the whole model."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(f"(?:{pattern})(?:/.*)?"))
        except re.error as e:
            raise ConfigError(f"config.trainable pattern {pattern!r} is not a valid regex: {e}") from None
    paths = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    unmatched = [pat for pat, rx in zip(patterns, compiled) if not any(rx.fullmatch(p) for p in paths)]
    if unmatched:
        raise ConfigError(f"config.trainable pattern(s) {unmatched} match no parameter; parameter paths look like "
                          f"{paths[:6]} (top level: {sorted({p.split('/')[0] for p in paths})})")
    return jax.tree_util.tree_map_with_path(lambda p, _: any(rx.fullmatch(param_path(p)) for rx in compiled), params)


def make_optimizer(cfg: Mapping[str, Any], total_steps: int,
                   trainable: Sequence[str] = ()) -> optax.GradientTransformation:
    """With `trainable` patterns, only the matching parameters are updated (and decayed, and clipped
    together); the others get zero updates and no optimizer state at all (optax.set_to_zero)."""
    name = cfg.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r} is not valid; choose from {OPTIMIZERS}")
    schedule = learning_rate_schedule(cfg, total_steps)
    if name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), eps=cfg.get("eps", 1e-8),
                          weight_decay=cfg.get("weight_decay", 0.0), mask=_decay_mask)
    else:
        opt = optax.sgd(schedule, momentum=cfg.get("momentum", 0.9))
    clip = cfg.get("grad_clip_norm", 0.0)
    opt = optax.chain(optax.clip_by_global_norm(clip), opt) if clip else opt
    if not trainable:
        return opt
    labels = lambda params: jax.tree.map(lambda t: "train" if t else "frozen",  # noqa: E731
                                         trainable_mask(params, trainable))
    return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)

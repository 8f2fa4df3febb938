"""Optimiser from config: AdamW with linear warmup then cosine decay, global-norm clipping."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

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


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
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
    return optax.chain(optax.clip_by_global_norm(clip), opt) if clip else opt

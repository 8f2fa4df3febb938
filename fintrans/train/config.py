"""The experiment config schema: defaults for every trainer field, and validation.

Experiment configs (experiments/configs/NAME.py) start from `default_config()` and fill in the
model, data and task; `validate` rejects unknown keys with the valid ones listed, so a typo on
the command line (--config.totl_steps=...) fails at once instead of being ignored.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from fintrans import models
from fintrans.models.config import DTYPES, ConfigError
from fintrans.train.checkpoint import ON_UNREADABLE

RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.rng_impl = "threefry2x32"  # or 'rbg' / 'unsafe_rbg' (faster on TPU; see Trainer)
    c.task = ""  # fintrans.tasks name: lm | classification | forecasting | segmentation | ...
    c.task_options = ml_collections.ConfigDict()  # the task class's keyword options (fintrans.tasks.build)
    c.model = ml_collections.ConfigDict({"name": ""})  # plus the model config's fields
    # Plus the dataset's own fields (see fintrans.data). data_dir None: $FINTRANS_DATA_DIR or
    # ~/.cache/fintrans/tfds; prepare: build the dataset there if it is missing.
    c.data = ml_collections.ConfigDict({"name": "", "data_dir": ml_collections.config_dict.placeholder(str),
                                        "prepare": True})
    c.batch_size = 32  # global, across all hosts
    c.eval_batch_size = 64
    c.total_steps = 1000
    c.compute_dtype = ""  # '' keeps the model's dtype; 'bfloat16' computes in bf16 (params stay float32)
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, warmup_steps=100, end_lr_ratio=0.1, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.01, momentum=0.9, grad_clip_norm=1.0))
    c.log_every = 50
    c.eval_every = 500
    c.eval_batches = -1  # -1: the whole validation split
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    # Early stopping's model selection: after each evaluation, keep the parameters with the best
    # eval/<best_metric> ('loss', 'accuracy', ...; '' keeps none) in WORKDIR/best; train_and_evaluate
    # returns them as result['best'].
    c.best_metric = ""
    c.best_mode = "min"  # or 'max'
    # Early stopping (needs best_metric and eval_every): > 0 stops training, with a checkpoint, once this
    # many evaluations in a row bring no new best; a rerun of a stopped run trains nothing.
    c.early_stopping_patience = 0
    # Warm start (pretrain -> fine-tune): a fresh run (no checkpoint of its own yet) takes its parameters
    # and model state (BatchNorm statistics) from another run's latest checkpoint (its workdir); those under
    # the comma-separated paths of init_from_keep_fresh ('head') keep their fresh initialisation. The
    # optimizer state starts fresh.
    c.init_from = ""
    c.init_from_keep_fresh = ""
    # Fine-tune a subset: comma-separated regexes over '/'-joined parameter paths ('head',
    # 'block_.*/attention'); a pattern matches a path or a prefix of it ending at '/'. Every other
    # parameter is frozen: no update, no weight decay, no optimizer state. '' trains everything.
    c.trainable = ""
    # > 0: keep an exponential moving average of the parameters (ema <- d·ema + (1-d)·params after each
    # step, starting from the initial parameters); evaluation, best_metric's params and result['params'] use it.
    c.ema_decay = 0.0
    # A checkpoint that cannot be read (a truncated or damaged file): 'fallback' resumes from the newest
    # older one that reads, with a warning naming both, and moves the damaged one aside; 'stop' raises
    # CheckpointUnreadableError naming it and the older ones. 'fallback' by default: a preempted job
    # restarted unattended loses only the steps since that older checkpoint instead of idling until
    # someone reads the error.
    c.on_unreadable_checkpoint = "fallback"
    c.max_steps_per_run = 0  # >0: stop (with a checkpoint) after this many steps, e.g. for job time limits
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn=ml_collections.ConfigDict(dict(data=1))))
    c.sharding_rules = ml_collections.ConfigDict()  # logical axis -> mesh axis overrides
    c.multihost = False  # jax.distributed.initialize() at start (TPU pods, GPU clusters)
    c.progress_bar = True
    c.sample = ml_collections.ConfigDict(dict(num_examples=4, prompt_len=32, num_tokens=200, temperature=0.8,
                                             top_k=0))
    return c


def _check_keys(cfg, ref, prefix=""):
    for key in cfg.keys():
        if key not in ref:
            raise ConfigError(f"unknown config key {prefix + key!r}; valid keys here: {sorted(ref.keys())}")
        if isinstance(ref[key], ml_collections.ConfigDict) and ref[key].keys() and key not in ("sharding_rules",):
            _check_keys(cfg[key], ref[key], prefix + key + ".")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks trainer fields; model and data fields are checked by their own config classes."""
    ref = default_config()
    for key in config.keys():
        if key not in ref:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {sorted(ref.keys())}")
    for key in ("optimizer", "mesh", "sample"):
        if key in config:
            _check_keys(config[key], ref[key], key + ".")
    for key in ("task",):
        if not config.get(key):
            raise ConfigError(f"config.{key} is not set")
    for key in ("model", "data"):
        if not config.get(key, {}).get("name"):
            raise ConfigError(f"config.{key}.name is not set")
    for key in ("batch_size", "eval_batch_size", "total_steps", "log_every", "keep_checkpoints"):
        value = config.get(key, ref[key])
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"config.{key}={value!r} must be a positive integer")
    if config.get("rng_impl", ref.rng_impl) not in RNG_IMPLS:
        raise ConfigError(f"config.rng_impl={config.rng_impl!r}; choose from {RNG_IMPLS}")
    if config.get("on_unreadable_checkpoint", ref.on_unreadable_checkpoint) not in ON_UNREADABLE:
        raise ConfigError(f"config.on_unreadable_checkpoint={config.on_unreadable_checkpoint!r}; choose from "
                          f"{ON_UNREADABLE}")
    if config.get("best_mode", ref.best_mode) not in ("min", "max"):
        raise ConfigError(f"config.best_mode={config.best_mode!r}; choose 'min' or 'max'")
    patience = config.get("early_stopping_patience", ref.early_stopping_patience)
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
        raise ConfigError(f"config.early_stopping_patience={patience!r} must be a non-negative integer (0: off)")
    if patience and not (config.get("best_metric") and config.get("eval_every", ref.eval_every) > 0):
        raise ConfigError(f"config.early_stopping_patience={patience} needs config.best_metric (the metric whose "
                          "best it waits for) and config.eval_every > 0")
    if config.get("init_from_keep_fresh") and not config.get("init_from"):
        raise ConfigError("config.init_from_keep_fresh is set but config.init_from is not")
    ema = config.get("ema_decay", ref.ema_decay)
    if not isinstance(ema, (int, float)) or isinstance(ema, bool) or not 0.0 <= ema < 1.0:
        raise ConfigError(f"config.ema_decay={ema!r} must be a float in [0, 1) (0 turns the EMA off)")
    if not isinstance(config.get("trainable", ""), str):
        raise ConfigError(f"config.trainable={config.trainable!r} must be a string of comma-separated patterns")
    if config.get("compute_dtype", "") not in ("",) + tuple(DTYPES):
        raise ConfigError(f"config.compute_dtype={config.compute_dtype!r}; choose from {('',) + tuple(DTYPES)}")
    return config


def model_fields(name: str, **overrides) -> ml_collections.ConfigDict:
    """config.model for `name`: every field of its config class at its default, then `overrides`.

    Listing every field lets the command line override any of them (--config.model.num_layers=8)
    while the locked config still rejects a field the model does not have.
    """
    cls = models.get(name).config
    values = dataclasses.asdict(cls.from_dict(overrides))  # validates the overrides
    return ml_collections.ConfigDict({"name": name, **values})

"""The one trainer: `train_and_evaluate(config, workdir)` for every model and task.

Sharded init, a jitted train step with in/out shardings and a donated state, periodic evaluation,
checkpoints (state + data iterator) with automatic resume, a save on SIGTERM, metrics to
metrics.jsonl and TensorBoard, a progress bar on process 0, and a stop on a non-finite loss that
leaves the last good checkpoint as the latest.

The task owns the forward passes: each step calls `task.loss_and_metrics(apply_fn, params, batch,
rng, train=...)`, where `apply_fn` (a `ModelCaller`) runs the model with the mutable model state
(BatchNorm statistics) threaded through and collects sown auxiliary losses. Hooks: model state in
TrainState, `config.trainable` (freeze all other parameters), `config.ema_decay` (EMA parameters
for evaluation).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from fintrans import axes, data, models, parallel, tasks
from fintrans.layers.dropout import per_shard_dropout
from fintrans.models.config import ConfigError
from fintrans.train import checkpoint as ckpt
from fintrans.train import metrics as metrics_lib
from fintrans.train.config import validate
from fintrans.train.optim import (learning_rate_schedule, make_optimizer, param_path, parse_trainable,
                                  trainable_mask)
from fintrans.train.state import TrainState

log = logging.getLogger("fintrans.train")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (the handler only sets it)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside some notebook runners)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            # Every host must stop at the same step to write one consistent checkpoint.
            from jax.experimental import multihost_utils
            flag = multihost_utils.process_allgather(np.array(self.requested))
            return bool(np.any(flag))
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def build_model(config: ml_collections.ConfigDict, info: dict):
    """The model module and its validated config, with compute_dtype applied and the fields the model
    takes from the data (its config's DATA_FIELDS) filled in or checked."""
    fields = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    if config.get("compute_dtype"):
        fields["dtype"] = config.compute_dtype
    spec = models.get(config.model.name)
    fields = resolve_data_fields(spec.config, fields, info, config.data)
    model_cfg = spec.config.from_dict(fields)
    known = data_values(info, config.data)
    length = known.get("seq_len", known.get("max_len"))
    if hasattr(model_cfg, "max_len") and length is not None and model_cfg.max_len < length:
        raise ConfigError(f"model.max_len={model_cfg.max_len} is shorter than the dataset's sequences ({length})")
    return spec.module(model_cfg), model_cfg


def data_values(info: dict, data_cfg) -> dict:
    """What the data says about itself: the data config's fields, overridden by the dataset info."""
    known = {**{k: v for k, v in data_cfg.items()}, **info}
    if "channels" in info and "num_channels" not in info and isinstance(info["channels"], int):
        known["num_channels"] = info["channels"]
    return known


def _as_tuples(value):
    # JSON info and ml_collections give lists where dataclass fields hold tuples.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


_MISSING = object()


def _lookup(known: dict, key: str):
    """known[key], where a dotted key reads into nested mappings ('shapelets.shapelet_starts')."""
    value = known
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def resolve_data_fields(config_cls, fields: dict, info: dict, data_cfg) -> dict:
    """`fields` with each of config_cls.DATA_FIELDS set from the data where it is None; a value that
    disagrees with the data is a ConfigError naming both, before anything compiles."""
    known = data_values(info, data_cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    fields = dict(fields)
    for field, key in config_cls.DATA_FIELDS.items():
        value = fields.get(field, defaults.get(field))
        data_value = _lookup(known, key)
        if data_value is _MISSING:
            if value is None:
                raise ConfigError(f"model.{field} is None (take it from the data), but dataset {info.get('name')!r} "
                                  f"has no {key!r}; set model.{field}")
            continue
        if value is None:
            fields[field] = data_value
        elif _as_tuples(value) != _as_tuples(data_value):
            raise ConfigError(f"model.{field}={value} but dataset {info.get('name')!r} has {key}={data_value} "
                              f"(set model.{field}=None to take it from the data)")
    return fields


# Collections of init's output that are not model state: the parameters, and what apply writes that
# does not carry over to the next step (sown losses, intermediates).
_NOT_MODEL_STATE = ("params", "aux_loss", "intermediates")


class ModelCaller:
    """The `apply_fn` a task's loss receives: `apply_fn(params, batch, *, rng=None, **model_kwargs)`.

    Each call runs `model.apply` with the current model state; in training the mutable collections
    come back and become the state the next call (and the next step) sees, and values sown into
    "aux_loss" are summed into `aux_losses`. In evaluation the state is used, never updated; so is it
    in a training call the task makes with `train=False` (a deterministic pass, e.g. a target)."""

    def __init__(self, model: nn.Module, model_state: dict, *, train: bool):
        self.model, self.model_state, self.train = model, model_state, train
        self.aux_losses: dict[str, jax.Array] = {}

    def __call__(self, params, batch, *, rng=None, **model_kwargs):
        variables = {"params": params, **self.model_state}
        rngs = {"dropout": rng} if rng is not None else None
        if not model_kwargs.pop("train", self.train):
            return self.model.apply(variables, batch, train=False, rngs=rngs, **model_kwargs)
        mutable = [*self.model_state, "aux_loss"]
        outputs, updates = self.model.apply(variables, batch, train=True, rngs=rngs, mutable=mutable,
                                            **model_kwargs)
        updates = dict(updates)
        for path, value in jax.tree_util.tree_leaves_with_path(updates.pop("aux_loss", {})):
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path[:-1])  # drop sow's tuple index
            self.aux_losses[name] = self.aux_losses.get(name, 0.0) + jnp.sum(value)
        self.model_state = {**self.model_state, **updates}
        return outputs

    @property
    def aux_loss(self) -> jax.Array | None:
        return sum(self.aux_losses.values()) if self.aux_losses else None


class Trainer:
    """Holds what the loop and evaluation share; `train_and_evaluate` drives it."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | None, *, devices=None):
        """`devices` (default: all of this job's) lets experiments.aot build the mesh on a TPU
        topology's devices; `workdir` None means nothing is written (compilation only)."""
        self.config = validate(config)
        if devices is None:
            parallel.initialize(config.get("multihost", False))
        self.workdir = Path(workdir) if workdir is not None else None
        self.is_main = jax.process_index() == 0
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.mesh = parallel.make_mesh(config.mesh.to_dict(), devices=devices)
        self.rules = axes.rules(config.sharding_rules.to_dict() if config.get("sharding_rules") else None)
        self.task = tasks.build(config.task, config.get("task_options"))
        self.dataset = data.load(config.data)
        self.model, self.model_config = build_model(config, self.dataset.info)
        self.model_spec = models.get(config.model.name)  # tasks reach model hooks (generate) through it
        self.trainable = parse_trainable(config.get("trainable", ""))
        self.ema_decay = float(config.get("ema_decay", 0.0))
        self.tx = make_optimizer(config.optimizer, config.total_steps, self.trainable)
        self.lr = learning_rate_schedule(config.optimizer, config.total_steps)
        self.batch_sharding = parallel.batch_sharding(self.mesh, self.rules)
        shards = parallel.batch_shards(self.batch_sharding)
        for name in ("batch_size", "eval_batch_size"):
            if config[name] % shards:
                raise ConfigError(f"config.{name}={config[name]} cannot be split over the {shards} batch shards of "
                                  f"mesh {dict(zip(self.mesh.axis_names, self.mesh.devices.shape))}")
        # Train step t uses fold_in(base_rng, t). 'rbg' keys compile much faster on TPU than threefry
        # (the lm_chars dropout step for v5e: 2 min instead of over 10), but their bits may depend on
        # the sharding; threefry's do not.
        self.base_rng = jax.random.key(config.seed, impl=config.get("rng_impl", "threefry2x32"))
        self.init_rng = jax.random.fold_in(self.base_rng, 0x1417)
        # Evaluation batch i gets fold_in(eval_rng, i), for tasks that draw noise in evaluation too.
        self.eval_rng = jax.random.fold_in(self.base_rng, 0xE7A1)
        self.model_state: dict = {}  # what predict() uses; train_and_evaluate sets the trained state
        self._predict_fn = None

    # -- state ---------------------------------------------------------------------------------
    def example_batch(self) -> dict[str, np.ndarray]:
        """One host-local training batch, from an iterator of its own (the real one is untouched)."""
        it = self.dataset.iterator("train", self.config.batch_size, shuffle=False, seed=self.config.seed)
        batch = next(iter(it))
        self.task.check_batch(batch)
        return batch

    def boxed_init_fn(self, example: dict[str, np.ndarray]):
        """rng -> TrainState whose params keep their logical-axis boxes (for eval_shape / sharded init)."""
        global_shapes = {k: ((self.config.batch_size,) + v.shape[1:], v.dtype) for k, v in example.items()}

        def boxed_init(rng):
            dummy = {k: jnp.zeros(s, d) for k, (s, d) in global_shapes.items()}
            variables = self.model.init({"params": rng, "dropout": rng}, dummy, train=False)
            params = variables["params"]
            model_state = {k: v for k, v in variables.items() if k not in _NOT_MODEL_STATE}
            return TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=self.tx.init(params),
                              model_state=model_state, ema_params=params if self.ema_decay else None)

        return boxed_init

    def init_state(self, example: dict[str, np.ndarray]) -> tuple[TrainState, Any]:
        return parallel.sharded_init(self.boxed_init_fn(example), self.mesh, self.rules, self.init_rng)

    # -- steps ---------------------------------------------------------------------------------
    def make_train_step(self, state_shardings):
        model, task, tx, lr, base_rng = self.model, self.task, self.tx, self.lr, self.base_rng
        trainable, ema_decay = self.trainable, self.ema_decay

        @per_shard_dropout()  # no device builds a global-size dropout mask (fintrans.layers.dropout)
        def train_step(state: TrainState, batch):
            dropout_rng = jax.random.fold_in(base_rng, state.step)

            def loss_fn(params):
                apply_fn = ModelCaller(model, state.model_state, train=True)
                loss, _ = task.loss_and_metrics(apply_fn, params, batch, dropout_rng, train=True)
                aux = apply_fn.aux_loss
                total = loss if aux is None else loss + aux
                return total, (loss, None if aux is None else (aux, apply_fn.aux_losses), apply_fn.model_state)

            (_, (loss, aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            if trainable:  # frozen parameters pass through untouched (p + 0.0 would turn -0.0 into 0.0)
                mask = trainable_mask(state.params, trainable)
                params = jax.tree.map(lambda p, u, t: p + u if t else p, state.params, updates, mask)
                grads = [g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(mask)) if t]
            else:
                params = jax.tree.map(lambda p, u: p + u, state.params, updates)
            ema = state.ema_params
            if ema is not None:
                ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
            scalars = {"loss": loss, "grad_norm": _global_norm(grads), "learning_rate": lr(state.step)}
            if aux is not None:  # the model's sown auxiliary losses: their sum, and each by name
                scalars["aux_loss"] = aux[0]
                scalars.update({f"aux_loss/{name}": value for name, value in aux[1].items()})
            new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
                                   ema_params=ema)
            return new_state, scalars

        return jax.jit(train_step, in_shardings=(state_shardings, self.batch_sharding),
                       out_shardings=(state_shardings, parallel.replicated(self.mesh)), donate_argnums=0)

    def make_eval_step(self, param_shardings, model_state_shardings=None):
        """eval_step(params, model_state, batch, rng) -> metric sums."""
        model, task = self.model, self.task

        def eval_step(params, model_state, batch, rng):
            apply_fn = ModelCaller(model, model_state, train=False)
            return task.loss_and_metrics(apply_fn, params, batch, rng, train=False)[1]

        replicated = parallel.replicated(self.mesh)
        return jax.jit(eval_step, in_shardings=(param_shardings, model_state_shardings or replicated,
                                                self.batch_sharding, replicated),
                       out_shardings=replicated)

    def evaluate(self, eval_step, params, split: str = "validation", model_state=None) -> dict[str, Any]:
        """Metric means over `split` (scalars, and arrays for array sums), plus the task's derived ones."""
        it = self.dataset.iterator(split, self.config.eval_batch_size, shuffle=False, num_epochs=1)
        model_state = self.model_state if model_state is None else model_state
        total = None
        for i, local in enumerate(it):
            if 0 <= self.config.eval_batches <= i:
                break
            batch = parallel.global_batch(local, self.batch_sharding)
            total = tasks.accumulate(total, eval_step(params, model_state, batch, jax.random.fold_in(self.eval_rng, i)))
        if total is None:
            raise ValueError(f"the {split!r} split of {self.dataset.info.get('name')!r} gave no evaluation batch")
        summary = tasks.summarize(jax.device_get(total))
        return {**summary, **self.task.derived(summary)}

    # -- what tasks' `sample` uses (the `run` of Task.sample) -------------------------------------
    def first_batch(self, split: str) -> dict[str, np.ndarray]:
        """This host's first evaluation batch of `split`."""
        it = self.dataset.iterator(split, self.config.eval_batch_size, shuffle=False, num_epochs=1)
        return next(iter(it))

    def predict(self, params, batch) -> tuple[Any, dict[str, np.ndarray]]:
        """Outputs on `batch` (this host's rows, with the trained model state) and the batch itself, both
        gathered from every host: each process gets the same global arrays, so predictions and their
        inputs/labels stay row-aligned."""
        global_batch = parallel.global_batch(batch, self.batch_sharding)
        if self._predict_fn is None:  # jitted once: a sampler may call predict at every step (DDIM)
            self._predict_fn = jax.jit(lambda p, s, b: self.model.apply({"params": p, **s}, b, train=False))
        out = self._predict_fn(params, self.model_state, global_batch)
        gathered = multihost_utils.process_allgather({"out": out, "batch": global_batch}, tiled=True)
        return (jax.tree.map(np.asarray, gathered["out"]),
                {k: np.asarray(v) for k, v in gathered["batch"].items()})


class _PendingMetrics:
    """Train-step scalars left on the device and fetched in groups, so steps dispatch without a
    host sync each."""

    def __init__(self):
        self._steps: list[tuple[int, dict]] = []
        self._fetched: list[dict] | None = None
        self._since = time.perf_counter()

    def add(self, step: int, scalars: dict) -> None:
        self._steps.append((step, scalars))
        self._fetched = None

    def _host(self) -> list[dict]:
        if self._fetched is None:
            self._fetched = jax.device_get([m for _, m in self._steps])
        return self._fetched

    def first_nonfinite_loss(self) -> tuple[int, float] | None:
        for (step, _), m in zip(self._steps, self._host()):
            if not math.isfinite(float(m["loss"])):
                return step, float(m["loss"])
        return None

    def mean_and_clear(self) -> dict[str, float]:
        """{'train/NAME': mean over the pending steps, 'train/steps_per_second': ...}; {} if none."""
        fetched = self._host()
        if not fetched:
            return {}
        mean = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
        now = time.perf_counter()
        mean["train/steps_per_second"] = len(fetched) / max(now - self._since, 1e-9)
        self._steps, self._fetched, self._since = [], None, now
        return mean


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _model_state_paths_under(model_state: dict, keep_fresh: tuple[str, ...]) -> tuple[str, ...]:
    """init_from_keep_fresh names parameter paths ('head'); a layer kept fresh keeps fresh statistics
    too: the model-state paths under those ('batch_stats/head')."""
    paths = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(model_state)]
    prefixes = [f"{collection}/{k.rstrip('/')}" for collection in model_state for k in keep_fresh]
    return tuple(x for x in prefixes if any(p == x or p.startswith(x + "/") for p in paths))


def _warm_start(state: TrainState, cfg: ml_collections.ConfigDict) -> tuple[TrainState, dict]:
    """`state` with its parameters, and its model state (BatchNorm statistics) if it has one, taken from
    the run at cfg.init_from (see checkpoint.transfer_params)."""
    source, source_step = ckpt.read_state(cfg.init_from)
    keep_fresh = tuple(filter(None, (p.strip() for p in cfg.get("init_from_keep_fresh", "").split(","))))
    try:
        params, unused = ckpt.transfer_params(source["params"], state.params, keep_fresh=keep_fresh)
        model_state = state.model_state
        if jax.tree.leaves(model_state):
            model_state, _ = ckpt.transfer_params(source.get("model_state", {}), model_state,
                                                  keep_fresh=_model_state_paths_under(model_state, keep_fresh))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    log.info("initialised from step %d of %s (kept fresh: %s; not used from there: %s)", source_step,
             cfg.init_from, list(keep_fresh), unused)
    # The EMA starts from the parameters training starts from.
    ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
    return (state.replace(params=params, model_state=model_state, ema_params=ema),
            {"path": cfg.init_from, "step": source_step, "unused": unused})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final state, the
    parameters evaluation used ('params': the EMA with config.ema_decay, else state.params) and the
    model state ('model_state'), the last metrics, the sample shown, and with config.best_metric the
    best evaluation's {'step', 'eval', 'params', 'model_state'} as 'best'; 'stopped_early' is the step
    where config.early_stopping_patience stopped the run (None if it did not)."""
    t = Trainer(config, workdir)
    cfg = t.config
    example = t.example_batch()
    state, shardings = t.init_state(example)
    checkpointer = ckpt.Checkpointer(t.workdir / "checkpoints", every=cfg.get("checkpoint_every", 0),
                                     keep=cfg.keep_checkpoints)
    train_it = iter(t.dataset.iterator("train", cfg.batch_size, shuffle=True, seed=cfg.seed))
    start, restored = checkpointer.restore_latest(ckpt.abstract_like(state), train_it,
                                                  on_unreadable=cfg.on_unreadable_checkpoint)
    results: dict[str, Any] = {"resumed_from": start}
    if start is not None:
        state = restored
        if t.is_main:
            metrics_lib.truncate_after(t.workdir, start)
        log.info("resumed from step %d in %s", start, checkpointer.directory)
    elif cfg.get("init_from"):
        state, results["init_from"] = _warm_start(state, cfg)
    start = int(start or 0)
    best = (ckpt.BestParams(t.workdir / "best", metric=cfg.best_metric, mode=cfg.best_mode)
            if cfg.get("best_metric") else None)
    if best is not None:
        best.resume(start)

    writer = metrics_lib.MetricWriter(t.workdir, enabled=t.is_main)
    train_step = t.make_train_step(shardings)
    eval_step = t.make_eval_step(shardings.params, shardings.model_state)
    last_good = start if checkpointer.latest_step() is not None else None
    pending = _PendingMetrics()
    run_limit = cfg.get("max_steps_per_run", 0)
    patience = cfg.get("early_stopping_patience", 0)

    def out_of_patience(at: int) -> bool:
        """Whether `patience` evaluations (every eval_every steps) have passed since the best one. Computed
        from the steps alone, so a resumed run knows whether the run it resumes had already stopped."""
        return bool(patience) and best.step is not None and \
            at // cfg.eval_every - best.step // cfg.eval_every >= patience

    results["stopped_early"] = start if start and out_of_patience(start) else None
    bar = tqdm(total=cfg.total_steps, initial=start, disable=not (t.is_main and cfg.progress_bar),
               desc=f"{cfg.model.name} on {cfg.data.name}", dynamic_ncols=True)

    def flush(step: int) -> None:
        """Logs the steps since the last flush; stops on a non-finite loss before anything is saved."""
        bad = pending.first_nonfinite_loss()
        if bad is not None:
            raise NonFiniteLossError(
                f"loss is {bad[1]} at step {bad[0]}; stopping. The latest checkpoint "
                f"({'step ' + str(last_good) if last_good is not None else 'none yet'} in "
                f"{checkpointer.directory}) holds the last good state. Lower optimizer.learning_rate, "
                "set optimizer.grad_clip_norm, or use compute_dtype='float32'.")
        mean = pending.mean_and_clear()
        if mean:
            writer.write(step, mean)
            bar.set_postfix(loss=f"{mean['train/loss']:.4f}")
            results["train"] = mean

    step = start
    try:
        with _Preemption() as preemption, jax.set_mesh(t.mesh), nn.logical_axis_rules(t.rules):
            while step < cfg.total_steps and results["stopped_early"] is None:
                batch = parallel.global_batch(next(train_it), t.batch_sharding)
                state, scalars = train_step(state, batch)
                step += 1
                bar.update(1)
                pending.add(step, scalars)
                final = step == cfg.total_steps
                stop = preemption.should_stop(step) or (run_limit and step - start >= run_limit)
                if step % cfg.log_every == 0 or final or stop:
                    flush(step)
                if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or final:
                    summary = t.evaluate(eval_step, state.eval_params, model_state=state.model_state)
                    results["eval"] = {f"eval/{k}": v for k, v in tasks.scalars(summary).items()}
                    writer.write(step, results["eval"])
                    if best is not None:
                        best.offer(step, state.eval_params, results["eval"], model_state=state.model_state)
                    if out_of_patience(step):
                        results["stopped_early"] = step
                        stop = True
                if checkpointer.due(step) or final or stop:
                    flush(step)
                    checkpointer.save(step, state, train_it)
                    last_good = step
                    if best is not None:
                        best.checkpointed(step)
                if stop:
                    reason = ("SIGTERM" if preemption.requested else
                              f"no better eval/{cfg.best_metric} in {patience} evaluations since step {best.step}"
                              if results["stopped_early"] else "max_steps_per_run")
                    log.warning("stopping at step %d (%s); checkpoint saved", step, reason)
                    break
            flush(step)
        if best is not None and best.step is not None:
            results["best"] = {"step": best.step, "eval": best.metrics,
                               "params": best.restore(ckpt.abstract_like(state.params)),
                               "model_state": best.restore_model_state(ckpt.abstract_like(state.model_state))}
    finally:
        bar.close()
        checkpointer.close()
        writer.close()
        if best is not None:
            best.close()

    results.update(state=state, params=state.eval_params, model_state=state.model_state, step=step, model=t.model,
                   model_config=t.model_config, dataset=t.dataset)
    if step == cfg.total_steps:
        t.model_state = state.model_state
        with jax.set_mesh(t.mesh), nn.logical_axis_rules(t.rules):
            results["sample"] = t.task.sample(t, state.eval_params, print_fn=print if t.is_main else (lambda *_: None))
    return results


def evaluate_params(config: ml_collections.ConfigDict, params: Any,
                    splits: tuple[str, ...] = ("validation", "test"), *, model_state: Any = None) -> dict[str, float]:
    """{'SPLIT/METRIC': value} of `params` (e.g. a finished run's result['params'] or result['best']['params'])
    on each split. Models with state (BatchNorm statistics) need the run's `model_state` as well
    (result['model_state'] or result['best']['model_state']); without it the freshly initialised state is used.

    The training loop only ever evaluates on `validation`; experiment scripts score the test split with
    this, once, after training."""
    t = Trainer(config, None)
    fresh, shardings = t.init_state(t.example_batch())
    eval_step = t.make_eval_step(shardings.params, shardings.model_state)
    model_state = fresh.model_state if model_state is None else model_state
    with jax.set_mesh(t.mesh), nn.logical_axis_rules(t.rules):
        out = {split: tasks.scalars(t.evaluate(eval_step, params, split, model_state)) for split in splits}
    return {f"{split}/{k}": v for split, m in out.items() for k, v in m.items()}


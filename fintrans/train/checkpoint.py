"""Checkpoints: the train state and the data iterator (`Checkpointer`), the best-evaluated parameters
(`BestParams`), and reading another run's parameters to start from (`read_params`, `transfer_params`).

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a partial checkpoint as the latest: a checkpoint is whole or absent. A whole
checkpoint can still be damaged later (bit rot, a file truncated by a full disk or a copy cut short):
`Checkpointer.restore_latest` names it (`CheckpointUnreadableError`) and can fall back to an older one.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("fintrans.train")

ON_UNREADABLE = ("fallback", "stop")


class CheckpointUnreadableError(RuntimeError):
    """A checkpoint that exists cannot be restored (a damaged, truncated or missing file).

    `step` is the unreadable checkpoint, `older_steps` the checkpoints older than it (newest first)."""

    def __init__(self, message: str, *, step: int, older_steps: list[int], directory: Path):
        super().__init__(message)
        self.step, self.older_steps, self.directory = step, older_steps, directory


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int):
        self.directory = Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """Restores the state (into `abstract_state`'s shardings) and the iterator in place."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored["state"]

    def restore_latest(self, abstract_state: Any, data_iterator: Any, *,
                       on_unreadable: str = "fallback") -> tuple[Optional[int], Any]:
        """(step, state) of the newest checkpoint that restores (the iterator restored in place), or
        (None, None) when there is no checkpoint.

        A checkpoint that fails to restore is, with on_unreadable='stop', a CheckpointUnreadableError
        naming it, why, and the older checkpoints. With 'fallback' each unreadable one is logged as a
        warning and the next older one tried; once one restores, the unreadable newer ones are renamed
        to '<step>.unreadable' (kept for inspection, and out of the way of the steps this run saves
        again). If none restores, the error lists them all and nothing is renamed: when every
        checkpoint fails, the config more likely no longer matches them than they are all damaged."""
        if on_unreadable not in ON_UNREADABLE:
            raise ValueError(f"on_unreadable={on_unreadable!r}; choose from {ON_UNREADABLE}")
        steps = sorted(self.all_steps(), reverse=True)
        unreadable: list[tuple[int, str]] = []
        for i, step in enumerate(steps):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except Exception as e:  # orbax wraps TensorStore's errors in a bare Exception
                reason, older = _root_cause(e), steps[i + 1:]
                if on_unreadable == "stop":
                    raise CheckpointUnreadableError(
                        f"checkpoint step {step} in {self.directory} cannot be read: {reason}. "
                        + (f"Older checkpoints: steps {older}. Set config.on_unreadable_checkpoint='fallback' to "
                           f"resume from the newest of them that reads" if older else
                           "There is no older checkpoint")
                        + f", or move {self.directory / str(step)} away to make the run ignore it.",
                        step=step, older_steps=older, directory=self.directory) from e
                log.warning("checkpoint step %d in %s cannot be read (%s); trying the older ones: %s",
                            step, self.directory, reason, older)
                unreadable.append((step, reason))
                continue
            if unreadable:
                moved = self._set_aside([s for s, _ in unreadable])
                log.warning("RESUMING FROM STEP %d, NOT FROM THE LATEST CHECKPOINT %d, which cannot be read (%s); "
                            "the unreadable checkpoint(s) were moved to %s", step, unreadable[0][0],
                            unreadable[0][1], [str(m) for m in moved])
            return step, state
        if unreadable:
            listed = "; ".join(f"step {s}: {r}" for s, r in unreadable)
            raise CheckpointUnreadableError(
                f"no checkpoint in {self.directory} can be read ({listed}). If they all fail the same way, the "
                f"config probably no longer matches the run that wrote them; otherwise move them away to start "
                f"afresh.", step=unreadable[0][0], older_steps=[s for s, _ in unreadable[1:]],
                directory=self.directory)
        return None, None

    def _set_aside(self, steps: list[int]) -> list[Path]:
        """Renames each step's directory to '<step>.unreadable[-<time>]' (which orbax does not list)."""
        moved = []
        for step in steps:
            source, target = self.directory / str(step), self.directory / f"{step}.unreadable"
            if target.exists():
                target = self.directory / f"{step}.unreadable-{time.time_ns()}"
            if jax.process_index() == 0:
                source.rename(target)
            moved.append(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("fintrans_checkpoint_set_aside")
        self._manager.reload()
        return moved

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost chained error (TensorStore's OUT_OF_RANGE / DATA_LOSS message)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding, to restore straight into place."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class BestParams:
    """The parameters of the evaluation with the best `metric` so far (early stopping's model selection),
    in their own directory: an orbax checkpoint (params + that evaluation's metrics) per new best.

    A run resumes from its latest train checkpoint and evaluates the steps after it again, so the best as
    of that checkpoint must outlive any later one: `checkpointed(step)` (after each train checkpoint)
    drops only the bests superseded by then, and `resume(step)` drops those saved after it."""

    def __init__(self, directory: str | os.PathLike, *, metric: str, mode: str):
        self.directory = Path(directory).absolute()
        self.metric, self.mode = metric, mode
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"params": ocp.StandardCheckpointHandler(), "metrics": ocp.JsonCheckpointHandler(),
                           "model_state": ocp.StandardCheckpointHandler()})
        self.step: Optional[int] = None
        self.metrics: dict[str, float] = {}

    def resume(self, step: int) -> None:
        """Forgets a best saved after `step` (the run resumes from there and will evaluate those steps again)."""
        for saved in self._manager.all_steps():
            if saved > step:
                self._manager.delete(saved)
        self.step = self._manager.latest_step()
        self.metrics = self._manager.restore(self.step, args=ocp.args.Composite(
            metrics=ocp.args.JsonRestore()))["metrics"] if self.step is not None else {}

    def checkpointed(self, step: int) -> None:
        """The run can no longer resume before `step`: of the bests up to it only the newest is needed."""
        for s in [s for s in self.saved_steps() if s <= step][:-1]:
            self._manager.delete(s)

    def saved_steps(self) -> list[int]:
        self._manager.wait_until_finished()
        return sorted(self._manager.all_steps())

    def offer(self, step: int, params: Any, metrics: dict[str, float], model_state: Any = None) -> bool:
        """Saves `params` (and the model state, e.g. BatchNorm statistics, if any) if `metrics` beat the
        best so far; returns whether they did."""
        key = f"eval/{self.metric}"
        if key not in metrics:
            raise ValueError(f"config.best_metric={self.metric!r} is not an evaluation metric; the evaluation reports "
                           f"{sorted(k.removeprefix('eval/') for k in metrics)}")
        value, best = metrics[key], self.metrics.get(key)
        if best is not None and not (value < best if self.mode == "min" else value > best):
            return False
        items = dict(params=ocp.args.StandardSave(params),
                     metrics=ocp.args.JsonSave({k: float(v) for k, v in metrics.items()}))
        if model_state:
            items["model_state"] = ocp.args.StandardSave(model_state)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.step, self.metrics = step, dict(metrics)
        return True

    def restore(self, abstract_params: Any) -> Any:
        self._manager.wait_until_finished()
        return self._manager.restore(self.step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params)))["params"]

    def restore_model_state(self, abstract_model_state: Any) -> Any:
        """The best evaluation's model state ({} for models without one)."""
        self._manager.wait_until_finished()
        if not jax.tree.leaves(abstract_model_state):
            return {}
        return self._manager.restore(self.step, args=ocp.args.Composite(
            model_state=ocp.args.StandardRestore(abstract_model_state)))["model_state"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def read_params(path: str | os.PathLike) -> tuple[Any, int]:
    """(params as host arrays, step) of the latest checkpoint under `path` (see read_state)."""
    state, step = read_state(path)
    return state["params"], step


def read_state(path: str | os.PathLike) -> tuple[dict, int]:
    """(the train state as a dict of host arrays, step) of the latest checkpoint under `path`: a run's
    workdir, its checkpoints/ directory, or one step's directory in it."""
    path = Path(path).absolute()
    if (path / "state").is_dir() and path.name.isdigit():
        directory, step = path.parent, int(path.name)
    else:
        directory, step = path, None
        for candidate in (path / "checkpoints", path):
            if candidate.is_dir():
                manager = ocp.CheckpointManager(candidate, options=ocp.CheckpointManagerOptions(read_only=True))
                step = manager.latest_step()
                manager.close()
                if step is not None:
                    directory = candidate
                    break
        if step is None:
            raise FileNotFoundError(f"config.init_from={str(path)!r} holds no checkpoint: give a run's workdir, its "
                                    f"checkpoints/ directory or one step's directory in it")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_handlers={"state": ocp.StandardCheckpointHandler()})
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        manager.close()
    return state, step


def transfer_params(source: Any, fresh: Any, *, keep_fresh: tuple[str, ...] = ()) -> tuple[Any, list[str]]:
    """`fresh` (a params tree) with every leaf taken from `source` where both have it, except those under a
    path in `keep_fresh` ('head', 'encoder/layer_0'). Returns (params, paths of source leaves left unused).

    A leaf of `fresh` missing from `source`, or of another shape, is an error naming it, not a silent
    re-initialisation: name it in keep_fresh to start it fresh on purpose."""
    fresh_flat = {"/".join(map(str, k)): v for k, v in _flatten(fresh).items()}
    source_flat = {"/".join(map(str, k)): v for k, v in _flatten(source).items()}
    kept = lambda p: any(p == k or p.startswith(k.rstrip("/") + "/") for k in keep_fresh)  # noqa: E731
    unknown = [k for k in keep_fresh if not any(p == k or p.startswith(k.rstrip("/") + "/") for p in fresh_flat)]
    if unknown:
        raise ValueError(f"config.init_from_keep_fresh names {unknown}, which are not parameters of this model; "
                         f"its top-level parameters are {sorted({p.split('/')[0] for p in fresh_flat})}")
    missing = [p for p in fresh_flat if not kept(p) and p not in source_flat]
    wrong = [f"{p}: {np.shape(source_flat[p])} in init_from, {fresh_flat[p].shape} here" for p in fresh_flat
             if not kept(p) and p in source_flat and np.shape(source_flat[p]) != fresh_flat[p].shape]
    if missing or wrong:
        raise ValueError("config.init_from cannot initialise this model: "
                         + (f"missing parameters {missing}; " if missing else "")
                         + (f"shapes differ: {wrong}; " if wrong else "")
                         + "list such parameters in config.init_from_keep_fresh to initialise them fresh")
    out = {p: (v if kept(p) else jax.device_put(np.asarray(source_flat[p], v.dtype), v.sharding))
           for p, v in fresh_flat.items()}
    unused = sorted(p for p in source_flat if p not in fresh_flat or kept(p))
    return _unflatten(fresh, out), unused


def _flatten(tree: Any) -> dict[tuple, Any]:
    return {tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten(like: Any, flat: dict[str, Any]) -> Any:
    paths = ["/".join(map(str, p)) for p in _flatten(like)]
    return jax.tree.unflatten(jax.tree.structure(like), [flat[p] for p in paths])

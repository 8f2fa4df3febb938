"""Early stopping's model selection (config.best_metric), early stopping itself
(config.early_stopping_patience) and warm starts (config.init_from)."""
import jax
import numpy as np
import pytest

from fintrans.models.config import ConfigError
from fintrans.train import Trainer, read_metrics, train_and_evaluate
from fintrans.train.checkpoint import BestParams, read_params
from tests.train.conftest import tiny_dlinear


def _evals(workdir):
    return {m["step"]: m["eval/loss"] for m in read_metrics(workdir) if "eval/loss" in m}


def _leaves(params):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}


def _assert_same(a, b):
    a, b = _leaves(a), _leaves(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _evaluate(config, params):
    t = Trainer(config, None)
    _, shardings = t.init_state(t.example_batch())
    return t.evaluate(t.make_eval_step(shardings.params), params)["loss"]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_params_are_those_of_the_best_evaluation(tmp_path, mode):
    config = tiny_dlinear(eval_every=2, best_metric="loss", best_mode=mode, optimizer=dict(
        tiny_dlinear().optimizer, learning_rate=0.05))
    result = train_and_evaluate(config, tmp_path)
    evals = _evals(tmp_path)
    assert sorted(evals) == [2, 4, 6, 8, 10]
    pick = min if mode == "min" else max
    best = result["best"]
    assert best["step"] == pick(evals, key=evals.get)
    assert best["eval"]["eval/loss"] == evals[best["step"]]
    # The stored parameters reproduce that evaluation, and are not simply the final ones.
    np.testing.assert_allclose(_evaluate(config, best["params"]), evals[best["step"]], rtol=1e-6)
    if best["step"] != 10:
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(best["params"]),
                                                            jax.tree.leaves(result["state"].params)))
    if mode == "max":
        assert best["step"] < 10  # a falling loss: the worst evaluation is an early one, so selection mattered


def test_best_survives_a_resume(tmp_path):
    config = dict(eval_every=2, best_metric="loss", best_mode="max")
    whole = train_and_evaluate(tiny_dlinear(**config), tmp_path / "whole")
    train_and_evaluate(tiny_dlinear(**config, max_steps_per_run=5), tmp_path / "split")
    resumed = train_and_evaluate(tiny_dlinear(**config), tmp_path / "split")
    assert resumed["resumed_from"] == 5
    assert resumed["best"]["step"] == whole["best"]["step"] and resumed["best"]["eval"] == whole["best"]["eval"]
    _assert_same(resumed["best"]["params"], whole["best"]["params"])


def test_best_saved_after_the_resume_step_is_forgotten(tmp_path):
    params = {"w": np.zeros(3, np.float32)}
    best = BestParams(tmp_path, metric="loss", mode="min")
    assert best.offer(2, params, {"eval/loss": 1.0})
    assert not best.offer(4, params, {"eval/loss": 1.5})
    best.checkpointed(4)
    assert best.offer(6, {"w": np.ones(3, np.float32)}, {"eval/loss": 0.5})
    assert best.offer(8, {"w": np.ones(3, np.float32)}, {"eval/loss": 0.4})
    best.checkpointed(8)
    assert best.saved_steps() == [8]
    best.close()
    best = BestParams(tmp_path / "again", metric="loss", mode="min")
    assert best.offer(2, params, {"eval/loss": 1.0})
    best.checkpointed(4)
    assert best.offer(6, {"w": np.ones(3, np.float32)}, {"eval/loss": 0.5})
    best.close()
    again = BestParams(tmp_path / "again", metric="loss", mode="min")
    again.resume(4)  # the run restarts from its step-4 checkpoint: step 6 will be evaluated again
    assert again.step == 2 and again.metrics == {"eval/loss": 1.0}
    np.testing.assert_array_equal(again.restore({"w": jax.ShapeDtypeStruct((3,), np.float32)})["w"], 0.0)
    with pytest.raises(ValueError, match=r"best_metric='accuracy' is not an evaluation metric.*\['loss'\]"):
        BestParams(tmp_path / "other", metric="accuracy", mode="max").offer(2, params, {"eval/loss": 1.0})
    again.close()


def test_early_stopping_stops_after_patience_evaluations_without_a_new_best(tmp_path):
    # best_mode='max' on a falling loss: the first evaluation (step 2) stays the best, so with patience 2
    # the run stops at the second evaluation after it (step 6) instead of training to step 10.
    config = dict(eval_every=2, best_metric="loss", best_mode="max", early_stopping_patience=2)
    result = train_and_evaluate(tiny_dlinear(**config), tmp_path / "whole")
    assert result["best"]["step"] == 2 and result["stopped_early"] == 6 and result["step"] == 6
    assert sorted(_evals(tmp_path / "whole")) == [2, 4, 6]
    # A rerun trains nothing more; a run in pieces stops at the same step.
    again = train_and_evaluate(tiny_dlinear(**config), tmp_path / "whole")
    assert again["resumed_from"] == 6 and again["stopped_early"] == 6 and again["step"] == 6
    train_and_evaluate(tiny_dlinear(**config, max_steps_per_run=3), tmp_path / "split")
    split = train_and_evaluate(tiny_dlinear(**config), tmp_path / "split")
    assert split["resumed_from"] == 3 and split["stopped_early"] == 6
    _assert_same(split["state"].params, result["state"].params)
    # Patience 5: only 4 evaluations follow the best before the last step, so the run trains to the end.
    full = train_and_evaluate(tiny_dlinear(**{**config, "early_stopping_patience": 5}), tmp_path / "patient")
    assert full["stopped_early"] is None and full["step"] == 10


@pytest.mark.parametrize("changes, message", [
    (dict(early_stopping_patience=2), "needs config.best_metric"),
    (dict(early_stopping_patience=2, best_metric="loss", eval_every=0), "eval_every > 0"),
    (dict(early_stopping_patience=-1, best_metric="loss"), "non-negative integer"),
])
def test_bad_early_stopping_is_rejected(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(tiny_dlinear(**changes), tmp_path)


def test_bad_best_mode_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="best_mode='lowest'"):
        train_and_evaluate(tiny_dlinear(best_metric="loss", best_mode="lowest"), tmp_path)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("source")
    return workdir, train_and_evaluate(tiny_dlinear(), workdir)


def _frozen(**overrides):
    """A run whose updates are all zero (learning rate 0), so its final parameters are its initial ones."""
    c = tiny_dlinear(**{"total_steps": 2, **overrides})
    c.optimizer.learning_rate = 0.0
    return c


def test_warm_start_takes_the_source_runs_latest_parameters(tmp_path, source_run):
    source_dir, source = source_run
    result = train_and_evaluate(_frozen(init_from=str(source_dir)), tmp_path)
    assert result["init_from"] == {"path": str(source_dir), "step": 10, "unused": []}
    _assert_same(result["state"].params, source["state"].params)
    # A step's directory names that step's parameters.
    params, step = read_params(source_dir / "checkpoints" / "8")
    assert step == 8 and sorted(params) == sorted(source["state"].params)
    # Resuming its own checkpoint, a run no longer looks at init_from.
    again = train_and_evaluate(_frozen(init_from=str(source_dir / "missing"), total_steps=3), tmp_path)
    assert again["resumed_from"] == 2 and "init_from" not in again


def test_warm_start_keeps_named_parameters_fresh(tmp_path, source_run):
    source_dir, source = source_run
    fresh = train_and_evaluate(_frozen(), tmp_path / "fresh")["state"].params
    top = sorted(fresh)[0]
    result = train_and_evaluate(_frozen(init_from=str(source_dir / "checkpoints"), init_from_keep_fresh=top),
                                tmp_path / "warm")
    params = result["state"].params
    _assert_same(params[top], fresh[top])
    _assert_same({k: v for k, v in params.items() if k != top}, {k: v for k, v in source["state"].params.items()
                                                                 if k != top})
    assert result["init_from"]["unused"] and all(p.startswith(top) for p in result["init_from"]["unused"])


def test_warm_start_errors_name_the_problem(tmp_path, source_run):
    source_dir, _ = source_run
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train_and_evaluate(_frozen(init_from=str(tmp_path / "empty")), tmp_path / "a")
    longer = _frozen(init_from=str(source_dir))
    longer.data.horizon = longer.model.horizon = 16
    with pytest.raises(ConfigError, match=r"shapes differ: \[.*\(48, 8\) in init_from, \(48, 16\) here"):
        train_and_evaluate(longer, tmp_path / "b")
    with pytest.raises(ConfigError, match=r"init_from_keep_fresh names \['decoder'\].*top-level parameters are"):
        train_and_evaluate(_frozen(init_from=str(source_dir), init_from_keep_fresh="decoder"), tmp_path / "c")
    with pytest.raises(ConfigError, match="init_from_keep_fresh is set but config.init_from is not"):
        train_and_evaluate(_frozen(init_from_keep_fresh="head"), tmp_path / "d")

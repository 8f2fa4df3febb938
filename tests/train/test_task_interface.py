"""The task interface the trainer drives: build with options, apply_fn threading model state over
several forward passes, array metric sums."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import parallel, tasks
from fintrans.models.config import ConfigError
from fintrans.tasks.classification import Classification
from fintrans.train import Trainer
from fintrans.train.loop import ModelCaller
from tests.train.conftest import HookedMLP, HookedMLPConfig, tiny_hooked


class _TwoViews(Classification):
    """A test task calling the model twice (a noisy view and a clean one), with an option."""
    name = "test_two_views"

    def __init__(self, noise: float = 0.1, *, weight: float = 1.0):
        if noise < 0:
            raise ConfigError(f"test_two_views: noise={noise} must be >= 0")
        self.noise, self.weight = noise, weight

    def loss_and_metrics(self, apply_fn, params, batch, rng, *, train):
        noisy = {**batch, "inputs": batch["inputs"] + self.noise * jax.random.normal(
            jax.random.fold_in(rng, 1), batch["inputs"].shape)}
        loss_noisy, _ = self.loss_from_outputs(apply_fn(params, noisy, rng=jax.random.fold_in(rng, 2)), batch)
        loss, metrics = self.loss_from_outputs(apply_fn(params, batch, rng=rng), batch)
        return loss + self.weight * loss_noisy, metrics


@pytest.fixture(scope="module", autouse=True)
def two_views_registered():
    tasks.TASKS.register(_TwoViews.name, _TwoViews)
    yield
    tasks.TASKS.unregister(_TwoViews.name)


def test_build_validates_options():
    task = tasks.build("test_two_views", {"noise": 0.5, "weight": 2.0})
    assert (task.noise, task.weight) == (0.5, 2.0)
    with pytest.raises(ConfigError, match=r"no option\(s\) \['nosie'\]; its options are \['noise', 'weight'\]"):
        tasks.build("test_two_views", {"nosie": 0.5})
    with pytest.raises(ConfigError, match="noise=-1 must be >= 0"):
        tasks.build("test_two_views", {"noise": -1})
    with pytest.raises(ConfigError, match=r"task 'lm' has no option\(s\) \['x'\]; its options are none"):
        tasks.build("lm", {"x": 1})
    with pytest.raises(ConfigError, match="unknown task 'nope'.*'classification'"):
        tasks.build("nope")


def test_trainer_builds_the_task_and_its_train_step_runs_both_passes():
    config = tiny_hooked(task="test_two_views")
    config.task_options.weight = 0.25
    t = Trainer(config, None)
    assert t.task.weight == 0.25
    example = t.example_batch()
    state, shardings = t.init_state(example)
    batch = parallel.global_batch(example, t.batch_sharding)
    with jax.set_mesh(t.mesh):
        before = jax.device_get(state)
        after, scalars = t.make_train_step(shardings)(state, batch)
    # The step's batch_stats are those of the noisy pass followed by the clean one.
    rng = jax.random.fold_in(t.base_rng, 0)
    noisy = {**example, "inputs": example["inputs"] + 0.1 * jax.random.normal(jax.random.fold_in(rng, 1),
                                                                             example["inputs"].shape)}
    stats = before.model_state
    for b in (noisy, example):
        _, upd = t.model.apply({"params": before.params, **stats}, b, train=True, mutable=["batch_stats", "aux_loss"])
        stats = {"batch_stats": upd["batch_stats"]}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), after.model_state, stats)
    assert np.isfinite(scalars["loss"]) and scalars["aux_loss"] > 0


def test_apply_fn_threads_model_state_through_several_calls():
    model = HookedMLP(HookedMLPConfig(num_classes=3, hidden=4))
    rng = np.random.default_rng(0)
    b1, b2 = ({"inputs": rng.normal(size=(5, 6)).astype(np.float32)} for _ in range(2))
    variables = model.init(jax.random.key(0), b1)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    caller = ModelCaller(model, state, train=True)
    caller(params, b1)
    caller(params, b1, train=False)  # a deterministic pass inside training: reads the state, changes nothing
    caller(params, b2)
    expected, aux = state, 0.0
    for b in (b1, b2):  # the same two passes by hand, each seeing the state the previous one left
        _, upd = model.apply({"params": params, **expected}, b, train=True, mutable=["batch_stats", "aux_loss"])
        expected, aux = {"batch_stats": upd["batch_stats"]}, aux + jax.tree.leaves(upd["aux_loss"])[0]
    jax.tree.map(np.testing.assert_array_equal, caller.model_state, expected)
    np.testing.assert_allclose(caller.aux_loss, aux, rtol=1e-6)
    assert list(caller.aux_losses) == ["activation_l2"]
    # Evaluation reads the state and never changes it.
    evaluator = ModelCaller(model, expected, train=False)
    evaluator(params, b1)
    assert evaluator.model_state is expected and evaluator.aux_loss is None


def test_array_metric_sums_summarize_elementwise():
    a = {"hist": (jnp.array([1.0, 2.0, 3.0]), jnp.array(2.0)), "loss": (jnp.array(3.0), jnp.array(4.0))}
    b = {"hist": (jnp.array([3.0, 0.0, 1.0]), jnp.array(2.0)), "loss": (jnp.array(1.0), jnp.array(4.0))}
    summary = tasks.summarize(jax.device_get(tasks.accumulate(tasks.accumulate(None, a), b)))
    np.testing.assert_array_equal(summary["hist"], [1.0, 0.5, 1.0])
    assert summary["loss"] == 0.5 and isinstance(summary["loss"], float)
    assert tasks.scalars(summary) == {"loss": 0.5}

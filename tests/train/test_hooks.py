"""Trainer hooks: model state (BatchNorm statistics), sown auxiliary losses, a trainable subset,
parameter EMA, data fields filled from the dataset, and an exact resume with all of them on."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import parallel
from fintrans.models.config import ConfigError
from fintrans.train import Trainer, evaluate_params, read_metrics, train_and_evaluate
from tests.train.conftest import tiny_hooked

HOOKS = dict(trainable="head,norm", ema_decay=0.9)


def _leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_trees_equal(a, b):
    a, b = _leaves(a), _leaves(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def hooked_trainer():
    """A Trainer with every hook on, its initial state, a jitted train step and three batches."""
    t = Trainer(tiny_hooked(**HOOKS), None)
    state, shardings = t.init_state(t.example_batch())
    it = iter(t.dataset.iterator("train", t.config.batch_size, shuffle=True, seed=0))
    batches = [parallel.global_batch(next(it), t.batch_sharding) for _ in range(3)]
    step = t.make_train_step(shardings)
    with jax.set_mesh(t.mesh):
        states, scalars = [jax.tree.map(jnp.copy, state)], []
        for batch in batches:
            new, s = step(jax.tree.map(jnp.copy, states[-1]), batch)
            states.append(new)
            scalars.append(jax.device_get(s))
    return t, states, scalars, batches


def test_model_fields_come_from_the_data(hooked_trainer):
    t, *_ = hooked_trainer
    assert t.model_config.num_classes == 10  # None in the config, 10 in the digits dataset's info
    config = tiny_hooked()
    config.model.num_classes = 7
    with pytest.raises(ConfigError, match=r"model.num_classes=7 but dataset 'digits' has num_classes=10"):
        Trainer(config, None)


def test_batch_stats_are_model_state_updated_in_training(hooked_trainer):
    t, states, _, batches = hooked_trainer
    stats = [s.model_state["batch_stats"]["norm"] for s in states]
    np.testing.assert_array_equal(stats[0]["mean"], 0.0)
    np.testing.assert_array_equal(stats[0]["var"], 1.0)
    # momentum 0.9: mean_1 = 0.1 · (batch mean of the body's outputs under the initial params)
    x = np.asarray(batches[0]["inputs"]).reshape(len(batches[0]["inputs"]), -1)
    body = states[0].params["body"]
    h = x @ np.asarray(body["kernel"]) + np.asarray(body["bias"])
    np.testing.assert_allclose(stats[1]["mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[1]["var"], 0.9 + 0.1 * h.var(0), rtol=1e-5)
    assert not np.allclose(stats[2]["mean"], stats[1]["mean"])


def test_sown_aux_loss_is_logged_and_trained(hooked_trainer):
    t, states, scalars, batches = hooked_trainer
    apply = lambda s, b: t.model.apply({"params": s.params, **s.model_state}, b, train=True,  # noqa: E731
                                       mutable=["batch_stats", "aux_loss"])[1]["aux_loss"]
    expected = jax.tree.leaves(apply(states[0], batches[0]))[0]
    np.testing.assert_allclose(scalars[0]["aux_loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(scalars[0]["aux_loss/activation_l2"], expected, rtol=1e-6)
    assert expected > 0


def test_frozen_parameters_stay_bitwise_identical(hooked_trainer):
    _, states, _, _ = hooked_trainer
    first, last = _leaves(states[0].params), _leaves(states[-1].params)
    for path in first:
        if path.startswith("['body']"):
            np.testing.assert_array_equal(first[path], last[path], err_msg=path)
        else:  # head and norm train
            assert not np.array_equal(first[path], last[path]), path


def test_frozen_parameters_get_no_optimizer_state(hooked_trainer):
    t, states, _, _ = hooked_trainer
    sizes = sum(x.size for x in jax.tree.leaves(states[0].opt_state))
    trained = sum(x.size for k, x in _leaves(states[0].params).items() if not k.startswith("['body']"))
    assert sizes == 2 * trained + 2  # adam's mu and nu for the trained ones, plus two step counts


def test_unmatched_trainable_pattern_is_named():
    t = Trainer(tiny_hooked(trainable="head,encoder_typo"), None)
    with pytest.raises(ConfigError, match=r"\['encoder_typo'\] match no parameter"):
        t.init_state(t.example_batch())


def test_ema_is_the_hand_computed_average(hooked_trainer):
    _, states, _, _ = hooked_trainer
    ema = _leaves(states[0].params)
    for state in states[1:]:
        ema = {k: np.float32(0.9) * e + np.float32(1 - 0.9) * p for (k, e), p in
               zip(ema.items(), _leaves(state.params).values())}
    for k, v in _leaves(states[-1].ema_params).items():
        np.testing.assert_allclose(v, ema[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert not np.allclose(_leaves(states[-1].ema_params)["['head']['kernel']"],
                           _leaves(states[-1].params)["['head']['kernel']"])


@pytest.fixture(scope="module")
def hooked_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hooked_whole")
    return workdir, train_and_evaluate(tiny_hooked(**HOOKS), workdir)


def test_evaluation_uses_the_ema_and_the_trained_statistics(hooked_run):
    _, result = hooked_run
    state = result["state"]
    assert result["params"] is state.ema_params
    config = tiny_hooked(**HOOKS)
    with_ema = evaluate_params(config, state.ema_params, ("validation",), model_state=state.model_state)
    assert with_ema["validation/loss"] == result["eval"]["eval/loss"]
    raw = evaluate_params(config, state.params, ("validation",), model_state=state.model_state)
    assert raw["validation/loss"] != result["eval"]["eval/loss"]


def test_resume_is_bitwise_exact_with_every_hook_on(tmp_path, hooked_run):
    whole_dir, whole = hooked_run
    first = train_and_evaluate(tiny_hooked(max_steps_per_run=3, **HOOKS), tmp_path)
    assert first["step"] == 3
    second = train_and_evaluate(tiny_hooked(**HOOKS), tmp_path)
    assert second["resumed_from"] == 3 and second["step"] == 8
    rows = lambda d: [{k: v for k, v in r.items() if k != "train/steps_per_second"} for r in read_metrics(d)]  # noqa: E731
    assert rows(whole_dir) == rows(tmp_path)
    assert any("train/aux_loss" in r for r in rows(tmp_path))
    _assert_trees_equal(whole["state"], second["state"])  # params, opt_state, batch_stats, EMA


def test_warm_start_takes_the_model_state_too(hooked_run):
    from fintrans.train.loop import _warm_start
    source_dir, source = hooked_run
    config = tiny_hooked(init_from=str(source_dir), **HOOKS)
    t = Trainer(config, None)
    fresh, _ = t.init_state(t.example_batch())
    warm, info = _warm_start(fresh, config)
    assert info["step"] == 8
    _assert_trees_equal(warm.model_state, source["state"].model_state)
    _assert_trees_equal(warm.ema_params, source["state"].params)  # the EMA restarts from the taken params
    # A layer kept fresh keeps fresh statistics as well.
    config.init_from_keep_fresh = "norm"
    kept, _ = _warm_start(fresh, config)
    _assert_trees_equal(kept.model_state, fresh.model_state)
    _assert_trees_equal(kept.params["norm"], fresh.params["norm"])
    _assert_trees_equal(kept.params["head"], source["state"].params["head"])


def test_data_fields_resolution_rules():
    from fintrans.train.loop import resolve_data_fields
    from tests.train.conftest import HookedMLPConfig
    info = {"name": "toy", "num_classes": 3}
    assert resolve_data_fields(HookedMLPConfig, {}, info, {})["num_classes"] == 3  # default None: filled
    assert resolve_data_fields(HookedMLPConfig, {"num_classes": 3}, info, {})["num_classes"] == 3
    with pytest.raises(ConfigError, match=r"model.num_classes is None .* dataset 'toy' has no 'num_classes'"):
        resolve_data_fields(HookedMLPConfig, {}, {"name": "toy"}, {})
    # The data config counts as the data too, and lists from JSON info equal tuples.
    assert resolve_data_fields(HookedMLPConfig, {"num_classes": None}, {"name": "toy"}, {"num_classes": 4}) == {
        "num_classes": 4}
    resolve_data_fields(type("C", (HookedMLPConfig,), {"DATA_FIELDS": {"hidden": "widths"}}),
                        {"hidden": (1, 2)}, {"widths": [1, 2]}, {})

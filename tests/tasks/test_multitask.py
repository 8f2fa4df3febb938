"""Multi-task heads: weighted loss, prefixed metrics, one shared forward pass, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.models.config import ConfigError
from fintrans.tasks import contrastive, ranking
from fintrans.tasks.base import build, summarize
from task_cases import FakeRun

HEADS = {"ctr": {"task": "ranking_pointwise", "options": {"label_key": "click", "num_bins": 64}},
         "rank": {"task": "ranking_listwise", "weight": 0.5, "options": {"ks": (1, 2)}}}


def _batch(rng, b=6, c=4):
    return {"click": (rng.random(b) < 0.5).astype(np.float32),
            "relevance": np.eye(c, dtype=np.float32)[rng.integers(0, c, b)],
            "valid": np.r_[np.ones(b - 1, bool), False]}


def _outputs(rng, b=6, c=4):
    return {"ctr": jnp.asarray(rng.normal(size=b), jnp.float32),
            "rank": jnp.asarray(rng.normal(size=(b, c)), jnp.float32)}


def test_weighted_loss_and_prefixed_metrics():
    rng = np.random.default_rng(0)
    batch, outputs = _batch(rng), _outputs(rng)
    calls = []

    def apply_fn(params, b, rng=None):
        calls.append(b)
        return outputs

    task = build("multitask", {"heads": HEADS})
    task.check_batch(batch)
    loss, metrics = task.loss_and_metrics(apply_fn, None, batch, jax.random.PRNGKey(0), train=True)
    assert len(calls) == 1  # one forward pass serves both heads
    ctr_loss, ctr_metrics = ranking.PointwiseRanking(label_key="click", num_bins=64).loss_from_outputs(outputs["ctr"], batch)
    rank_loss, rank_metrics = ranking.ListwiseRanking(ks=(1, 2)).loss_from_outputs(outputs["rank"], batch)
    assert float(loss) == pytest.approx(float(ctr_loss) + 0.5 * float(rank_loss), rel=1e-6)
    expected_keys = {f"ctr/{k}" for k in ctr_metrics} | {f"rank/{k}" for k in rank_metrics} | {"loss"}
    assert set(metrics) == expected_keys
    np.testing.assert_array_equal(metrics["ctr/auc_positives"][0], ctr_metrics["auc_positives"][0])
    summary = summarize(jax.device_get(metrics))
    derived = task.derived(summary)
    assert derived["loss"] == pytest.approx(summary["ctr/loss"] + 0.5 * summary["rank/loss"], rel=1e-6)
    assert derived["ctr/auc"] == pytest.approx(
        ranking.auc_from_histograms(ctr_metrics["auc_positives"][0], ctr_metrics["auc_negatives"][0])[0])


def test_missing_head_is_a_clear_error():
    rng = np.random.default_rng(1)
    batch, outputs = _batch(rng), _outputs(rng)
    task = build("multitask", {"heads": HEADS})
    with pytest.raises(ValueError, match=r"no head 'rank'; it returned \['ctr'\]"):
        task.loss_and_metrics(lambda p, b, rng=None: {"ctr": outputs["ctr"]}, None, batch, None, train=False)
    with pytest.raises(ValueError, match="must return a dict"):
        task.loss_and_metrics(lambda p, b, rng=None: outputs["ctr"], None, batch, None, train=False)


def test_multi_call_head_gets_its_own_forward_passes():
    # A contrastive head calls the model on two views; it gets its head of those calls' outputs.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    batch = {"inputs": x, "click": np.array([1, 0, 1, 0], np.float32)}
    seen = []

    def apply_fn(params, b, rng=None):
        seen.append(b["inputs"])
        return {"ctr": b["inputs"].sum(-1), "embed": b["inputs"] * params}

    heads = {"ctr": {"task": "ranking_pointwise", "options": {"label_key": "click"}},
             "embed": {"task": "contrastive", "weight": 2.0, "options": {"augment": ["jitter"], "temperature": 0.5}}}
    task = build("multitask", {"heads": heads})
    key = jax.random.PRNGKey(3)
    loss, metrics = task.loss_and_metrics(apply_fn, 2.0, batch, key, train=True)
    assert len(seen) == 3 and seen[0] is x and not np.allclose(seen[1], x)
    alone = contrastive.Contrastive(augment=["jitter"], temperature=0.5).loss_and_metrics(
        lambda p, b, rng=None: b["inputs"] * p, 2.0, batch, key, train=True)[0]
    ctr = ranking.PointwiseRanking(label_key="click").loss_from_outputs(jnp.asarray(x).sum(-1), batch)[0]
    assert float(loss) == pytest.approx(float(ctr) + 2.0 * float(alone), rel=1e-6)
    assert "embed/accuracy" in metrics and "ctr/accuracy" in metrics


def test_bad_head_specs():
    with pytest.raises(ConfigError, match="at least one head"):
        build("multitask", {"heads": {}})
    with pytest.raises(ConfigError, match="needs 'task'"):
        build("multitask", {"heads": {"ctr": {"weight": 1.0}}})
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        build("multitask", {"heads": {"ctr": {"task": "nope"}}})
    with pytest.raises(ConfigError, match=r"\['label'\]"):
        build("multitask", {"heads": {"ctr": {"task": "ranking_pointwise", "options": {"label": "x"}}}})


def test_sample_runs_each_heads_sample_on_its_outputs():
    rng = np.random.default_rng(8)
    batch, outputs = _batch(rng), _outputs(rng)
    lines = []
    task = build("multitask", {"heads": HEADS})
    out = task.sample(FakeRun(lambda p, b: outputs, batch), None, lines.append)
    assert set(out) == {"ctr", "rank"}
    np.testing.assert_allclose(out["ctr"]["probability"], 1 / (1 + np.exp(-np.asarray(outputs["ctr"])[:3])), rtol=1e-5)
    assert len(out["rank"]["examples"]) == 3 and any("head 'rank'" in line for line in lines)


def test_heads_from_a_config_dict():
    from ml_collections import ConfigDict
    options = ConfigDict({"heads": HEADS})
    task = build("multitask", {"heads": options.heads})
    assert task.heads == ["ctr", "rank"] and task.weights == {"ctr": 1.0, "rank": 0.5}
    assert task.tasks["rank"].ks == (1, 2) and task.tasks["ctr"].label_key == "click"

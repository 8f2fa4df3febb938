"""The classification task: cross-entropy and accuracy against numpy, padding rows left out."""
import jax
import numpy as np
import pytest

from fintrans import tasks


def test_loss_and_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    batch = {"inputs": rng.normal(size=(6, 3)), "label": rng.integers(0, 4, 6), "valid": np.arange(6) < 4}
    task = tasks.build("classification")
    task.check_batch(batch)
    loss, metrics = jax.jit(task.loss_from_outputs)(logits, batch)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -logp[np.arange(6), batch["label"]][:4]
    np.testing.assert_allclose(loss, ce.mean(), rtol=1e-5)
    summary = tasks.summarize(jax.device_get(metrics))
    assert summary["accuracy"] == pytest.approx(np.mean(logits.argmax(-1)[:4] == batch["label"][:4]))


def test_bad_batches_are_rejected():
    task = tasks.build("classification")
    with pytest.raises(tasks.BatchError, match="no 'label'"):
        task.check_batch({"inputs": np.zeros((2, 3))})
    with pytest.raises(tasks.BatchError, match=r"batch\['label'\] must be int"):
        task.check_batch({"inputs": np.zeros((2, 3)), "label": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="logits .* do not match labels"):
        task.loss_from_outputs(np.zeros((3, 4), np.float32), {"label": np.zeros(2, np.int32)})

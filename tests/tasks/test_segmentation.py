"""The per-point segmentation task: masked cross-entropy, accuracy and mean IoU against numpy."""
import jax
import numpy as np
import pytest

from fintrans import tasks
from fintrans.tasks.segmentation import Segmentation

segmentation = tasks.build("segmentation")


def _batch(rng, b=4, n=37, classes=5, with_valid=True):
    counts = np.concatenate([[n, 0], rng.integers(1, n, b - 2)])  # a full row and an empty one
    batch = {"label": rng.integers(0, classes, (b, n)).astype(np.int32),
             "mask": np.arange(n)[None] < counts[:, None]}
    if with_valid:
        batch["valid"] = np.r_[np.ones(b - 1, bool), False]  # the last row pads an evaluation batch
    logits = rng.normal(size=(b, n, classes)).astype(np.float32)
    logits[~batch["mask"]] = 1e3  # padding rows must not count whatever they hold
    return logits, batch


def _numpy_metrics(pairs, classes):
    """(mean CE, accuracy, per-class IoU or nan, mean IoU) over the real points of all batches."""
    ce, correct, inter, union = [], [], np.zeros(classes), np.zeros(classes)
    for logits, batch in pairs:
        w = batch["mask"] & batch.get("valid", np.ones(len(logits), bool))[:, None]
        lg, lb = logits[w].astype(np.float64), batch["label"][w]
        logp = lg - lg.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        ce.append(-logp[np.arange(len(lb)), lb])
        pred = lg.argmax(1)
        correct.append(pred == lb)
        for c in range(classes):
            inter[c] += np.sum((pred == c) & (lb == c))
            union[c] += np.sum((pred == c) | (lb == c))
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return np.concatenate(ce).mean(), np.concatenate(correct).mean(), iou, np.nanmean(iou)


def test_registered():
    assert tasks.TASKS.get("segmentation") is Segmentation and isinstance(segmentation, Segmentation)


def test_loss_accuracy_and_mean_iou_match_numpy():
    rng = np.random.default_rng(0)
    classes = 5
    pairs = [_batch(rng, classes=classes) for _ in range(3)]
    step = jax.jit(segmentation.loss_from_outputs)
    total = None
    for logits, batch in pairs:
        segmentation.check_batch(batch)
        loss, metrics = step(logits, batch)
        ce, _, _, _ = _numpy_metrics([(logits, batch)], classes)
        np.testing.assert_allclose(loss, ce, rtol=1e-5)
        total = tasks.accumulate(total, metrics)
    summary = tasks.summarize(jax.device_get(total))
    summary.update(segmentation.derived(summary))
    ce, acc, iou, miou = _numpy_metrics(pairs, classes)
    np.testing.assert_allclose(summary["loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(summary["accuracy"], acc, rtol=1e-6)
    for c in range(classes):
        np.testing.assert_allclose(summary[f"class{c}_iou"], iou[c], rtol=1e-6)
    np.testing.assert_allclose(summary["mean_iou"], miou, rtol=1e-6)
    # The accumulated mIoU is not the mean of per-batch mIoUs (the metric must sum first).
    per_batch = np.mean([_numpy_metrics([p], classes)[3] for p in pairs])
    assert not np.isclose(per_batch, miou, rtol=1e-6)


def test_absent_class_is_left_out_of_mean_iou():
    rng = np.random.default_rng(1)
    logits, batch = _batch(rng, classes=4, with_valid=False)
    batch["label"] = np.where(batch["label"] == 3, 0, batch["label"])
    logits[..., 3] = -1e3  # class 3 neither labelled nor predicted
    _, metrics = segmentation.loss_from_outputs(logits, batch)
    summary = tasks.summarize(jax.device_get(metrics))
    out = segmentation.derived(summary)
    _, _, iou, miou = _numpy_metrics([(logits, batch)], 4)
    assert np.isnan(iou[3]) and "class3_iou" not in out
    np.testing.assert_allclose(out["mean_iou"], miou, rtol=1e-6)


def test_perfect_predictions_give_iou_one():
    rng = np.random.default_rng(2)
    _, batch = _batch(rng, classes=3, with_valid=False)
    logits = np.eye(3, dtype=np.float32)[batch["label"]] * 10
    _, metrics = segmentation.loss_from_outputs(logits, batch)
    summary = tasks.summarize(jax.device_get(metrics))
    out = segmentation.derived(summary)
    assert summary["accuracy"] == pytest.approx(1.0) and out["mean_iou"] == pytest.approx(1.0)


def test_bad_batches_are_rejected():
    rng = np.random.default_rng(3)
    logits, batch = _batch(rng)
    with pytest.raises(tasks.BatchError, match="no 'mask'"):
        segmentation.check_batch({"label": batch["label"]})
    with pytest.raises(ValueError, match="label .* and mask .* must have the same shape"):
        segmentation.check_batch({"label": batch["label"], "mask": batch["mask"][:, :5]})
    with pytest.raises(ValueError, match=r"logits .* do not match labels"):
        segmentation.loss_from_outputs(logits[:, :5], batch)

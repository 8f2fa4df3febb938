"""What a run leaves behind (metrics.jsonl, TensorBoard events), and bf16 compute."""
import struct

import jax
import jax.numpy as jnp
import numpy as np
from tensorboardX.proto.event_pb2 import Event

from fintrans.train import read_metrics, train_and_evaluate
from tests.train.conftest import tiny_lm


def _tensorboard_scalars(logdir):
    """{tag: [(step, value)]} read from the TFRecord-framed event files."""
    out = {}
    for path in logdir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_metrics_jsonl_and_tensorboard_agree(tmp_path):
    train_and_evaluate(tiny_lm(total_steps=6, log_every=2, eval_every=3), tmp_path)
    rows = read_metrics(tmp_path)
    train = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in evals] == [3, 6]
    assert {"train/learning_rate", "train/grad_norm", "train/steps_per_second"} <= train[0].keys()
    assert {"eval/accuracy", "eval/perplexity"} <= evals[0].keys()
    np.testing.assert_allclose(evals[-1]["eval/perplexity"], np.exp(evals[-1]["eval/loss"]), rtol=1e-5)
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["train/loss"] for r in train], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["eval/loss"]], [r["eval/loss"] for r in evals], rtol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
    result = train_and_evaluate(tiny_lm(total_steps=4, compute_dtype="bfloat16"), tmp_path)
    assert result["model_config"].dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(result["state"].params)} == {jnp.dtype(jnp.float32)}
    losses = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert len(losses) == 4 and np.isfinite(losses).all()


def test_rbg_keys_train_and_resume_exactly(tmp_path):
    whole = train_and_evaluate(tiny_lm(total_steps=6, rng_impl="rbg"), tmp_path / "whole")
    train_and_evaluate(tiny_lm(total_steps=6, rng_impl="rbg", max_steps_per_run=3), tmp_path / "split")
    resumed = train_and_evaluate(tiny_lm(total_steps=6, rng_impl="rbg"), tmp_path / "split")
    assert resumed["resumed_from"] == 3
    losses = lambda d: [r["train/loss"] for r in read_metrics(d) if "train/loss" in r]
    assert losses(tmp_path / "whole") == losses(tmp_path / "split") and np.isfinite(losses(tmp_path / "whole")).all()
    assert whole["step"] == 6

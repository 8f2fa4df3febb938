"""The trainer's behaviour when things go wrong: NaN losses, SIGTERM, bad configs and data."""
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.data import DatasetNotPreparedError
from fintrans.models import ConfigError
from fintrans.train import NonFiniteLossError, Trainer, train_and_evaluate
from fintrans.train.checkpoint import Checkpointer
from tests.train.conftest import tiny_dlinear, tiny_lm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wrap_train_step(monkeypatch, after_step):
    """Makes the real jitted train step call `after_step(step, state, scalars)` on the host."""
    make = Trainer.make_train_step

    def patched(self, shardings):
        step_fn = make(self, shardings)

        def wrapped(state, batch):
            state, scalars = step_fn(state, batch)
            return after_step(int(state.step), state, scalars)
        return wrapped

    monkeypatch.setattr(Trainer, "make_train_step", patched)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    def poison(step, state, scalars):
        if step >= 5:  # from step 5 on, the loss (and the params) are NaN
            state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
            scalars = {**scalars, "loss": jnp.float32(np.nan)}
        return state, scalars

    _wrap_train_step(monkeypatch, poison)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5.*step 4"):
        train_and_evaluate(tiny_dlinear(checkpoint_every=2), tmp_path)
    ckpt = Checkpointer(tmp_path / "checkpoints", every=2, keep=3)
    assert ckpt.latest_step() == 4
    monkeypatch.undo()
    # The last good checkpoint is whole and finite: the run resumes from it and finishes.
    result = train_and_evaluate(tiny_dlinear(checkpoint_every=2), tmp_path)
    assert result["resumed_from"] == 4 and result["step"] == 10
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result["state"].params))


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, monkeypatch):
    def preempt(step, state, scalars):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return state, scalars

    _wrap_train_step(monkeypatch, preempt)
    previous = signal.getsignal(signal.SIGTERM)
    stopped = train_and_evaluate(tiny_dlinear(checkpoint_every=0), tmp_path)
    assert signal.getsignal(signal.SIGTERM) is previous  # the trainer's handler is removed again
    assert stopped["step"] == 3
    assert Checkpointer(tmp_path / "checkpoints", every=0, keep=3).latest_step() == 3
    monkeypatch.undo()
    assert train_and_evaluate(tiny_dlinear(checkpoint_every=0), tmp_path)["resumed_from"] == 3


def test_unknown_model_names_the_registered_ones(tmp_path):
    c = tiny_lm()
    c.model.name = "gpt5"
    with pytest.raises(ConfigError, match=r"unknown model 'gpt5'.*decoder_lm"):
        train_and_evaluate(c, tmp_path)


def test_unknown_trainer_key_is_rejected(tmp_path):
    c = tiny_lm()
    with c.unlocked():
        c.totl_steps = 3
    with pytest.raises(ConfigError, match=r"unknown config key 'totl_steps'.*total_steps"):
        train_and_evaluate(c, tmp_path)


def test_unknown_model_field_is_rejected(tmp_path):
    c = tiny_lm()
    c.model.num_layer = 3
    with pytest.raises(ConfigError, match=r"no field\(s\) \['num_layer'\].*num_layers"):
        train_and_evaluate(c, tmp_path)


def test_unknown_key_on_the_command_line_is_rejected(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--config=experiments/configs/lm_chars.py:runlocal",
         f"--workdir={tmp_path}", "--config.optimizer.learnin_rate=0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "learnin_rate" in proc.stderr


def test_model_that_cannot_take_the_data_fails_before_compiling(tmp_path):
    c = tiny_lm()
    c.model.max_len = 16  # shorter than data.seq_len=32
    with pytest.raises(ConfigError, match=r"max_len=16 is shorter than the dataset's sequences \(32\)"):
        train_and_evaluate(c, tmp_path)
    c = tiny_dlinear()
    c.model.num_channels = 3
    with pytest.raises(ConfigError, match=r"num_channels=3 but dataset 'sp500' has num_channels=6"):
        train_and_evaluate(c, tmp_path)


def test_wrong_batch_shape_names_the_problem():
    trainer = Trainer(tiny_lm(), None)
    state, _ = trainer.init_state(trainer.example_batch())
    bad = {"inputs": np.zeros((2, 4, 3), np.int32), "targets": np.zeros((2, 4), np.int32)}
    with pytest.raises(ValueError, match=r"decoder_lm: inputs must be \[batch, length\].*\(2, 4, 3\)"):
        trainer.model.apply({"params": state.params}, bad)
    with pytest.raises(ValueError, match=r"lm batch\['inputs'\] must have rank 2"):
        trainer.task.check_batch(bad)
    with pytest.raises(ValueError, match=r"lm batch has no 'targets'"):
        trainer.task.check_batch({"inputs": np.zeros((2, 4), np.int32)})


def test_missing_data_directory_names_the_path(tmp_path):
    c = tiny_lm()
    c.data.data_dir = str(tmp_path / "no_such_dir")
    c.data.prepare = False
    with pytest.raises(DatasetNotPreparedError, match="no_such_dir"):
        train_and_evaluate(c, tmp_path / "work")


def test_unknown_rng_implementation_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"rng_impl='philox'.*threefry2x32"):
        train_and_evaluate(tiny_lm(rng_impl="philox"), tmp_path)

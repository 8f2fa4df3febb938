"""Checkpoints and resume: a run stopped at step k and resumed reproduces the uninterrupted run."""
import json

import numpy as np
import pytest

from fintrans.train import read_metrics, train_and_evaluate
from tests.train.conftest import tiny_lm


def _losses(workdir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(workdir) if "train/loss" in m]


def _checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    return workdir, train_and_evaluate(tiny_lm(), workdir)


def test_resume_reproduces_uninterrupted_losses_bitwise(tmp_path, whole_run):
    whole_dir, whole = whole_run
    first = train_and_evaluate(tiny_lm(max_steps_per_run=5), tmp_path)
    assert first["step"] == 5 and "sample" not in first
    assert _checkpoint_steps(tmp_path) == [4, 5]  # periodic at 4, and on stopping at 5
    second = train_and_evaluate(tiny_lm(), tmp_path)
    assert second["resumed_from"] == 5 and second["step"] == 12

    a, b = _losses(whole_dir), _losses(tmp_path)
    assert [s for s, _ in a] == list(range(1, 13))
    assert a == b  # bitwise: same floats, steps 1..12, no duplicated or missing lines
    np.testing.assert_array_equal(np.asarray(whole["state"].params["token_embed"]["embedding"]),
                                  np.asarray(second["state"].params["token_embed"]["embedding"]))


def test_checkpoints_hold_state_and_data_position_and_keep_the_newest(whole_run):
    workdir, _ = whole_run
    assert _checkpoint_steps(workdir) == [4, 8, 12]  # every 4 steps, keep 3
    latest = workdir / "checkpoints" / "12"
    assert (latest / "state").is_dir()
    data_state = json.loads(next((latest / "data").glob("*.json")).read_text())
    assert data_state  # the data iterator's position is in the checkpoint


def test_keep_limits_checkpoints(tmp_path):
    train_and_evaluate(tiny_lm(checkpoint_every=2, keep_checkpoints=2), tmp_path)
    assert _checkpoint_steps(tmp_path) == [10, 12]


def test_completed_run_does_not_train_again(whole_run):
    workdir, _ = whole_run
    before = _losses(workdir)
    again = train_and_evaluate(tiny_lm(), workdir)
    assert again["resumed_from"] == 12 and again["step"] == 12 and _losses(workdir) == before


def test_a_save_interrupted_midway_is_never_the_latest(tmp_path):
    """Orbax writes a step into '<step>.orbax-checkpoint-tmp-<time>' and renames it when whole; what
    a crash mid-save leaves behind must be ignored on resume."""
    train_and_evaluate(tiny_lm(max_steps_per_run=4), tmp_path)
    partial = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1795820000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00half-written")
    resumed = train_and_evaluate(tiny_lm(max_steps_per_run=2), tmp_path)
    assert resumed["resumed_from"] == 4 and resumed["step"] == 6
    assert 8 not in _checkpoint_steps(tmp_path)

"""A damaged latest checkpoint (a data file truncated, as a full disk or bit rot leaves it): the run names
it and the older checkpoints, and either stops or resumes from the newest readable one."""
import logging

import numpy as np
import pytest

import jax
from fintrans.models import ConfigError
from fintrans.train import CheckpointUnreadableError, train_and_evaluate
from tests.train.conftest import tiny_lm


def _checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _truncate_largest_file(step_dir):
    """Cuts the step's largest file (an OCDBT data file holding array chunks) to half its size."""
    largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = largest.read_bytes()
    largest.write_bytes(data[: len(data) // 2])
    return largest


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory):
    """A whole 12-step run (checkpoints 4, 8, 12) whose latest checkpoint is then damaged."""
    workdir = tmp_path_factory.mktemp("damaged")
    whole = train_and_evaluate(tiny_lm(), workdir)
    assert _checkpoint_steps(workdir) == [4, 8, 12]
    final_params = jax.device_get(whole["state"].params)
    _truncate_largest_file(workdir / "checkpoints" / "12")
    return workdir, final_params


def test_stop_names_the_unreadable_checkpoint_and_the_older_ones(damaged_run):
    workdir, _ = damaged_run
    with pytest.raises(CheckpointUnreadableError,
                       match=r"checkpoint step 12 in .*checkpoints cannot be read: .*OUT_OF_RANGE.*"
                             r"Older checkpoints: steps \[8, 4\]") as raised:
        train_and_evaluate(tiny_lm(on_unreadable_checkpoint="stop"), workdir)
    assert (raised.value.step, raised.value.older_steps) == (12, [8, 4])
    assert _checkpoint_steps(workdir) == [4, 8, 12]  # 'stop' changes nothing on disk


def test_fallback_resumes_from_the_previous_checkpoint_and_ends_bitwise_equal(damaged_run, caplog):
    """Runs after the 'stop' test (same module, file order): the damaged step 12 is still in place."""
    workdir, final_params = damaged_run
    with caplog.at_level(logging.WARNING, logger="fintrans.train"):
        resumed = train_and_evaluate(tiny_lm(on_unreadable_checkpoint="fallback"), workdir)
    assert resumed["resumed_from"] == 8 and resumed["step"] == 12
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "RESUMING FROM STEP 8, NOT FROM THE LATEST CHECKPOINT 12" in warnings, warnings
    # The damaged checkpoint is kept for inspection under another name, and step 12 saved afresh.
    assert (workdir / "checkpoints" / "12.unreadable").is_dir()
    assert _checkpoint_steps(workdir) == [4, 8, 12]
    jax.tree.map(np.testing.assert_array_equal, final_params, jax.device_get(resumed["state"].params))


def test_on_unreadable_checkpoint_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"on_unreadable_checkpoint='skip'; choose from \('fallback', 'stop'\)"):
        train_and_evaluate(tiny_lm(on_unreadable_checkpoint="skip"), tmp_path)

"""experiments/forecasting_table.py end to end on a tiny grid (--quick budget): sharded groups merge into one
table whose rows are the chosen learning rate's runs, the sweep picks the best validation loss, the
per-window errors average to the runs' test MSE, the naive floor is the dataset's, and a second
invocation trains nothing again."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fintrans import data
from fintrans.data.builders.series import naive_last_value_errors

REPO = Path(__file__).resolve().parents[2]
GRID = ["--data=seattle_weather", "--horizons=8", "--models=dlinear", "--norms=none,window", "--seeds=0,1", "--quick"]


def _run(tmp_path, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "experiments.forecasting_table", *GRID,
                           f"--workdir={tmp_path / 'runs'}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=400)


@pytest.mark.slow
def test_forecasting_table_end_to_end(tmp_path):
    out = tmp_path / "forecasting.md"
    first = _run(tmp_path, "--shard=0/2", f"--output={out}")  # shard 1's group is missing
    assert first.returncode != 0 and "cells are not finished yet" in first.stdout + first.stderr, first.stderr[-2000:]
    assert not out.exists()
    second = _run(tmp_path, "--shard=1/2", f"--output={out}")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]

    doc = json.loads(out.with_suffix(".json").read_text())
    for norm in ("none", "window"):
        sweep = [r for r in doc["sweep_runs"] if r["norm"] == norm and r["seed"] == 0]
        assert len(sweep) == 3
        chosen = min(sweep, key=lambda r: r["validation/mse"])["lr"]
        final = [r for r in doc["runs"] if r["norm"] == norm]
        assert sorted(r["seed"] for r in final) == [0, 1] and {r["lr"] for r in final} == {chosen}
        for r in final:
            assert 1 <= r["best_step"] <= r["stopped_at"] <= r["max_steps"] == 8
            errors = np.load(tmp_path / "runs" / r["errors"])["test_mse"]
            assert abs(errors.mean() - r["test/mse"]) < 1e-5
        cell = doc["summary"]["cells"][f"seattle_weather|8|dlinear|{norm}"]
        mean, lo, hi = cell["test_mse_ci"]
        assert lo <= mean <= hi and abs(mean - np.mean([r["test/mse"] for r in final])) < 1e-5

    config = {"name": "seattle_weather", "input_len": 96, "horizon": 8, "data_dir": None, "prepare": True}
    naive = naive_last_value_errors(data.load(config).source("test"))
    floor = doc["summary"]["floors"]["seattle_weather_h8"]
    assert abs(floor["naive_mse"][0] - naive["mse"]) < 1e-6
    assert f"| seattle_weather | 8 | naive last value | - | - | {naive['mse']:.4f} |" in out.read_text()

    table = out.read_text()
    logs = sorted((tmp_path / "runs").glob("runs_*.jsonl"))
    before = [p.read_text() for p in logs]
    again = _run(tmp_path, f"--output={out}")  # every run is logged: nothing trains again
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.read_text() for p in logs] == before and out.read_text() == table

"""experiments/forecasting_table.py end to end on a tiny grid: sharded runs merge into one table whose rows are
the runs' test scores, the naive floor is the dataset's, and a second invocation trains nothing again."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from fintrans import data
from fintrans.data.builders.series import naive_last_value_errors

REPO = Path(__file__).resolve().parents[2]
GRID = ["--data=seattle_weather", "--horizons=8", "--models=dlinear,nlinear,itransformer", "--seeds=0", "--steps=4"]


def _run(tmp_path, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "experiments.forecasting_table", *GRID,
                           f"--workdir={tmp_path / 'runs'}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=400)


def _rows(markdown):
    return {cells[2]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
        if line.startswith("| seattle_weather"))}


def test_forecasting_table_end_to_end(tmp_path):
    out = tmp_path / "forecasting.md"
    first = _run(tmp_path, "--shard=0/2", f"--output={out}")  # shard 1's runs are missing
    assert first.returncode != 0 and "runs are not finished yet" in first.stdout + first.stderr, first.stderr[-2000:]
    assert not out.exists()
    second = _run(tmp_path, "--shard=1/2", f"--output={out}")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]

    doc = json.loads(out.with_suffix(".json").read_text())
    runs = doc["runs"]
    assert sorted((r["model"], r["seed"]) for r in runs) == [("dlinear", 0), ("itransformer", 0), ("nlinear", 0)]
    for r in runs:
        assert r["total_steps"] == 4 and 1 <= r["best_step"] <= 4 and np.isfinite(r["test/mse"])

    config = {"name": "seattle_weather", "input_len": 96, "horizon": 8, "data_dir": None, "prepare": True}
    naive = naive_last_value_errors(data.load(config).source("test"))
    rows = _rows(out.read_text())
    assert float(rows["naive last value"][5]) == round(naive["mse"], 4)
    for model, name in (("dlinear", "DLinear"), ("nlinear", "NLinear"), ("itransformer", "iTransformer")):
        mse = [r["test/mse"] for r in runs if r["model"] == model]
        mean, std = (float(x) for x in re.findall(r"[\d.]+", rows[name][5]))
        assert (mean, std) == (round(np.mean(mse), 4), round(np.std(mse), 4))
        assert float(rows[name][7]) == round(np.mean(mse) / naive["mse"], 2)
    text = out.read_text()
    mse = {r["model"]: r["test/mse"] for r in runs}
    holds = min(mse["dlinear"], mse["nlinear"]) < mse["itransformer"]
    assert f"the claim {'holds' if holds else 'does not hold'}" in text
    assert f"beats every transformer in {int(holds)} of 1 cells" in text

    table = out.read_text()
    logs = sorted((tmp_path / "runs").glob("runs_*.jsonl"))
    before = [p.read_text() for p in logs]
    again = _run(tmp_path, f"--output={out}")  # every run is logged: nothing trains again
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.read_text() for p in logs] == before and out.read_text() == table

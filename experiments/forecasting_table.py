r"""Trains every forecaster of experiments/configs/forecasting.py on the same data, with and without
per-window normalisation, and writes the comparison table (experiments/results/forecasting.md, with
every run's numbers in forecasting.json).

    JAX_PLATFORMS=cpu python -m experiments.forecasting_table --workdir=/tmp/claims_forecasting \
        --output=experiments/results/forecasting.md

Protocol. A cell is (dataset, horizon, model, normalisation setting). Each cell's learning rate is
chosen on seed 0 from the config's three-value `LR_SWEEP` by the best validation loss; seeds 1 and 2
then train at that rate (seed 0's sweep run is reused). Every run trains through the ordinary trainer
to early stopping: validation every eval_every steps, stopped once `PATIENCE` evaluations bring no
better validation loss (or at `MAX_STEPS`, the length of its learning-rate schedule). The trainer has
no stopping rule of its own, so a run trains in pieces (`max_steps_per_run`, resumed from its
checkpoint) up to the step where stopping would trigger if nothing improved. The parameters of the best
validation evaluation are scored once on the test split, and every test window's MSE and MAE is kept
(WORKDIR/errors/RUN.npz) for the intervals: circular block bootstrap over test windows and seeds
(experiments/claims/common.py), blocks of `horizon` windows, because windows that many steps apart
forecast disjoint target days (nearer ones share targets, so their errors move together).

Floors: the naive forecast that repeats the last observed value, and statsforecast's AutoETS fitted to
each test window's lookback per channel (a maintained classical baseline, chosen by AICc among the
additive/multiplicative error, trend and damped variants; no season, as a 96-day lookback holds no
yearly cycle).

A finished run is resumed, not trained again, so an interrupted table is completed by running the same
command; `--shard=i/n` splits the cells between n processes (each writes WORKDIR/runs_i.jsonl; the one
given --output merges every shard's runs and fails, naming what is missing, while others still run).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags, logging

from experiments.claims.common import block_bootstrap_ci, paired_block_bootstrap_ci
from experiments.configs import forecasting
from fintrans import data
from fintrans.train import train_and_evaluate
from fintrans.train.loop import Trainer

DEFAULT_MODELS = ("dlinear", "nlinear", "transformer_forecaster", "autoformer", "itransformer", "time2vec_encoder")
LINEAR = ("dlinear", "nlinear")
NAMES = {"dlinear": "DLinear", "nlinear": "NLinear", "transformer_forecaster": "vanilla Transformer",
         "autoformer": "Autoformer", "itransformer": "iTransformer", "time2vec_encoder": "Time2Vec encoder",
         "time2vec_last": "Time2Vec encoder, last value subtracted"}
# Quick runs (tests, --quick claims): a tiny budget that still goes through every step of the protocol.
QUICK = {"max_steps": 8, "eval_every": 2, "patience": 2}

DATA = flags.DEFINE_list("data", ["stocks", "seattle_weather"], "datasets of experiments/configs/forecasting.py")
HORIZONS = flags.DEFINE_list("horizons", ["24", "96"], "forecast horizons")
MODELS = flags.DEFINE_list("models", list(DEFAULT_MODELS), f"models, from {forecasting.MODELS}")
NORMS = flags.DEFINE_list("norms", list(forecasting.NORM_SETTINGS), "normalisation settings")
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds per cell (the first one also sweeps the learning rate)")
QUICK_FLAG = flags.DEFINE_bool("quick", False, f"tiny training budget ({QUICK}) for checks")
WORKDIR = flags.DEFINE_string("workdir", "/tmp/claims_forecasting", "where runs are written")
SHARD = flags.DEFINE_string("shard", "0/1", "i/n: train every n-th cell starting at the i-th")
REPORT_ONLY = flags.DEFINE_bool("report_only", False, "train nothing: write the table from the finished runs, "
                                 "listing the unfinished cells")
OUTPUT = flags.DEFINE_string("output", "", "write the table (markdown) here, and every run as JSON next to it")


def budget(quick: bool) -> dict:
    if quick:
        return dict(QUICK)
    return {"max_steps": forecasting.MAX_STEPS, "eval_every": 25, "patience": forecasting.PATIENCE}


def config_for(dataset: str, horizon: int, model: str, norm: str, seed: int, lr: float, quick: bool = False):
    c = forecasting.get_config(f"model={model},data={dataset},horizon={horizon},norm={norm},lr={lr}")
    b = budget(quick)
    c.seed = seed
    c.progress_bar = False
    c.total_steps = b["max_steps"]
    c.eval_every = c.log_every = b["eval_every"]
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, b["max_steps"] // 10)
    c.checkpoint_every = b["max_steps"]  # checkpoints only where a piece of training stops
    return c


def cells(datasets, horizons, models, norms) -> list[tuple]:
    """(data, horizon, model, norm), model-major so that round-robin shards get alike mixes."""
    return [cell for group in groups(datasets, horizons, models, norms) for cell in group]


def groups(datasets, horizons, models, norms) -> list[list[tuple]]:
    """The cells that share a learning-rate sweep (every horizon of one data, model and norm; the sweep
    runs at the first horizon): a shard trains whole groups."""
    return [[(d, int(h), m, n) for h in horizons] for m in models for d in datasets for n in norms]


def run_name(dataset, horizon, model, norm, seed, lr) -> str:
    return f"{dataset}_h{horizon}/{model}_{norm}_lr{lr:g}_seed{seed}"


def train_to_early_stop(config, workdir: Path, *, eval_every: int, patience: int) -> dict | None:
    """Trains `config` until `patience` evaluations in a row bring no better validation loss (or to
    total_steps); returns the trainer's result of the last piece plus 'stopped_at' and 'stopped_early',
    or None if a piece stopped before its end (SIGTERM). A run left unfinished starts again from scratch,
    as the pieces' bounds are counted from its start."""
    if workdir.exists():
        shutil.rmtree(workdir)
    # The first piece is long enough to hold most runs' best evaluation, so most runs take one or two
    # pieces (each costs a start: data, compile).
    step, target = 0, min(max(8, 2 * patience) * eval_every, config.total_steps)
    while True:
        piece = config.copy_and_resolve_references()
        piece.max_steps_per_run = target - step if target < config.total_steps else 0
        result = train_and_evaluate(piece, str(workdir))
        step = result["step"]
        if step < target:
            return None
        best = result["best"]["step"]
        deadline = best + patience * eval_every
        if step >= deadline or step >= config.total_steps:
            return {**result, "stopped_at": step, "stopped_early": step < config.total_steps}
        target = min(deadline, config.total_steps)


def forecast_errors(config, params, model_state, split: str = "test") -> dict[str, np.ndarray]:
    """Per-window MSE and MAE [windows] of `params` on `split`, through the task's own forecast (so its
    window_norm applies) and the trainer's predict."""
    t = Trainer(config, None)
    t.model_state = model_state
    it = t.dataset.iterator(split, config.eval_batch_size, shuffle=False, num_epochs=1)
    mse, mae = [], []
    with jax.set_mesh(t.mesh), nn.logical_axis_rules(t.rules):
        for batch in it:
            pred, batch = t.task.predict(t, params, batch)
            keep = batch["valid"].astype(bool) if "valid" in batch else slice(None)
            err = (pred.astype(np.float64) - batch["targets"].astype(np.float64))[keep]
            mse.append(np.square(err).mean(axis=(1, 2)))
            mae.append(np.abs(err).mean(axis=(1, 2)))
    return {"mse": np.concatenate(mse), "mae": np.concatenate(mae)}


def train_one(workdir: Path, dataset, horizon, model, norm, seed, lr, *, quick=False) -> dict | None:
    """The run's row (and its per-window test errors in WORKDIR/errors), or None if it was stopped."""
    b = budget(quick)
    config = config_for(dataset, horizon, model, norm, seed, lr, quick)
    name = run_name(dataset, horizon, model, norm, seed, lr)
    start = time.time()
    result = train_to_early_stop(config, workdir / name, eval_every=b["eval_every"], patience=b["patience"])
    if result is None:
        return None
    best = result["best"]
    test = forecast_errors(config, best["params"], best["model_state"], "test")
    path = workdir / "errors" / (name.replace("/", "__") + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{f"test_{k}": v.astype(np.float32) for k, v in test.items()})
    return {"data": dataset, "horizon": horizon, "model": model, "norm": norm, "seed": seed, "lr": lr,
            "window_norm": config.task_options.window_norm, "best_step": best["step"],
            "stopped_at": result["stopped_at"], "stopped_early": result["stopped_early"],
            "max_steps": config.total_steps, "seconds": round(time.time() - start, 1),
            "validation/mse": round(float(best["eval"]["eval/mse"]), 6), "test/mse": round(float(test["mse"].mean()), 6),
            "test/mae": round(float(test["mae"].mean()), 6), "errors": str(path.relative_to(workdir))}


def _key(run: dict) -> tuple:
    return run["data"], run["horizon"], run["model"], run["norm"], run["seed"], run["lr"]


def read_runs(workdir: Path) -> list[dict]:
    rows = []
    for path in sorted(workdir.glob("runs_*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list({_key(r): r for r in rows}.values())


def chosen_lr(runs: list[dict], cell: tuple, sweep, seed: int) -> float | None:
    """The sweep's learning rate with the best validation MSE on `seed` in `cell` (the group's first
    horizon), or None until all have run."""
    d, h, m, n = cell
    found = {r["lr"]: r["validation/mse"] for r in runs if (r["data"], r["horizon"], r["model"], r["norm"],
                                                             r["seed"]) == (d, h, m, n, seed)}
    if any(lr not in found for lr in sweep):
        return None
    return min(sweep, key=lambda lr: (found[lr], lr))


def run_group(workdir: Path, group: list[tuple], seeds: list[int], *, quick: bool, log) -> None:
    """The sweep on seeds[0] at the group's first horizon, then every seed (the other horizons') at the
    chosen rate; skips what has run."""
    sweep = forecasting.LR_SWEEP[group[0][2]]
    for lr in sweep:
        _ensure(workdir, (*group[0], seeds[0], lr), quick=quick, log=log)
    lr = chosen_lr(read_runs(workdir), group[0], sweep, seeds[0])
    for cell in group:
        for seed in seeds:
            _ensure(workdir, (*cell, seed, lr), quick=quick, log=log)


def _ensure(workdir, spec, *, quick, log):
    if spec in {_key(r) for r in read_runs(workdir)}:
        return
    row = train_one(workdir, *spec, quick=quick)
    if row is None:
        raise SystemExit(f"stopped during {spec}; run the same command again to finish the table")
    print(json.dumps(row), flush=True)
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")


def final_runs(runs: list[dict], group_list, seeds) -> tuple[dict, list]:
    """{cell: [the chosen rate's row per seed]} and the cells not finished yet."""
    out, missing = {}, []
    for group in group_list:
        lr = chosen_lr(runs, group[0], forecasting.LR_SWEEP[group[0][2]], seeds[0])
        for cell in group:
            rows = {r["seed"]: r for r in runs if _key(r)[:4] == cell and r["lr"] == lr}
            if lr is None or any(s not in rows for s in seeds):
                missing.append(cell)
            else:
                out[cell] = [rows[s] for s in seeds]
    return out, missing


def load_errors(workdir: Path, rows: list[dict], metric: str = "mse", split: str = "test") -> np.ndarray:
    """[seeds, windows] per-window errors of a cell's rows."""
    return np.stack([np.load(workdir / r["errors"])[f"{split}_{metric}"].astype(np.float64) for r in rows])


# --- the floors ---

def split_windows(dataset: str, horizon: int, split: str) -> dict[str, np.ndarray]:
    loaded = data.load(config_for(dataset, horizon, "dlinear", "none", 0, 0.0).data)
    source = loaded.source(split)
    return source.take(np.arange(len(source)))


def naive_errors(windows) -> dict[str, np.ndarray]:
    err = windows["targets"].astype(np.float64) - windows["inputs"][:, -1:].astype(np.float64)
    return {"mse": np.square(err).mean(axis=(1, 2)), "mae": np.abs(err).mean(axis=(1, 2))}


def ets_forecasts(inputs: np.ndarray, horizon: int) -> np.ndarray:
    """statsforecast AutoETS fitted to each window's lookback, per channel: [windows, horizon, channels]."""
    from statsforecast.models import AutoETS
    out = np.empty((inputs.shape[0], horizon, inputs.shape[2]))
    for i in range(inputs.shape[0]):
        for c in range(inputs.shape[2]):
            y = inputs[i, :, c].astype(np.float64)
            out[i, :, c] = AutoETS(season_length=1).forecast(y=y, h=horizon)["mean"]
    return out


def floor_errors(workdir: Path, dataset: str, horizon: int, *, quick: bool = False) -> dict:
    """Naive and ETS per-window test errors, cached in WORKDIR/errors/floors_DATA_hH.npz (ETS over the first
    few windows only with quick)."""
    path = workdir / "errors" / f"floors_{dataset}_h{horizon}{'_quick' if quick else ''}.npz"
    if path.exists():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    test = split_windows(dataset, horizon, "test")
    out = {f"naive_{k}": v for k, v in naive_errors(test).items()}
    inputs, targets = test["inputs"], test["targets"].astype(np.float64)
    if quick:  # ETS on every window takes a minute or two per cell
        inputs, targets = inputs[:8], targets[:8]
    err = ets_forecasts(inputs, horizon) - targets
    out.update(ets_mse=np.square(err).mean(axis=(1, 2)), ets_mae=np.abs(err).mean(axis=(1, 2)))
    train = split_windows(dataset, horizon, "train")
    seen = np.concatenate([train["inputs"], train["targets"]], axis=1)
    low, high = seen.min(axis=(0, 1)), seen.max(axis=(0, 1))
    out["outside_train_range"] = np.float64(np.mean((test["targets"] < low) | (test["targets"] > high)))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return out


def test_days(dataset: str, horizon: int) -> list[str]:
    loaded = data.load(config_for(dataset, horizon, "dlinear", "none", 0, 0.0).data)
    dates = loaded.info["dates"]["test"][loaded.info["first_target"]["test"]:]
    return [str(dates[0]), str(dates[-1])]


# --- the summary and the table ---

def summarize(workdir: Path, finals: dict, floors: dict, *, num_resamples: int = 1000) -> dict:
    """Per cell: seeds' test MSE, the block-bootstrap interval (seeds and test windows) of the mean test
    MSE, the ratio to naive and its interval (paired), best steps and stopping; per (data, horizon): the
    floors' intervals."""
    cells_out, floors_out = {}, {}
    for (d, h), f in floors.items():
        n = len(f["naive_mse"])
        floors_out[f"{d}_h{h}"] = {
            "windows": n, "block": h, "outside_train_range": float(f["outside_train_range"]),
            "naive_mse": block_bootstrap_ci(f["naive_mse"], block=h, num_resamples=num_resamples),
            "naive_mae": float(f["naive_mae"].mean()),
            "ets_mse": block_bootstrap_ci(f["ets_mse"], block=h, num_resamples=num_resamples),
            "ets_mae": float(f["ets_mae"].mean()), "ets_windows": len(f["ets_mse"])}
    for cell, rows in finals.items():
        d, h, m, n = cell
        e = load_errors(workdir, rows)
        naive = floors[(d, h)]["naive_mse"]
        diff = paired_block_bootstrap_ci(e, naive[None], block=h, num_resamples=num_resamples)
        cells_out["|".join(map(str, cell))] = {
            "data": d, "horizon": h, "model": m, "norm": n, "lr": rows[0]["lr"],
            "window_norm": rows[0]["window_norm"],
            "test_mse_seeds": [r["test/mse"] for r in rows], "test_mae_seeds": [r["test/mae"] for r in rows],
            "validation_mse_seeds": [r["validation/mse"] for r in rows],
            "test_mse_ci": block_bootstrap_ci(e, block=h, num_resamples=num_resamples),
            "minus_naive_mse_ci": diff, "ratio_to_naive": float(e.mean() / naive.mean()),
            "best_steps": [r["best_step"] for r in rows], "stopped_at": [r["stopped_at"] for r in rows],
            "stopped_early": [r["stopped_early"] for r in rows], "seconds": [r["seconds"] for r in rows]}
    return {"cells": cells_out, "floors": floors_out}


def _ci(ci, digits=4) -> str:
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def render(summary: dict, command: str, days: dict, settings: dict) -> str:
    cells_, floors = summary["cells"], summary["floors"]
    first = {}
    for v in cells_.values():
        first.setdefault(v["data"], v["horizon"])
    lines = [
        "# Forecasting: linear models, transformer forecasters and the floors",
        "",
        f"Generated by `{command}` ({datetime.date.today().isoformat()}); every run's numbers are in "
        "forecasting.json. Protocol (experiments/forecasting_table.py, experiments/configs/forecasting.py): "
        "lookback 96 days, chronological 70/10/20 splits, every channel standardised with its train split's "
        "mean and std; errors in those units, averaged over every channel and horizon step of a test window. "
        f"Each cell's learning rate is the best validation loss of a three-value sweep on seed 0 "
        f"(`LR_SWEEP`); every run trains to early stopping (validation every {settings['eval_every']} steps, "
        f"patience {settings['patience']} evaluations, at most {settings['max_steps']} steps) and its best "
        "validation parameters are scored once on test. Test MSE: mean over 3 seeds ± their std, then the "
        "95% circular block-bootstrap interval of the mean (seeds and blocks of `horizon` consecutive test "
        "windows resampled: windows closer than the horizon share target days; at horizon 96 a resample holds "
        "only 3-4 blocks, so those intervals are rough). 'vs naive': the paired interval of "
        "the model's MSE minus naive's on the same windows; below 0 beats naive outside the noise. The "
        "transformers are narrower than in their papers (d_model 32, iTransformer 128) to train on a CPU.",
        "",
        "- `stocks`: daily adjusted closes of AAPL, GOOG, IBM, MSFT, the S&P 500 and the NASDAQ Composite "
        "(all six forecast).",
        "- `seattle_weather`: daily precipitation, max/min temperature and wind in Seattle.",
        "- naive: every horizon step repeats the last observed day. AutoETS: statsforecast's, fitted to each "
        "test window's 96-day lookback per channel.",
        "- per window: what the model sees of each input window. '(task)' is the forecasting task's "
        "`window_norm='mean_std'` (RevIN without affine, output mapped back); '(own)' is the model's own.",
        "- test target days: " + "; ".join(f"{d}: {days[d][0]}..{days[d][1]}" for d in first) + ".",
        "- share of test target values outside the range of the training windows: "
        + "; ".join(f"{d} {floors[f'{d}_h{h}']['outside_train_range']:.0%}" for d, h in first.items())
        + ". A model that maps standardised levels to levels has never seen such values; one that sees each "
        "window relative to itself has.",
        "",
        "| data | horizon | model | per window | lr | test MSE (seeds) | test MSE, 95% interval | vs naive (MSE diff.) "
        "| MSE / naive | test MAE | best step | stopped early |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys(f"{v['data']}_h{v['horizon']}" for v in cells_.values()):
        f = floors[key]
        d, h = key.rsplit("_h", 1)
        lines.append(f"| {d} | {h} | naive last value | - | - | {f['naive_mse'][0]:.4f} | {_ci(f['naive_mse'])} | - "
                     f"| 1.00 | {f['naive_mae']:.4f} | - | - |")
        lines.append(f"| {d} | {h} | AutoETS (statsforecast) | - | - | {f['ets_mse'][0]:.4f} | {_ci(f['ets_mse'])} | "
                     f"- | {f['ets_mse'][0] / f['naive_mse'][0]:.2f} | {f['ets_mae']:.4f} | - | - |")
        for v in (v for v in cells_.values() if f"{v['data']}_h{v['horizon']}" == key):
            mse = v["test_mse_seeds"]
            lines.append(
                f"| {d} | {h} | {NAMES[v['model']]} | {forecasting.NORMS[v['model']][v['norm']]} | {v['lr']:.2g} | "
                f"{np.mean(mse):.4f} ± {np.std(mse, ddof=1):.4f} | {_ci(v['test_mse_ci'])} | "
                f"{_ci(v['minus_naive_mse_ci'])} | {v['ratio_to_naive']:.2f} | {np.mean(v['test_mae_seeds']):.4f} | "
                f"{np.mean(v['best_steps']):.0f} | {sum(v['stopped_early'])}/{len(v['stopped_early'])} |")
    if summary.get("missing"):
        lines += ["", f"Not run (the shared CPUs' time ran out): {len(summary['missing'])} cells: "
                  + "; ".join(f"{d} h{h} {NAMES[m]} {n}" for d, h, m, n in summary["missing"]) + "."]
    beats = [v for v in cells_.values() if v["minus_naive_mse_ci"][2] < 0]
    lines += ["", f"{len(beats)} of {len(cells_)} model rows beat the naive forecast outside the noise (the paired "
              "interval of the MSE difference below 0)"
              + (": " + ", ".join(sorted({f"{v['data']} h{v['horizon']}" for v in beats})) if beats else "") + ".",
              "The claims these rows test (LTSF-Linear, Autoformer, iTransformer) are judged in "
              "experiments/results/claims.md (experiments/claims/forecasting.py)."]
    return "\n".join(lines) + "\n"


def setup_compilation_cache(workdir: Path) -> None:
    """A run trains in several pieces, each compiling its steps again: the persistent cache makes the later
    pieces' compiles reads."""
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run_table(workdir: Path, *, datasets, horizons, models, norms, seeds, quick=False, shard=(0, 1)) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    setup_compilation_cache(workdir)
    log = workdir / f"runs_{shard[0]}.jsonl"
    for i, group in enumerate(groups(datasets, horizons, models, norms)):
        if i % shard[1] == shard[0]:
            run_group(workdir, group, seeds, quick=quick, log=log)


def collect(workdir: Path, *, datasets, horizons, models, norms, seeds, quick=False, allow_missing=False,
            num_resamples: int = 1000) -> tuple[dict, dict, dict]:
    """(summary, {cell: final rows}, {(data, horizon): floor errors}); SystemExit if runs are missing, unless
    allow_missing (then the summary lists the unfinished cells under 'missing')."""
    finals, missing = final_runs(read_runs(workdir), groups(datasets, horizons, models, norms), seeds)
    if missing and not allow_missing:
        raise SystemExit(f"{len(missing)} cells are not finished yet (other shards still running?), e.g. "
                         f"{missing[:3]}; run again when they are")
    floors = {(d, int(h)): floor_errors(workdir, d, int(h), quick=quick) for d in datasets for h in horizons}
    summary = summarize(workdir, finals, floors, num_resamples=num_resamples)
    summary["missing"] = [list(c) for c in missing]
    return summary, finals, floors


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    workdir = Path(WORKDIR.value)
    seeds = [int(s) for s in SEEDS.value]
    grid = dict(datasets=DATA.value, horizons=[int(h) for h in HORIZONS.value], models=MODELS.value,
                norms=NORMS.value, seeds=seeds, quick=QUICK_FLAG.value)
    index, count = (int(x) for x in SHARD.value.split("/"))
    if not REPORT_ONLY.value:
        run_table(workdir, **grid, shard=(index, count))
    if not OUTPUT.value:
        return
    summary, finals, _ = collect(workdir, **grid, allow_missing=REPORT_ONLY.value)
    flags_used = [f"--data={','.join(DATA.value)}", f"--horizons={','.join(HORIZONS.value)}",
                  f"--models={','.join(MODELS.value)}", f"--norms={','.join(NORMS.value)}",
                  f"--seeds={','.join(SEEDS.value)}"] + (["--quick"] if QUICK_FLAG.value else [])
    # Not --report_only: the printed command is the one that reproduces the runs (it trains what is missing).
    command = " ".join(["python -m experiments.forecasting_table", *flags_used, f"--output={OUTPUT.value}"])
    days = {d: test_days(d, grid["horizons"][0]) for d in DATA.value}
    output = Path(OUTPUT.value)
    output.write_text(render(summary, command, days, budget(QUICK_FLAG.value)))
    all_runs = [r for rows in finals.values() for r in rows]
    sweeps = [r for r in read_runs(workdir) if _key(r)[:4] in finals and r["seed"] == seeds[0]]
    output.with_suffix(".json").write_text(json.dumps(
        {"command": command, "budget": budget(QUICK_FLAG.value), "lr_sweep": forecasting.LR_SWEEP,
         "summary": summary, "runs": all_runs, "sweep_runs": sweeps}, indent=1, default=float) + "\n")
    print(output.read_text())


if __name__ == "__main__":
    app.run(main)

r"""Trains every forecaster of experiments/configs/forecasting.py on the same data and writes the comparison
table (experiments/results/forecasting.md, with every run's numbers in forecasting.json).

    JAX_PLATFORMS=cpu python -m experiments.forecasting_table --workdir=/tmp/forecasting \
        --output=experiments/results/forecasting.md

Each (dataset, horizon, model, seed) trains in WORKDIR/DATA_hHORIZON/MODEL_seedS through the ordinary trainer,
with early stopping's model selection (config.best_metric='loss' on validation); the parameters of the
best validation evaluation are then scored once on the test split. A finished run is resumed, not trained
again, so an interrupted table is completed by running the same command; `--shard=i/n` splits the runs
between n processes (each writes WORKDIR/runs_i.jsonl; the one given --output merges every shard's runs).
The floor every model is compared to is the naive forecast that repeats the last observed value.
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from experiments.configs import forecasting
from fintrans import data
from fintrans.data.builders.series import naive_last_value_errors
from fintrans.train import evaluate_params, train_and_evaluate

DEFAULT_MODELS = ("dlinear", "nlinear", "transformer_forecaster", "autoformer", "itransformer", "time2vec_encoder")
LINEAR = ("dlinear", "nlinear")
# How a model sees each input window relative to its own level (the rest see train-standardised levels).
PER_WINDOW = {"nlinear": "last value subtracted", "itransformer": "own mean and std",
              "time2vec_last": "last value subtracted"}
NAMES = {"dlinear": "DLinear", "nlinear": "NLinear", "transformer_forecaster": "vanilla Transformer",
         "autoformer": "Autoformer", "itransformer": "iTransformer", "time2vec_encoder": "Time2Vec encoder",
         "time2vec_last": "Time2Vec encoder, last value subtracted"}

DATA = flags.DEFINE_list("data", ["stocks", "seattle_weather"], "datasets of experiments/configs/forecasting.py")
HORIZONS = flags.DEFINE_list("horizons", ["24", "48", "96"], "forecast horizons")
MODELS = flags.DEFINE_list("models", list(DEFAULT_MODELS), f"models, from {forecasting.MODELS}")
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds per model")
STEPS = flags.DEFINE_integer("steps", 0, ">0: override every run's total_steps (quick checks)")
WORKDIR = flags.DEFINE_string("workdir", "/tmp/forecasting_table", "where runs are written")
SHARD = flags.DEFINE_string("shard", "0/1", "i/n: train every n-th run starting at the i-th")
OUTPUT = flags.DEFINE_string("output", "", "write the table (markdown) here, and every run as JSON next to it")


def run_specs():
    """Every (data, horizon, model, seed), seed by seed: the first seeds of the whole grid finish first."""
    return [(d, int(h), m, int(s)) for s in SEEDS.value for d in DATA.value for h in HORIZONS.value
            for m in MODELS.value]


def config_for(dataset: str, horizon: int, model: str, seed: int):
    c = forecasting.get_config(f"model={model},data={dataset},horizon={horizon}")
    c.seed = seed
    c.progress_bar = False
    if STEPS.value:
        c.total_steps = STEPS.value
        c.eval_every = c.checkpoint_every = max(1, STEPS.value // 4)
    return c


def train_one(workdir: Path, dataset: str, horizon: int, model: str, seed: int) -> dict | None:
    """The run's row, or None if it stopped early (SIGTERM: its checkpoint lets the next invocation finish it)."""
    config = config_for(dataset, horizon, model, seed)
    start = time.time()
    result = train_and_evaluate(config, str(workdir / f"{dataset}_h{horizon}" / f"{model}_seed{seed}"))
    if result["step"] != config.total_steps:
        return None
    best = result["best"]
    scores = evaluate_params(config, best["params"], model_state=best["model_state"])
    return {"data": dataset, "horizon": horizon, "model": model, "seed": seed, "best_step": best["step"],
            "total_steps": config.total_steps, "seconds": round(time.time() - start, 1),
            **{k: round(v, 6) for k, v in scores.items()}}


def naive_floor(dataset: str, horizon: int) -> dict:
    """The naive forecast's validation and test errors, the test split's first and last target days, and the
    share of test target values outside the range the training windows span (per channel)."""
    loaded = data.load(config_for(dataset, horizon, "dlinear", 0).data)
    dates = loaded.info["dates"]["test"][loaded.info["first_target"]["test"]:]
    train, test = (loaded.source(s).take(np.arange(len(loaded.source(s)))) for s in ("train", "test"))
    seen = np.concatenate([train["inputs"], train["targets"]], axis=1)
    low, high = seen.min(axis=(0, 1)), seen.max(axis=(0, 1))
    outside = float(np.mean((test["targets"] < low) | (test["targets"] > high)))
    return {**{split: naive_last_value_errors(loaded.source(split)) for split in ("validation", "test")},
            "test_days": [str(dates[0]), str(dates[-1])], "test_outside_train_range": outside}


def _cell(values) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def render(runs: list[dict], floors: dict, command: str) -> str:
    """The markdown table and its verdict, from every run's test scores."""
    first = {d: floors[(d, h)] for d, h in sorted(floors, key=lambda k: -k[1])}  # each dataset's shortest horizon
    lines = [
        "# Forecasting: linear models against transformer forecasters",
        "",
        f"Generated by `{command}` ({datetime.date.today().isoformat()}); every run's numbers are in "
        "forecasting.json. Protocol (experiments/configs/forecasting.py): lookback 96 days, chronological "
        "70/10/20 splits, every channel standardised with its train split's mean and std, errors in those "
        "units averaged over every channel and horizon step of every test window. Each run keeps the "
        "parameters of its best validation loss (evaluated every "
        f"{config_for(runs[0]['data'], runs[0]['horizon'], runs[0]['model'], 0).eval_every} steps) and is "
        "scored once on test. Mean ± std over seeds. The transformers are narrower than in their papers "
        "(d_model 64-128) to train on a CPU.",
        "",
        "- `stocks`: daily adjusted closes of AAPL, GOOG, IBM, MSFT, the S&P 500 and the NASDAQ Composite "
        "(all six forecast).",
        "- `seattle_weather`: daily precipitation, max/min temperature and wind in Seattle.",
        "- naive: every horizon step repeats the last observed day; the floor a forecaster must beat.",
        "- test target days: " + "; ".join(f"{d}: {f['test_days'][0]}..{f['test_days'][1]}" for d, f in first.items())
        + ".",
        "- share of test target values outside the range of the training windows: "
        + "; ".join(f"{d} {f['test_outside_train_range']:.0%}" for d, f in first.items())
        + ". A model that maps standardised levels to levels has never seen such values; one that sees each "
        "window relative to itself (the 'per window' column) has.",
        "",
        "| data | horizon | model | per window | seeds | test MSE | test MAE | MSE / naive | best step (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for dataset in dict.fromkeys(r["data"] for r in runs):
        for horizon in sorted({r["horizon"] for r in runs if r["data"] == dataset}):
            naive = floors[(dataset, horizon)]["test"]
            lines.append(f"| {dataset} | {horizon} | naive last value | - | - | {naive['mse']:.4f} | "
                         f"{naive['mae']:.4f} | 1.00 | - |")
            cell = [r for r in runs if r["data"] == dataset and r["horizon"] == horizon]
            means, spreads = {}, {}
            for model in dict.fromkeys(r["model"] for r in cell):
                rs = [r for r in cell if r["model"] == model]
                mse = [r["test/mse"] for r in rs]
                means[model], spreads[model] = float(np.mean(mse)), float(np.std(mse))
                lines.append(f"| {dataset} | {horizon} | {NAMES[model]} | {PER_WINDOW.get(model, '-')} | {len(rs)} | "
                             f"{_cell(mse)} | "
                             f"{_cell([r['test/mae'] for r in rs])} | {np.mean(mse) / naive['mse']:.2f} | "
                             f"{np.mean([r['best_step'] for r in rs]):.0f} |")
            verdicts.append(_verdict(dataset, horizon, means, spreads, naive["mse"]))
    lines += ["", "## Does LTSF-Linear's claim hold here?", "",
              "The claim (Zeng et al., AAAI 2023): a one-layer linear model on the lookback window (DLinear, "
              "NLinear) forecasts better than the transformer forecasters. Per cell, by mean test MSE:", ""]
    lines += [f"- {v['text']}" for v in verdicts]
    compared = [v for v in verdicts if v["compared"]]
    beats_naive = sum(v["any_beats_naive"] for v in verdicts)
    if compared:
        lines += ["", f"**The best linear model beats every transformer in {sum(v['linear_wins'] for v in compared)}"
                  f" of {len(compared)} cells.**"]
    unbeaten = [f"{v['data']} {v['horizon']}" for v in verdicts if not v["any_beats_naive"]]
    lines += ["", f"Some model beats the naive last-value forecast in {beats_naive} of {len(verdicts)} cells"
              + (f"; none does in {', '.join(unbeaten)}." if unbeaten else ".")]
    return "\n".join(lines) + "\n"


def _verdict(dataset: str, horizon: int, means: dict, spreads: dict, naive_mse: float) -> dict:
    linear = {m: v for m, v in means.items() if m in LINEAR}
    others = {m: v for m, v in means.items() if m not in LINEAR}
    best_linear = min(linear, key=linear.get) if linear else None
    best_other = min(others, key=others.get) if others else None
    wins = bool(linear and others and linear[best_linear] < others[best_other])
    parts = [f"{dataset}, horizon {horizon}:"]
    if best_linear and best_other:
        margin = abs(linear[best_linear] - others[best_other])
        spread = max(spreads[best_linear], spreads[best_other])
        parts.append(f"best linear {NAMES[best_linear]} {linear[best_linear]:.4f}, best transformer "
                     f"{NAMES[best_other]} {others[best_other]:.4f}: the claim "
                     f"{'holds' if wins else 'does not hold'}"
                     + (f" (but the margin, {margin:.4f}, is within the seeds' spread, {spread:.4f})"
                        if margin <= spread else "") + ";")
    best = min(means, key=means.get)
    parts.append(f"best overall {NAMES[best]} at {means[best] / naive_mse:.2f}x the naive MSE.")
    return {"text": " ".join(parts), "linear_wins": wins, "compared": bool(best_linear and best_other),
            "data": dataset, "horizon": horizon,
            "any_beats_naive": means[best] < naive_mse}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    workdir = Path(WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    index, count = (int(x) for x in SHARD.value.split("/"))
    log_path = workdir / f"runs_{index}.jsonl"
    done = {_key(r) for r in _read_runs(workdir.glob("runs_*.jsonl"))}  # by any shard, under any sharding
    for i, spec in enumerate(run_specs()):
        if i % count != index or spec in done:
            continue
        row = train_one(workdir, *spec)
        if row is None:
            raise SystemExit(f"stopped during {spec}; run the same command again to finish the table")
        print(json.dumps(row), flush=True)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
    if not OUTPUT.value:
        return
    wanted = set(run_specs())
    runs = list({_key(r): r for r in _read_runs(sorted(workdir.glob("runs_*.jsonl"))) if _key(r) in wanted}.values())
    missing = wanted - {_key(r) for r in runs}
    if missing:
        raise SystemExit(f"{len(missing)} runs are not finished yet (other shards still running?), e.g. "
                         f"{sorted(missing)[:3]}; run again when they are")
    order = {spec: i for i, spec in enumerate(run_specs())}
    runs.sort(key=lambda r: order[_key(r)])
    floors = {(d, h): naive_floor(d, h) for d, h in dict.fromkeys((r["data"], r["horizon"]) for r in runs)}
    flags_used = [f"--data={','.join(DATA.value)}", f"--horizons={','.join(HORIZONS.value)}",
                  f"--models={','.join(MODELS.value)}", f"--seeds={','.join(SEEDS.value)}"]
    if STEPS.value:
        flags_used.append(f"--steps={STEPS.value}")
    command = " ".join(["python -m experiments.forecasting_table", *flags_used, f"--output={OUTPUT.value}"])
    output = Path(OUTPUT.value)
    output.write_text(render(runs, floors, command))
    output.with_suffix(".json").write_text(json.dumps(
        {"command": command, "naive": {f"{d}_h{h}": v for (d, h), v in floors.items()}, "runs": runs}, indent=1)
        + "\n")
    print(output.read_text())


def _key(run: dict) -> tuple:
    return run["data"], run["horizon"], run["model"], run["seed"]


def _read_runs(paths) -> list[dict]:
    rows = []
    for path in paths:
        if Path(path).exists():
            rows += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows


if __name__ == "__main__":
    app.run(main)

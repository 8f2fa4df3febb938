r"""UEA/UCR classification: test accuracy of our models and of two standard baselines, with uncertainty.

    JAX_PLATFORMS=cpu python -m experiments.uea_test_accuracy \
        --config=t2_uea:runlocal,dataset=arrow_head --config=minirocket:dataset=arrow_head,fit=train \
        --seeds=0,1,2

Rows. `--config=NAME:ARG` names one row:
  - a training config (experiments/configs/NAME.py, e.g. t2_uea:runlocal,dataset=osu_leaf): each seed trains
    from scratch in WORKDIR/TAG_seedS through the ordinary trainer, on the dataset's `train` split (80% of
    the official TRAIN file; the trainer evaluates on the other 20%, `validation`), and the final parameters
    (the EMA with config.ema_decay) then classify the official TEST file once;
  - a baseline, `minirocket:dataset=D,fit=F` or `dtw:dataset=D,fit=F`, the standard recipes from sktime:
      minirocket  MiniRocketMultivariate (10,000 kernels, random_state=seed) + RidgeClassifierCV
                  (alphas logspace(-3, 3, 10)), the MiniRocket paper's classifier;
      dtw         KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw"), full window; deterministic,
                  so it runs once whatever --seeds says;
    fitted with fit=train on the same 80% our models train on, or with fit=full on the whole TRAIN file (the
    published protocol). Series of unequal length (japanese_vowels) are padded to the set's longest by
    repeating their last value (sktime's MiniRocket takes equal lengths only; 1-NN DTW gets the same arrays).

Cache. Every (row, seed) result is kept in --json (default experiments/results/uea_classification.json)
with each test series' correctness (a '0'/'1' string in TEST-file order). A run recomputes only the rows it
names (training from scratch: the run's workdir is cleared) and keeps every other row from the JSON; the
markdown table (--output) is always made from the whole JSON. So rerunning, say, the ShapeFormer rows is `--config=shapeformer_uea:runlocal,dataset=...` alone.
`--list` prints the cached rows. `--drop=ROW` removes a row from the JSON.

Uncertainty: mean ± sample std over seeds, and a 95% bootstrap interval of the accuracy over test series
(seeds averaged per series, series resampled; experiments.claims.common.bootstrap_ci).
"""
from __future__ import annotations

import importlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from experiments.claims.common import bootstrap_ci, markdown_table

ROWS = flags.DEFINE_multi_string("config", [], "rows to (re)compute: NAME:ARG of experiments/configs/NAME.py, "
                                               "or minirocket:dataset=D,fit=train|full, dtw:dataset=D,fit=...")
SEEDS = flags.DEFINE_string("seeds", "0,1,2", "comma-separated seeds")
WORKDIR = flags.DEFINE_string("workdir", "/tmp/uea_test_accuracy", "where training runs are written")
JSON = flags.DEFINE_string("json", str(Path(__file__).parent / "results" / "uea_classification.json"),
                           "the cache of every (row, seed) result")
OUTPUT = flags.DEFINE_string("output", str(Path(__file__).parent / "results" / "uea_classification.md"),
                             "the markdown table, made from the whole JSON ('' to skip)")
LIST = flags.DEFINE_bool("list", False, "print the cached rows and exit")
DROP = flags.DEFINE_multi_string("drop", [], "rows to remove from the JSON")

BASELINES = ("minirocket", "dtw")
FITS = ("train", "full")
DATASET_PROBLEMS = {"basic_motions": "BasicMotions", "japanese_vowels": "JapaneseVowels", "arrow_head": "ArrowHead",
                    "osu_leaf": "OSULeaf"}

# dataset -> published test accuracies (whole TRAIN file), with their sources.
PUBLISHED = {
    "basic_motions": "1-NN DTW_D 0.975 (Bagnall et al. 2018, UEA archive paper)",
    "japanese_vowels": "1-NN DTW_D 0.949 (Bagnall et al. 2018, UEA archive paper)",
    "arrow_head": "1-NN DTW (full window) 0.703 (UCR archive 2018 table)",
    "osu_leaf": "1-NN DTW (full window) 0.591 (UCR archive 2018 table)",
}
PUBLISHED_NOTE = ("Published figures are quoted from the archives' tables as we recall them (not checkable "
                  "offline here); neither the t2 paper (PLAsTiCC only) nor this table's runlocal configs claim "
                  "to reproduce a published model number.")


def parse_row(row: str) -> tuple[str, dict[str, str]]:
    name, _, arg = row.partition(":")
    fields = dict(kv.split("=", 1) for kv in arg.split(",") if "=" in kv)
    return name, fields


def dataset_of(row: str) -> str:
    name, fields = parse_row(row)
    if name in BASELINES:
        return fields.get("dataset", "")
    return importlib.import_module(f"experiments.configs.{name}").get_config(row.partition(":")[2] or None).data.name


def check_baseline_row(row: str) -> tuple[str, str, str]:
    name, fields = parse_row(row)
    dataset, fit = fields.get("dataset"), fields.get("fit", "train")
    if dataset not in DATASET_PROBLEMS:
        raise ValueError(f"row {row!r}: dataset={dataset!r} is not one of {sorted(DATASET_PROBLEMS)}")
    if fit not in FITS:
        raise ValueError(f"row {row!r}: fit={fit!r} is not one of {FITS}")
    unknown = sorted(set(fields) - {"dataset", "fit"})
    if unknown:
        raise ValueError(f"row {row!r}: unknown field(s) {unknown}; a baseline row takes dataset= and fit=")
    return name, dataset, fit


# --- baselines ------------------------------------------------------------------------------------
def padded_panel(series: list[np.ndarray], length: int) -> np.ndarray:
    """[n, channels, length] (sktime's numpy3D), each series padded by repeating its last step."""
    return np.stack([np.pad(s, ((0, length - len(s)), (0, 0)), mode="edge").T for s in series])


def baseline_data(dataset: str, fit: str):
    """(X_fit, y_fit, X_test, y_test) as numpy3D panels: the fit rows are the dataset's `train` split
    (fit='train') or the whole official TRAIN file (fit='full')."""
    from fintrans.data.builders import uea

    problem = DATASET_PROBLEMS[dataset]
    train, test = uea.load_official(problem, "TRAIN"), uea.load_official(problem, "TEST")
    rows = uea.split_rows(train.labels)["train"] if fit == "train" else np.arange(len(train.series))
    length = max(len(s) for s in train.series + test.series)
    x_fit = padded_panel([train.series[i] for i in rows], length)
    return x_fit, train.labels[rows], padded_panel(test.series, length), test.labels


def run_baseline(name: str, dataset: str, fit: str, seed: int) -> dict:
    x_fit, y_fit, x_test, y_test = baseline_data(dataset, fit)
    start = time.perf_counter()
    if name == "minirocket":
        from sklearn.linear_model import RidgeClassifierCV
        from sktime.transformations.panel.rocket import MiniRocketMultivariate

        rocket = MiniRocketMultivariate(random_state=seed)
        features = rocket.fit_transform(x_fit)
        ridge = RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)).fit(features, y_fit)
        pred = ridge.predict(rocket.transform(x_test))
    else:
        from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier

        pred = KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw").fit(x_fit, y_fit).predict(x_test)
    correct = (np.asarray(pred).astype(np.int64) == y_test)
    return {"test/accuracy": float(correct.mean()), "correct": as_bits(correct),
            "fit_examples": int(len(y_fit)), "wall_s": time.perf_counter() - start}


# --- trained configs --------------------------------------------------------------------------------
def predictions(config, params, model_state, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, label) for every example of `split`, in order."""
    from fintrans.train.loop import Trainer

    t = Trainer(config, None)
    t.init_state(t.example_batch())
    t.model_state = model_state or {}
    preds, labels = [], []
    for batch in t.dataset.iterator(split, config.eval_batch_size, shuffle=False, num_epochs=1):
        logits, b = t.predict(params, batch)
        valid = b["valid"] if "valid" in b else np.ones(len(b["label"]), bool)
        preds.append(np.asarray(logits).argmax(-1)[valid])
        labels.append(b["label"][valid])
    return np.concatenate(preds), np.concatenate(labels)


def run_config(row: str, seed: int, workdir: Path) -> dict:
    from fintrans.train import train_and_evaluate

    name, _, arg = row.partition(":")
    config = importlib.import_module(f"experiments.configs.{name}").get_config(arg or None)
    config.seed = seed
    config.progress_bar = False
    shutil.rmtree(workdir, ignore_errors=True)  # the JSON is the cache; a named row trains from scratch
    start = time.perf_counter()
    result = train_and_evaluate(config, str(workdir))
    wall = time.perf_counter() - start
    out = {"wall_s": wall}
    for split in ("validation", "test"):
        pred, label = predictions(config, result["params"], result.get("model_state"), split)
        out[f"{split}/accuracy"] = float((pred == label).mean())
        if split == "test":
            out["correct"] = as_bits(pred == label)
    return out


# --- the cache and the table ------------------------------------------------------------------------
def as_bits(correct) -> str:
    """Per test series correctness as a '0'/'1' string, in TEST-file order (compact in the JSON)."""
    return "".join("1" if c else "0" for c in np.asarray(correct, bool))


def from_bits(bits: str) -> np.ndarray:
    return np.frombuffer(bits.encode(), np.uint8) - ord("0")


def load_cache(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"rows": {}}


def save_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")


def summarize(row: str, runs: dict) -> dict:
    """Seed statistics and the bootstrap interval of one row's cached runs {seed: result}."""
    accs = [runs[s]["test/accuracy"] for s in sorted(runs, key=int)]
    correct = np.asarray([from_bits(runs[s]["correct"]) for s in sorted(runs, key=int)], np.float64)
    mean, lo, hi = bootstrap_ci(correct)
    std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    return {"row": row, "seeds": len(accs), "mean": float(np.mean(accs)), "std": std, "lo": lo, "hi": hi,
            "per_seed": accs, "test_series": correct.shape[1]}


def describe(row: str) -> tuple[str, str]:
    """(method, fitted on) for the table."""
    name, fields = parse_row(row)
    if name in BASELINES:
        method = "MiniRocket + RidgeClassifierCV" if name == "minirocket" else "1-NN DTW"
        fit = fields.get("fit", "train")
        return method, "80% of TRAIN" if fit == "train" else "all of TRAIN"
    return row, "80% of TRAIN"


def table(cache: dict) -> str:
    by_dataset: dict[str, list[dict]] = {}
    for row, info in cache["rows"].items():
        by_dataset.setdefault(info["dataset"], []).append(summarize(row, info["runs"]))
    parts = []
    for dataset in sorted(by_dataset, key=lambda d: list(DATASET_PROBLEMS).index(d) if d in DATASET_PROBLEMS else 99):
        rows = sorted(by_dataset[dataset], key=lambda s: -s["mean"])
        n = rows[0]["test_series"]
        parts += [f"### {dataset} ({n} test series; published: {PUBLISHED.get(dataset, 'unknown')})", "",
                  markdown_table(
                      ["method", "fitted on", "seeds", "test accuracy (mean ± std over seeds)",
                       "95% bootstrap CI (test series)", "per seed"],
                      [[*describe(s["row"]), s["seeds"], f"{s['mean']:.3f} ± {s['std']:.3f}",
                        f"[{s['lo']:.3f}, {s['hi']:.3f}]", ", ".join(f"{a:.3f}" for a in s["per_seed"])]
                       for s in rows]), ""]
    return "\n".join(parts)


def report(cache: dict) -> str:
    commands = sorted({info["command"] for info in cache["rows"].values()})
    return "\n".join([
        "# UEA/UCR classification: test accuracy", "",
        "Generated by `python -m experiments.uea_test_accuracy` from experiments/results/uea_classification.json "
        "(every (row, seed) result, each test series' correctness included). The rows were computed by:", "",
        *[f"    {c}" for c in commands], "",
        "Our models train on the datasets' `train` split, 80% of the official TRAIN file (the other 20% is the "
        "validation split the trainer evaluates on); test is the official TEST file. The baselines (sktime's "
        "MiniRocket + RidgeClassifierCV, seeds = MiniRocket's random_state; 1-NN DTW, deterministic, one run) are "
        "fitted both on that same 80% and on all of TRAIN (the published protocol). Uncertainty: std over seeds "
        "and a 95% bootstrap interval over test series (seeds averaged per series).", "",
        PUBLISHED_NOTE, "", table(cache)])


def main(argv):
    del argv
    path = Path(JSON.value)
    cache = load_cache(path)
    if LIST.value:
        for row, info in sorted(cache["rows"].items()):
            print(row, "seeds", sorted(info["runs"], key=int))
        return
    for row in DROP.value:
        cache["rows"].pop(row, None)
    seeds = [int(s) for s in SEEDS.value.split(",")]
    for row in ROWS.value:
        name = parse_row(row)[0]
        runs = {}
        if name in BASELINES:
            name, dataset, fit = check_baseline_row(row)
            for seed in (seeds if name == "minirocket" else seeds[:1]):
                runs[str(seed)] = run_baseline(name, dataset, fit, seed)
                print(json.dumps({"row": row, "seed": seed, "test/accuracy": runs[str(seed)]["test/accuracy"]}))
        else:
            dataset = dataset_of(row)
            tag = row.replace(":", "_").replace(",", "_").replace("=", "-")
            for seed in seeds:
                runs[str(seed)] = run_config(row, seed, Path(WORKDIR.value) / f"{tag}_seed{seed}")
                print(json.dumps({"row": row, "seed": seed, **{k: v for k, v in runs[str(seed)].items()
                                                               if k != "correct"}}))
        command = (f"python -m experiments.uea_test_accuracy --config={row} "
                   f"--seeds={','.join(runs)}")
        cache["rows"][row] = {"dataset": dataset, "command": command, "runs": runs}
        save_cache(path, cache)  # after every row: an interrupted run keeps what it finished
    save_cache(path, cache)
    text = report(cache)
    print(text)
    if OUTPUT.value:
        Path(OUTPUT.value).write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)

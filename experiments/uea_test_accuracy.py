r"""Trains UEA classification configs and reports accuracy on the official TEST split.

    JAX_PLATFORMS=cpu python -m experiments.uea_test_accuracy \
        --config=t2_uea:runlocal,dataset=basic_motions --config=t2_uea:runlocal,dataset=japanese_vowels \
        --seeds=0,1 --workdir=/tmp/uea

Each (config, seed) trains in WORKDIR/NAME_ARG_seedS through the ordinary trainer (which resumes a
finished run instead of training again), then the final parameters are evaluated on `test`. The
trainer itself only ever evaluates on `validation` (20% of the official TRAIN file, held out of
`train`), so test accuracy is measured once, after training.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from fintrans.train import train_and_evaluate
from fintrans.train.loop import Trainer

FLAGS = flags.DEFINE_multi_string("config", [], "NAME:ARG of experiments/configs/NAME.py")
SEEDS = flags.DEFINE_string("seeds", "0", "comma-separated seeds")
WORKDIR = flags.DEFINE_string("workdir", "/tmp/uea_test_accuracy", "where runs are written")


def test_accuracy(config, workdir: str) -> dict:
    """Trains (or resumes) `config` in `workdir`; validation and test metrics of the final parameters."""
    config.progress_bar = False
    result = train_and_evaluate(config, workdir)
    t = Trainer(config, None)
    _, shardings = t.init_state(t.example_batch())
    eval_step = t.make_eval_step(shardings.params)
    with jax.set_mesh(t.mesh), nn.logical_axis_rules(t.rules):
        out = {split: t.evaluate(eval_step, result["state"].params, split) for split in ("validation", "test")}
    return {f"{split}/{k}": float(v) for split, m in out.items() for k, v in m.items()}


def main(argv):
    del argv
    rows = []
    for spec in FLAGS.value:
        name, _, arg = spec.partition(":")
        accs = []
        for seed in [int(s) for s in SEEDS.value.split(",")]:
            config = importlib.import_module(f"experiments.configs.{name}").get_config(arg or None)
            config.seed = seed
            tag = f"{name}_{(arg or 'full').replace(',', '_').replace('=', '-')}_seed{seed}"
            metrics = test_accuracy(config, str(Path(WORKDIR.value) / tag))
            accs.append(metrics["test/accuracy"])
            print(json.dumps({"config": spec, "seed": seed, **metrics}))
        rows.append((spec, accs))
    print("\n| config | seeds | test accuracy (mean ± std) |\n|---|---|---|")
    for spec, accs in rows:
        print(f"| {spec} | {len(accs)} | {np.mean(accs):.3f} ± {np.std(accs):.3f} |")


if __name__ == "__main__":
    app.run(main)

"""Launch an experiment.

    python -m experiments.main --config=experiments/configs/NAME.py[:ARGS] --workdir=DIR [--config.KEY=VALUE ...]

A thin absl main over fintrans.train.train_and_evaluate(config, workdir); the config file's
docstring holds its exact launch command. Running again with the same workdir resumes.
"""
from __future__ import annotations

import json
import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from fintrans.train import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/configs/lm_chars.py:runlocal",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every checkpoint step at INFO
    logging.getLogger("fintrans").setLevel(logging.INFO)
    results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    final = {**results.get("train", {}), **results.get("eval", {})}
    print(f"final metrics at step {results['step']}:")
    print(json.dumps({k: round(v, 5) for k, v in final.items()}, indent=2))


if __name__ == "__main__":
    app.run(main)

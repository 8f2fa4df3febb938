r"""ShapeFormer (shared/PAPERS.md row 31) on UEA multivariate classification sets: basic_motions
(default) or japanese_vowels.

Shapelets are discovered here, when the config is built, from the dataset's `train` split only
(fintrans.data.shapelets.score_candidates + select: PIP candidates scored by information gain, `per_class` kept per
class; about 10 s on one CPU core) and stored in config.model (shapelets, shapelet_channels,
shapelet_starts, shapelet_weights), so a saved config reproduces the model exactly.

The datasets' `train` split is 80% of the official TRAIN file (the other 20% is `validation`, what the
trainer evaluates on); `test` is the official TEST file. Published UEA accuracies train on all of TRAIN.

Launch (CPU, about a minute):
  JAX_PLATFORMS=cpu python -m experiments.main --config=experiments/configs/shapeformer_uea.py:runlocal \
      --workdir=/tmp/shapeformer_basic_motions
  JAX_PLATFORMS=cpu python -m experiments.main \
      --config=experiments/configs/shapeformer_uea.py:runlocal,dataset=japanese_vowels --workdir=/tmp/shapeformer_jv
Full run:
  python -m experiments.main --config=experiments/configs/shapeformer_uea.py:dataset=japanese_vowels \
      --workdir=/tmp/shapeformer_jv_full
Test-split accuracy: python -m experiments.uea_test_accuracy --config=shapeformer_uea:runlocal
Arguments: runlocal, dataset (basic_motions | japanese_vowels), per_class (shapelets per class; default 2,
full run 4), window (search window in steps; default 20 for basic_motions, 5 for japanese_vowels).
"""
import functools

import numpy as np

from experiments.configs.common import parse_arg
from experiments.configs.t2_uea import uea_shape
from fintrans import data
from fintrans.data import shapelets
from fintrans.train.config import default_config, model_fields

DEFAULT_WINDOW = {"basic_motions": 20, "japanese_vowels": 5}


@functools.lru_cache(maxsize=None)
def _scored(dataset: str, window: int) -> shapelets.Candidates:
    arrays = data.load({"name": dataset}).source("train").arrays
    series = [x[m] for x, m in zip(arrays["inputs"], arrays["mask"])]
    return shapelets.score_candidates(series, np.asarray(arrays["label"]), window=window)


def discovered(dataset: str, per_class: int, window: int) -> dict:
    """Shapelet config fields from the train split of `dataset` (candidates scored once per process)."""
    return shapelets.select(_scored(dataset, window), per_class).as_config()


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, dataset="basic_motions", per_class=0, window=-1)
    max_len, channels, classes = uea_shape(arg.dataset)
    per_class = arg.per_class or (2 if arg.runlocal else 4)
    window = arg.window if arg.window >= 0 else DEFAULT_WINDOW[arg.dataset]
    found = discovered(arg.dataset, per_class, window)
    c = default_config()
    c.task = "classification"
    c.data.name = arg.dataset
    c.model = model_fields("shapeformer", max_len=max_len, num_channels=channels, num_classes=classes,
                           window=window, shape_embed_dim=64, generic_embed_dim=64, num_heads=8, mlp_dim=256,
                           dropout_rate=0.1, **found)
    c.batch_size = 16
    c.eval_batch_size = 64
    c.total_steps = 2000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.log_every = 50
    c.eval_every = 250
    c.checkpoint_every = 1000
    if arg.runlocal:
        c.model = model_fields("shapeformer", max_len=max_len, num_channels=channels, num_classes=classes,
                               window=window, shape_embed_dim=32, generic_embed_dim=32, num_heads=4, mlp_dim=64,
                               dropout_rate=0.1, **found)
        c.total_steps = 300
        c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 100
        c.checkpoint_every = 300
    return c

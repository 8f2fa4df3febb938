r"""t2 (time-series transformer for photometric classification, docs/papers.md) on UEA
multivariate classification sets basic_motions (default) and japanese_vowels, and the UCR univariate
sets arrow_head and osu_leaf.

The datasets' `train` split is 80% of the official TRAIN file (the other 20% is `validation`, what the
trainer evaluates on); `test` is the official TEST file. Published UEA accuracies train on all of TRAIN.

Launch (CPU, under a minute):
  JAX_PLATFORMS=cpu python -m experiments.main --config=experiments/configs/t2_uea.py:runlocal \
      --workdir=/tmp/t2_basic_motions
  JAX_PLATFORMS=cpu python -m experiments.main --config=experiments/configs/t2_uea.py:runlocal,dataset=japanese_vowels \
      --workdir=/tmp/t2_japanese_vowels
Full run:
  python -m experiments.main --config=experiments/configs/t2_uea.py:dataset=japanese_vowels --workdir=/tmp/t2_jv
Test-split accuracy of a finished run: python -m experiments.uea_test_accuracy --config=t2_uea:runlocal
Arguments: runlocal, dataset (basic_motions | japanese_vowels | arrow_head | osu_leaf).
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields

# dataset -> (max_len, channels, classes), as fintrans.data.builders.uea documents them
UEA_SHAPES = {"basic_motions": (100, 6, 4), "japanese_vowels": (29, 12, 9), "arrow_head": (251, 1, 3),
              "osu_leaf": (427, 1, 6)}


def uea_shape(dataset: str) -> tuple[int, int, int]:
    if dataset not in UEA_SHAPES:
        raise ValueError(f"dataset={dataset!r} is not valid; choose from {sorted(UEA_SHAPES)}")
    return UEA_SHAPES[dataset]


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, dataset="basic_motions")
    max_len, channels, classes = uea_shape(arg.dataset)
    c = default_config()
    c.task = "classification"
    c.data.name = arg.dataset
    c.model = model_fields("t2", max_len=max_len, num_channels=channels, num_classes=classes, embed_dim=64,
                           num_layers=2, num_heads=4, mlp_dim=128, dropout_rate=0.1)
    c.batch_size = 16
    c.eval_batch_size = 64
    c.total_steps = 2000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.log_every = 50
    c.eval_every = 250
    c.checkpoint_every = 1000
    if arg.runlocal:
        c.model = model_fields("t2", max_len=max_len, num_channels=channels, num_classes=classes, embed_dim=32,
                               num_layers=1, num_heads=4, mlp_dim=64, dropout_rate=0.1)
        c.total_steps = 300
        c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 100
        c.checkpoint_every = 300
    return c

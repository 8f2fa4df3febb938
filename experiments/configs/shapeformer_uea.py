r"""ShapeFormer (docs/papers.md) on UEA multivariate classification sets basic_motions (default) and
japanese_vowels, and the UCR univariate sets arrow_head and osu_leaf.

Shapelets are a fitted artefact of the data, not of this file: config.data.shapelets = {"per_class",
"window"} asks the dataset to discover them on its `train` split when it is loaded (fintrans.data.shapelets:
PIP candidates scored by information gain, `per_class` kept per class; about 10 s on one CPU core the first
time), cache them beside the prepared dataset (fintrans.data.fitted; later loads read the cache), and expose
them as dataset.info['shapelets']. The four model fields (shapelets, shapelet_channels, shapelet_starts,
shapelet_weights) are left None here and filled from that info by the trainer (the model's DATA_FIELDS), so
parsing this config never touches the data; the saved config of a run holds the values it trained with.

Two windows, as in the authors' code: discovery scores each candidate by its best match within `window`
steps of its own position (their `--window_size`, per dataset in their README: 100 for BasicMotions, 10 for
JapaneseVowels; main.py's default 100 elsewhere), and the model's shapelet filter searches +-`model_window`
steps (their ShapeBlock's fixed 50). Shapelets per class: their README's `--num_shapelet` (10 and 1; main.py's
3 elsewhere). Model sizes as their main.py (shapelet branch 128 wide, generic 48, 4 heads, FFN 256, dropout
0.4); the optimiser is ours (AdamW 1e-3, warmup and cosine decay; theirs is RAdam at 0.05 for 200 epochs of
batch 8, clipped at norm 4).

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
Arguments: runlocal, dataset (basic_motions | japanese_vowels | arrow_head | osu_leaf), per_class (shapelets
per class; default the authors', 2 with runlocal), window (discovery window in steps; default the authors'),
model_window (the model's search window; default 50), branches (both | generic | shapelet: which branches the
model keeps; default both, the authors').
"""
import ml_collections

from experiments.configs.common import parse_arg
from experiments.configs.t2_uea import uea_shape
from fintrans.train.config import default_config, model_fields

# The authors' README: (discovery --window_size, --num_shapelet) per UEA set; main.py's defaults (100, 3) otherwise.
AUTHORS_DISCOVERY = {"basic_motions": (100, 10), "japanese_vowels": (10, 1)}
MAIN_PY_DISCOVERY = (100, 3)
MODEL_WINDOW = 50  # the authors' ShapeBlock(window_size=50), never overridden by their Shapeformer
BRANCHES = {"both": {}, "generic": {"use_class_specific": False}, "shapelet": {"use_generic": False}}
# ShapeFormer config fields filled from dataset.info["shapelets"] (fitted on the train split at load time)
SHAPELET_FIELDS = ("shapelets", "shapelet_channels", "shapelet_starts", "shapelet_weights")


def _shapeformer(**fields) -> ml_collections.ConfigDict:
    """config.model with the shapelet fields left to the data (None placeholders of type tuple)."""
    model = model_fields("shapeformer", **fields)
    for name in SHAPELET_FIELDS:
        model[name] = ml_collections.config_dict.placeholder(tuple)
    return model


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, dataset="basic_motions", per_class=0, window=-1, model_window=MODEL_WINDOW,
                    branches="both")
    max_len, channels, classes = uea_shape(arg.dataset)
    if arg.branches not in BRANCHES:
        raise ValueError(f"branches={arg.branches!r} is not valid; choose from {sorted(BRANCHES)}")
    authors_window, authors_per_class = AUTHORS_DISCOVERY.get(arg.dataset, MAIN_PY_DISCOVERY)
    per_class = arg.per_class or (2 if arg.runlocal else authors_per_class)
    window = arg.window if arg.window >= 0 else authors_window
    flags = dict(window=arg.model_window, **BRANCHES[arg.branches])
    c = default_config()
    c.task = "classification"
    c.data.name = arg.dataset
    c.data.shapelets = ml_collections.ConfigDict({"per_class": per_class, "window": window})
    c.model = _shapeformer(max_len=max_len, num_channels=channels, num_classes=classes, shape_embed_dim=128,
                           generic_embed_dim=48, num_heads=4, mlp_dim=256, dropout_rate=0.4, **flags)
    c.batch_size = 16
    c.eval_batch_size = 64
    c.total_steps = 2000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.log_every = 50
    c.eval_every = 250
    c.checkpoint_every = 1000
    if arg.runlocal:
        c.model = _shapeformer(max_len=max_len, num_channels=channels, num_classes=classes, shape_embed_dim=32,
                               generic_embed_dim=32, num_heads=4, mlp_dim=64, dropout_rate=0.1, **flags)
        c.total_steps = 300
        c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 100
        c.checkpoint_every = 300
    return c

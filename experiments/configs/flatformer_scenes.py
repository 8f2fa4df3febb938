r"""FlatFormer (docs/papers.md) segmenting the points of synthetic 3D scenes
(fintrans.data synthetic_scenes: ground, boxes, cylinders, spheres and walls; 10k-30k points per
scene on a 128x128 bird's-eye grid of 0.25 m pillars), per-point accuracy and mean IoU.

Launch (CPU, a few minutes; scenes subsampled to 2,048 points each, a smaller model):
  python -m experiments.main --config=experiments/configs/flatformer_scenes.py:runlocal --workdir=/tmp/ff
Full run (every point, max_points=30000; the paper's Waymo backbone: window 13x13, groups of 144,
128 channels, 8 heads, 2 blocks of 4 orderings; an accelerator):
  python -m experiments.main --config=experiments/configs/flatformer_scenes.py --workdir=/tmp/ff_full
`max_points=N` in the argument (e.g. `:runlocal,max_points=512`, as the config smoke test runs it)
pads or subsamples every scene to N points instead.
"""
from experiments.configs.common import parse_arg
from fintrans.data.builders import synthetic_scenes
from fintrans.train.config import default_config, model_fields


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, max_points=0)
    c = default_config()
    c.task = "segmentation"
    c.data.name = "synthetic_scenes"
    c.data.max_points = synthetic_scenes.MAX_POINTS
    data_shape = dict(in_features=len(synthetic_scenes.PER_POINT_FEATURES), num_classes=len(synthetic_scenes.CLASSES),
                      grid_shape=synthetic_scenes.GRID_SHAPE)
    c.model = model_fields("flatformer", **data_shape, window_shape=(13, 13), group_size=144, embed_dim=128,
                           num_heads=8, num_blocks=2, mlp_dim=256)
    c.batch_size = 8
    c.eval_batch_size = 8
    c.total_steps = 5000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 200
    c.optimizer.weight_decay = 0.01
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    if arg.runlocal:
        # 2,048 points per scene (a fixed random subset; the pillar features still describe the whole
        # scene) keep a CPU step near a second.
        c.data.max_points = 2048
        c.model = model_fields("flatformer", **data_shape, window_shape=(13, 13), group_size=64, embed_dim=32,
                               num_heads=2, num_blocks=1, mlp_dim=64)
        c.batch_size = 4
        c.eval_batch_size = 8
        c.total_steps = 300
        c.optimizer.learning_rate = 2e-3
        c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 150
        c.checkpoint_every = 150
    if arg.max_points:
        c.data.max_points = arg.max_points
    return c

r"""ViT (Dosovitskiy et al.) classifying sklearn's 8x8 handwritten digits, 2x2 patches.

Launch (CPU, under a minute):
  python -m experiments.main --config=experiments/configs/vit_digits.py:runlocal --workdir=/tmp/vit_digits
Full run:
  python -m experiments.main --config=experiments/configs/vit_digits.py --workdir=/tmp/vit_digits_full
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = default_config()
    c.task = "classification"
    c.data.name = "digits"
    c.model = model_fields("vit", image_size=8, patch_size=2, num_channels=1, num_classes=10, embed_dim=128,
                           num_layers=6, num_heads=4, mlp_dim=512, dropout_rate=0.1)
    c.batch_size = 64
    c.eval_batch_size = 128
    c.total_steps = 5000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 250
    c.optimizer.weight_decay = 0.05
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    c.sample.num_examples = 8
    if arg.runlocal:
        c.model = model_fields("vit", image_size=8, patch_size=2, num_channels=1, num_classes=10, embed_dim=64,
                               num_layers=2, num_heads=4, mlp_dim=128)
        c.total_steps = 400
        c.optimizer.learning_rate = 2e-3
        c.optimizer.warmup_steps = 40
        c.log_every = 25
        c.eval_every = 200
        c.checkpoint_every = 200
    return c

r"""LMUFormer (Liu et al., ICLR'24) on sequential digits: sklearn's 8x8 digits read pixel by pixel
(64 steps of 1 value; `sequence=rows` reads 8 steps of 8), classification from the mean of the features.

Launch (CPU, about a minute):
  python -m experiments.main --config=experiments/configs/lmuformer_digits.py:runlocal --workdir=/tmp/lmuformer_digits
Full run (add `spiking` for the spiking variant, `sequence=rows` for row-by-row reading):
  python -m experiments.main --config=experiments/configs/lmuformer_digits.py --workdir=/tmp/lmuformer_digits_full
  python -m experiments.main --config=experiments/configs/lmuformer_digits.py:spiking --workdir=/tmp/slmuformer_digits
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, spiking=False, sequence="pixels")
    c = default_config()
    c.task = "classification"
    c.data.name = "digits"
    c.model = model_fields("lmuformer", sequence=arg.sequence, image_size=8, num_channels=1, num_classes=10,
                           embed_dim=64, num_layers=2, num_embed_convs=4, memory_size=0, theta=0.0, mlp_ratio=4,
                           spiking=arg.spiking, dropout_rate=0.1)
    c.batch_size = 64
    c.eval_batch_size = 128
    c.total_steps = 3000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 150
    c.optimizer.weight_decay = 0.01
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    c.sample.num_examples = 8
    if arg.runlocal:
        c.model = model_fields("lmuformer", sequence=arg.sequence, image_size=8, num_channels=1, num_classes=10,
                               embed_dim=32, num_layers=1, num_embed_convs=2, memory_size=16, mlp_ratio=2,
                               spiking=arg.spiking)
        c.total_steps = 300
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 150
        c.checkpoint_every = 150
    return c

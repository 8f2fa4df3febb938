r"""Decoder-only character LM on Python standard-library source (the default experiment).

Launch (CPU, about a minute):
  python -m experiments.main --config=experiments/configs/lm_chars.py:runlocal --workdir=/tmp/lm_chars
Full run (TPU pod slice or GPU hosts; WORKDIR on a filesystem every host mounts; see README):
  python -m experiments.main --config=experiments/configs/lm_chars.py --workdir=/mnt/shared/lm_chars \
      --config.mesh.fsdp=4 --config.multihost=True
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = default_config()
    c.task = "lm"
    c.data.name = "chars"
    c.data.seq_len = 256
    c.model = model_fields("decoder_lm", vocab_size=128, max_len=256, embed_dim=512, num_layers=8, num_heads=8,
                           num_kv_heads=4, mlp_dim=1408, activation="silu", glu=True, dropout_rate=0.1)
    c.batch_size = 64
    c.eval_batch_size = 64
    c.total_steps = 20_000
    c.compute_dtype = "bfloat16"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.1
    c.log_every = 100
    c.eval_every = 1000
    c.eval_batches = 50
    c.checkpoint_every = 1000
    c.sample.prompt_len = 64
    c.sample.num_tokens = 192
    if arg.runlocal:
        c.data.seq_len = 64
        c.model = model_fields("decoder_lm", vocab_size=128, max_len=256, embed_dim=96, num_layers=2, num_heads=4,
                               num_kv_heads=2, mlp_dim=256, activation="silu", glu=True)
        c.batch_size = 32
        c.eval_batch_size = 64
        c.total_steps = 600
        c.compute_dtype = ""
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = 50
        c.log_every = 25
        c.eval_every = 300
        c.eval_batches = 8
        c.checkpoint_every = 300
        c.sample.prompt_len = 48
        c.sample.num_tokens = 160
    return c

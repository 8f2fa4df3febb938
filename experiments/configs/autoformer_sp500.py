r"""Autoformer (docs/papers.md) on real S&P 500 daily prices (arch's sp500): the same
normalised windows and chronological 70/10/20 split as experiments/configs/ltsf_sp500.py, so its
eval MSE compares directly with DLinear, NLinear and the transformer baseline there.

The paper's setting: lookback 96, decoder start window (label_len) 48, d_model 512, 8 heads,
2 encoder layers, 1 decoder layer, d_ff 2048, moving average 25, factor 3, dropout 0.05, lr 1e-4.

Launch (CPU, about a minute):
  python -m experiments.main --config=experiments/configs/autoformer_sp500.py:runlocal --workdir=/tmp/autoformer
Full run (the paper's sizes; horizon=48 or 96 for the longer horizons):
  python -m experiments.main --config=experiments/configs/autoformer_sp500.py:horizon=24 --workdir=/tmp/autoformer_full
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields

CHANNELS = 6  # Open, High, Low, Close, Adj Close, log Volume


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, input_len=96, label_len=48, horizon=24)
    c = default_config()
    c.task = "forecasting"
    c.data.name = "sp500"
    c.data.input_len = arg.input_len
    c.data.horizon = arg.horizon
    c.model = model_fields("autoformer", input_len=arg.input_len, label_len=arg.label_len, horizon=arg.horizon,
                           num_channels=CHANNELS, embed_dim=512, num_heads=8, encoder_layers=2, decoder_layers=1,
                           mlp_dim=2048, moving_avg=25, factor=3.0, activation="gelu", dropout_rate=0.05)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.total_steps = 3000
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 200
    c.optimizer.weight_decay = 0.0
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    if arg.runlocal:
        c.model.embed_dim, c.model.num_heads, c.model.mlp_dim = 32, 4, 64
        c.total_steps = 300
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 150
        c.checkpoint_every = 150
    return c

r"""iTransformer (docs/papers.md) on real S&P 500 daily prices (arch's sp500): the same
normalised windows and chronological 70/10/20 split as experiments/configs/ltsf_sp500.py, so its
eval MSE compares directly with DLinear, NLinear and the transformer baseline there. The six price
and volume series are the variate tokens.

The authors' setting for small multivariate sets: lookback 96, d_model 128 (512 for large ones),
8 heads, 2 layers, d_ff 128, dropout 0.1, per-series normalisation on, lr 1e-4.

Launch (CPU, about a minute):
  python -m experiments.main --config=experiments/configs/itransformer_sp500.py:runlocal --workdir=/tmp/itransformer
Full run (horizon=48 or 96 for the longer horizons):
  python -m experiments.main --config=experiments/configs/itransformer_sp500.py:horizon=24 --workdir=/tmp/itransformer_full
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields

CHANNELS = 6  # Open, High, Low, Close, Adj Close, log Volume


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, input_len=96, horizon=24)
    c = default_config()
    c.task = "forecasting"
    c.data.name = "sp500"
    c.data.input_len = arg.input_len
    c.data.horizon = arg.horizon
    c.model = model_fields("itransformer", input_len=arg.input_len, horizon=arg.horizon, num_channels=CHANNELS,
                           embed_dim=128, num_heads=8, num_layers=2, mlp_dim=128, activation="gelu",
                           dropout_rate=0.1, use_norm=True)
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

r"""LTSF-Linear's comparison (docs/papers.md) on real S&P 500 daily prices (arch's sp500):
DLinear, NLinear and a vanilla transformer encoder forecaster, on the same normalised windows
with the paper's chronological 70/10/20 split.

Launch one model (CPU, under a minute each):
  python -m experiments.main --config=experiments/configs/ltsf_sp500.py:model=dlinear,runlocal --workdir=/tmp/dlinear
  python -m experiments.main --config=experiments/configs/ltsf_sp500.py:model=nlinear,runlocal --workdir=/tmp/nlinear
  python -m experiments.main --config=experiments/configs/ltsf_sp500.py:model=transformer_forecaster,runlocal \
      --workdir=/tmp/transformer_forecaster
Full run (the paper's lookback 336 for the linear models):
  python -m experiments.main --config=experiments/configs/ltsf_sp500.py:model=dlinear --workdir=/tmp/dlinear_full
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields

MODELS = ("dlinear", "nlinear", "transformer_forecaster")
CHANNELS = 6  # Open, High, Low, Close, Adj Close, log Volume


def get_config(arg=None):
    arg = parse_arg(arg, model="dlinear", runlocal=False, input_len=0, horizon=24)
    if arg.model not in MODELS:
        raise ValueError(f"model={arg.model!r}; choose from {MODELS}")
    linear = arg.model != "transformer_forecaster"
    input_len = arg.input_len or (336 if linear else 96)
    if arg.runlocal and not arg.input_len:
        input_len = 96
    c = default_config()
    c.task = "forecasting"
    c.data.name = "sp500"
    c.data.input_len = input_len
    c.data.horizon = arg.horizon
    shape = dict(input_len=input_len, horizon=arg.horizon, num_channels=CHANNELS)
    if arg.model == "transformer_forecaster":
        c.model = model_fields(arg.model, **shape, embed_dim=128, num_layers=2, num_heads=8, mlp_dim=256,
                               dropout_rate=0.05)
    else:
        c.model = model_fields(arg.model, **shape, individual=False)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.total_steps = 3000
    c.optimizer.learning_rate = 5e-3 if linear else 1e-4
    c.optimizer.warmup_steps = 0 if linear else 200
    c.optimizer.weight_decay = 0.0
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    if arg.runlocal:
        c.total_steps = 300
        if not linear:
            c.model.embed_dim, c.model.num_heads, c.model.mlp_dim = 32, 4, 64
            c.optimizer.learning_rate = 1e-3
            c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 150
        c.checkpoint_every = 150
    return c

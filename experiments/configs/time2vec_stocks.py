r"""Transformer encoder with multi-feature Time2Vec (docs/papers.md) forecasting daily stock closes
(the `stocks` dataset: AAPL, GOOG, IBM, MSFT, S&P 500, NASDAQ, 2004-2013), with the paper's correlation
feature selection: the target (AAPL by default) plus the channels whose train-split price correlation
with it reaches min_corr_pct percent. Chronological 70/10/20 split, train-only standardisation.

Launch (CPU, about a minute):
  JAX_PLATFORMS=cpu python -m experiments.main --config=experiments/configs/time2vec_stocks.py:runlocal \
      --workdir=/tmp/t2v
Full run:
  python -m experiments.main --config=experiments/configs/time2vec_stocks.py --workdir=/tmp/t2v_full
Other horizons, targets, selections, or Kazemi's Time2Vec of the step index:
  python -m experiments.main --config=experiments/configs/time2vec_stocks.py:horizon=96,target=3,min_corr_pct=0 \
      --workdir=/tmp/t2v_msft
Arguments: runlocal, input_len (default 96; runlocal 48), horizon (24), target (channel index, 0 = AAPL), min_corr_pct (60),
time2vec_input ('value' | 'time'), position_encoding ('time2vec' | 'sinusoidal' | 'learned': the paper's
baselines in place of Time2Vec),
subtract_last (forecast changes from the last day, NLinear's normalisation; not in the paper).
"""
from experiments.configs.common import parse_arg
from fintrans.data.builders import stocks
from fintrans.train.config import default_config, model_fields


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, input_len=0, horizon=24, target=0, min_corr_pct=60,
                    time2vec_input="value", position_encoding="time2vec", subtract_last=False)
    arg.input_len = arg.input_len or (48 if arg.runlocal else 96)
    selected = stocks.selection(arg.target, arg.min_corr_pct)  # fitted on the train split, as the dataset does
    c = default_config()
    c.task = "forecasting"
    c.data.name = "stocks"
    c.data.input_len = arg.input_len
    c.data.horizon = arg.horizon
    c.data.target = arg.target
    c.data.min_corr_pct = arg.min_corr_pct
    c.model = model_fields("time2vec_encoder", input_len=arg.input_len, horizon=arg.horizon,
                           num_channels=len(selected.indices), time2vec_input=arg.time2vec_input, time2vec_dim=8,
                           position_encoding=arg.position_encoding,
                           subtract_last=arg.subtract_last,
                           num_layers=2, num_heads=4, head_dim=16, mlp_dim=128, head="pool", head_hidden=64,
                           dropout_rate=0.1)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.total_steps = 3000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.0
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    if arg.runlocal:
        c.total_steps = 400
        c.model.num_layers = 1
        c.model.mlp_dim = 64
        c.optimizer.warmup_steps = 40
        c.log_every = 25
        c.eval_every = 200
        c.checkpoint_every = 200
    return c

r"""The forecasting comparison (experiments/forecasting_table.py, experiments/results/forecasting.md): every
forecaster of the paper list on the same data, windows and training budget, so their errors compare.

Models: dlinear, nlinear (LTSF-Linear, docs/papers.md), transformer_forecaster (the vanilla
encoder baseline of that paper), autoformer (row 26), itransformer (row 31), time2vec_encoder (row 27, as
its paper: price levels in, no normalisation) and time2vec_last (the same with NLinear's last-value
subtraction; not in the paper). Data: `stocks` (six daily closes, all kept as channels and targets),
`seattle_weather` (four daily weather series) or `sp500` (one index's OHLC and volume); chronological
70/10/20 splits, train-only standardisation.

Shared protocol, LTSF-Linear's: lookback 96, MSE loss, Adam, evaluation on validation every
eval_every steps and early stopping's model selection (best_metric='loss': the table scores the
parameters of the best validation evaluation on the test split; experiments/forecasting_table.py
also stops a run once `PATIENCE` evaluations bring no improvement). The transformers are narrower than
their papers' (d_model 32, iTransformer 128, instead of 512) to train on a CPU; their own configs
(autoformer_sp500.py, itransformer_sp500.py, time2vec_stocks.py) hold the paper sizes.

Arguments: model, data, horizon, input_len, runlocal, lr (0: the model's `LEARNING_RATES` entry; the
table sweeps `LR_SWEEP`), norm: '' (the authors' setting), 'none' or 'window'. 'window' is per-window
normalisation (RevIN without affine): the forecasting task's window_norm='mean_std' for every model
except iTransformer, whose own use_norm is the same normalisation (its authors' default; 'none' turns
it off). NLinear always subtracts its window's last value (its own normalisation); 'window' adds
the task's on top. `NORMS` says what each model's rows do.

Launch one cell of the table (CPU, under a minute):
  python -m experiments.main --config=experiments/configs/forecasting.py:model=autoformer,data=stocks,horizon=96 \
      --workdir=/tmp/forecasting_autoformer
A quick run:
  python -m experiments.main --config=experiments/configs/forecasting.py:model=dlinear,data=seattle_weather,runlocal \
      --workdir=/tmp/forecasting_dlinear
"""
from experiments.configs.common import parse_arg
from fintrans.data.builders import seattle_weather, sp500, stocks
from fintrans.train.config import default_config, model_fields

CHANNELS = {"stocks": len(stocks.CHANNELS), "seattle_weather": len(seattle_weather.CHANNELS),
            "sp500": len(sp500.CHANNELS)}
MODELS = ("dlinear", "nlinear", "transformer_forecaster", "autoformer", "itransformer", "time2vec_encoder",
          "time2vec_last")
LEARNING_RATES = {"dlinear": 5e-3, "nlinear": 5e-3, "transformer_forecaster": 5e-4, "autoformer": 5e-4,
                  "itransformer": 5e-4, "time2vec_encoder": 1e-3, "time2vec_last": 1e-3}
# The table's learning-rate sweep (seed 0, chosen by validation loss): three values a factor ~3 apart
# around each LEARNING_RATES entry.
LR_SWEEP = {m: (lr / 3, lr, lr * 3) for m, lr in LEARNING_RATES.items()}
NORM_SETTINGS = ("none", "window")
AUTHORS_NORM = {"itransformer": "window"}  # the others' papers feed the windows as they are
# What the model sees of each window under each setting (the table's 'per window' column).
NORMS = {m: {"none": "-", "window": "own mean and std (task)"} for m in MODELS}
NORMS["nlinear"] = {"none": "last value subtracted (own)", "window": "own mean and std (task), then last value (own)"}
NORMS["itransformer"] = {"none": "- (use_norm off)", "window": "own mean and std (own use_norm)"}
NORMS["time2vec_last"] = {"none": "last value subtracted (own)", "window": "own mean and std (task), then last value (own)"}
PATIENCE = 4  # evaluations without a better validation loss before the table stops a run
MAX_STEPS = 1500  # the most a table run trains (its learning-rate schedule's length)


def model_config(model: str, *, input_len: int, horizon: int, num_channels: int, norm: str = "none"):
    shape = dict(input_len=input_len, horizon=horizon, num_channels=num_channels)
    if model in ("dlinear", "nlinear"):
        return model_fields(model, **shape, individual=False)
    if model == "transformer_forecaster":
        return model_fields(model, **shape, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64, dropout_rate=0.05)
    if model == "autoformer":
        return model_fields(model, **shape, label_len=input_len // 2, embed_dim=32, num_heads=4, encoder_layers=2,
                            decoder_layers=1, mlp_dim=64, moving_avg=25, factor=3.0, activation="gelu",
                            dropout_rate=0.05)
    if model == "itransformer":
        return model_fields(model, **shape, embed_dim=128, num_heads=8, num_layers=2, mlp_dim=128, activation="gelu",
                            dropout_rate=0.1, use_norm=norm == "window")
    return model_fields("time2vec_encoder", **shape, time2vec_input="value", time2vec_dim=8,
                        subtract_last=model == "time2vec_last", num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                        head="pool", head_hidden=64, dropout_rate=0.1)


def get_config(arg=None):
    arg = parse_arg(arg, model="dlinear", data="stocks", horizon=24, input_len=96, runlocal=False, norm="", lr=0.0)
    if arg.model not in MODELS:
        raise ValueError(f"model={arg.model!r}; choose from {MODELS}")
    if arg.data not in CHANNELS:
        raise ValueError(f"data={arg.data!r}; choose from {sorted(CHANNELS)}")
    norm = arg.norm or AUTHORS_NORM.get(arg.model, "none")
    if norm not in NORM_SETTINGS:
        raise ValueError(f"norm={arg.norm!r}; choose from {NORM_SETTINGS} (or leave it out for the authors' setting)")
    c = default_config()
    c.task = "forecasting"
    # iTransformer normalises by itself (use_norm); every other model gets the task's per-window option.
    c.task_options.window_norm = "mean_std" if norm == "window" and arg.model != "itransformer" else "none"
    c.data.name = arg.data
    c.data.input_len = arg.input_len
    c.data.horizon = arg.horizon
    if arg.data == "stocks":
        c.data.target, c.data.min_corr_pct = 0, 0  # every stock is kept and forecast
    c.model = model_config(arg.model, input_len=arg.input_len, horizon=arg.horizon, num_channels=CHANNELS[arg.data],
                           norm=norm)
    c.batch_size = 32
    c.eval_batch_size = 256
    c.total_steps = 400  # about 9 epochs of stocks' training windows (LTSF-Linear trains at most 10)
    c.optimizer.learning_rate = arg.lr or LEARNING_RATES[arg.model]
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.0
    c.log_every = 25
    c.eval_every = 25
    c.checkpoint_every = 200
    c.keep_checkpoints = 1
    c.best_metric, c.best_mode = "loss", "min"
    if arg.runlocal:
        c.total_steps = 100
        c.checkpoint_every = 50
    return c

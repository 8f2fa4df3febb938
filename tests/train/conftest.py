"""Tiny experiment configs for trainer tests: the real configs, shrunk to compile and run in seconds."""
from experiments.configs import lm_chars, ltsf_sp500


def tiny_lm(**overrides):
    c = lm_chars.get_config("runlocal")
    c.data.seq_len = 32
    c.model.embed_dim, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
    c.model.dropout_rate = 0.1  # exercises the per-step dropout rng in the resume test
    c.batch_size, c.eval_batch_size = 8, 16
    c.total_steps, c.log_every, c.eval_every, c.eval_batches = 12, 1, 6, 2
    c.checkpoint_every = 4
    c.progress_bar = False
    c.sample.prompt_len, c.sample.num_tokens = 8, 8
    for key, value in overrides.items():
        c[key] = value
    return c


def tiny_dlinear(**overrides):
    c = ltsf_sp500.get_config("model=dlinear,runlocal,input_len=48,horizon=8")
    c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 10, 1, 0, 2
    c.progress_bar = False
    for key, value in overrides.items():
        c[key] = value
    return c



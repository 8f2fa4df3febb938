"""Tiny experiment configs for trainer tests: the real configs, shrunk to compile and run in seconds."""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import pytest

from experiments.configs import lm_chars, ltsf_sp500, vit_digits
from fintrans import axes, models
from fintrans.layers import Dense
from fintrans.layers.norms import BatchNorm
from fintrans.models.config import ModelConfig
from fintrans.train.config import model_fields


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


# --- a tiny model with every trainer hook: BatchNorm statistics (model_state), a sown auxiliary
# loss, and a num_classes taken from the data (None in the config) ---------------------------------
@dataclasses.dataclass(frozen=True)
class HookedMLPConfig(ModelConfig):
    DATA_FIELDS = {"num_classes": "num_classes"}
    num_classes: int | None = None  # from the data
    hidden: int = 16
    aux_weight: float = 0.01


class HookedMLP(nn.Module):
    """inputs [B, ...] -> Dense -> BatchNorm -> relu (sowing aux_weight·mean(h²)) -> Dense head."""
    config: HookedMLPConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        cfg = self.config
        x = batch["inputs"].reshape(batch["inputs"].shape[0], -1).astype(jnp.float32)
        h = Dense(cfg.hidden, (axes.EMBED,), (axes.MLP,), name="body")(x)
        h = nn.relu(BatchNorm(momentum=0.9, name="norm")(h, train=train))
        self.sow("aux_loss", "activation_l2", cfg.aux_weight * jnp.mean(jnp.square(h)))
        return Dense(cfg.num_classes, (axes.MLP,), (axes.CLASSES,), name="head")(h)


@pytest.fixture(scope="module", autouse=True)
def hooked_mlp_registered():
    """Registered only while a module here runs: the model tests check that every registered model has
    a case."""
    models.register("test_hooked_mlp", HookedMLPConfig, HookedMLP)
    yield
    models.MODELS.unregister("test_hooked_mlp")


def tiny_hooked(**overrides):
    """HookedMLP on sklearn digits, a few steps; trainer fields in `overrides`."""
    c = vit_digits.get_config("runlocal")
    c.model = model_fields("test_hooked_mlp")
    c.batch_size, c.eval_batch_size = 16, 64
    c.total_steps, c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 8, 1, 4, 2, 4
    c.optimizer.warmup_steps = 2
    c.progress_bar = False
    c.sample.num_examples = 2
    for key, value in overrides.items():
        c[key] = value
    return c

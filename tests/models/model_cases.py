"""One tiny test case per registered model, and compiled functions shared by every test module.

A case knows its model's config (tiny, so CPU compiles stay short), how to make a batch, the
expected output shape, inputs that must be rejected and config values that must be rejected.
`built(name)` initialises the model once per process and jits its forward pass, wrapped in
chex.assert_max_traces(n=1): every test that uses it must keep to the case's batch shape.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import fintrans.models as models

BATCH = 3
# Tiny models compile 2-3x faster on CPU without LLVM's optimisation passes; results are the same.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def jit(fn, **kwargs):
    """jax.jit with the fast-compile options the model tests use."""
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS, **kwargs)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: dict
    make_batch: Callable[[np.random.Generator], dict]  # the case's batch shape, random contents
    output_shape: tuple
    # (batch with a wrong shape, substrings its error message must contain besides the model name)
    bad_inputs: tuple[tuple[dict, tuple[str, ...]], ...]
    bad_values: tuple[tuple[str, Any], ...]  # (field, value) pairs that validation must reject
    uses_dropout: bool = True


def _tokens(rng, shape, vocab):
    return rng.integers(0, vocab, shape).astype(np.int32)


def _bert_batch(rng, batch=BATCH, length=10, vocab=50):
    lengths = np.concatenate([[length], rng.integers(2, length, batch - 1)])  # one full row, others padded
    mask = np.arange(length)[None] < lengths[:, None]
    return {"inputs": _tokens(rng, (batch, length), vocab), "mask": mask,
            "token_type_ids": (np.arange(length)[None] >= lengths[:, None] // 2).astype(np.int32)}


def _series(rng, length, channels, batch=BATCH):
    return {"inputs": rng.normal(size=(batch, length, channels)).astype(np.float32)}


def _masked_series(rng, length, channels, batch=BATCH):
    """Zero-padded series (one full row, the others shorter) with their mask, as the UEA datasets give."""
    lengths = np.concatenate([[length], rng.integers(2, length, batch - 1)])
    mask = np.arange(length)[None] < lengths[:, None]
    x = rng.normal(size=(batch, length, channels)).astype(np.float32) * mask[..., None]
    return {"inputs": x, "mask": mask}


def _point_clouds(rng, counts=(40, 0, 23), points=40, grid=16, features=6):
    """Clouds on a grid x grid bird's-eye grid, no two points of a sample on one voxel (so the
    window order has no ties), rows padded to `points` with random values under mask False."""
    cells = np.stack([rng.choice(grid * grid, points, replace=False) for _ in counts])
    return {"points": rng.normal(size=(len(counts), points, features)).astype(np.float32),
            "coords": np.stack([cells // grid, cells % grid], axis=-1).astype(np.int32),
            "mask": np.arange(points)[None] < np.asarray(counts)[:, None]}


_CLOUD = {"points": np.zeros((BATCH, 40, 6), np.float32), "coords": np.zeros((BATCH, 40, 2), np.int32),
          "mask": np.ones((BATCH, 40), bool)}


CASES = {c.name: c for c in [
    Case("decoder_lm",
         dict(vocab_size=32, max_len=16, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
              dropout_rate=0.1),
         lambda rng: {"inputs": _tokens(rng, (BATCH, 12), 32)}, (BATCH, 12, 32),
         bad_inputs=(({"inputs": np.zeros((BATCH,), np.int32)}, ("[batch, length]", "(3,)")),
                     ({"inputs": np.zeros((BATCH, 17), np.int32)}, ("17", "max_len=16"))),
         bad_values=(("num_layers", -1), ("activation", "swish9"), ("norm", "batchnorm"), ("num_kv_heads", 3))),
    Case("bert_classifier",
         dict(vocab_size=50, max_len=16, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=48, num_classes=3),
         _bert_batch, (BATCH, 3),
         bad_inputs=(({"inputs": np.zeros((BATCH, 10, 2), np.int32), "mask": np.ones((BATCH, 10, 2), bool)},
                      ("[batch, length]", "[3, 10, 2]")),
                     ({"inputs": np.zeros((BATCH, 10), np.int32), "mask": np.ones((BATCH, 9), bool)},
                      ("mask", "(3, 10)", "(3, 9)")),
                     ({"inputs": np.zeros((BATCH, 10), np.int32), "mask": np.ones((BATCH, 10), bool),
                       "token_type_ids": np.zeros((BATCH, 8), np.int32)}, ("token_type_ids", "(3, 10)", "(3, 8)")),
                     ({"inputs": np.zeros((BATCH, 20), np.int32), "mask": np.ones((BATCH, 20), bool)},
                      ("20", "max_len=16"))),
         bad_values=(("embed_dim", -32), ("activation", "gelu_fast"), ("num_heads", 5), ("dropout_rate", 1.5))),
    Case("vit",
         dict(image_size=8, patch_size=4, num_channels=1, num_classes=10, embed_dim=32, num_layers=2, num_heads=4,
              mlp_dim=48, dropout_rate=0.1),
         lambda rng: {"inputs": rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32)}, (BATCH, 10),
         bad_inputs=(({"inputs": np.zeros((BATCH, 8, 8, 3), np.float32)}, ("8, 8, 1", "(3, 8, 8, 3)")),
                     ({"inputs": np.zeros((BATCH, 8, 8), np.float32)}, ("8, 8, 1", "(3, 8, 8)"))),
         bad_values=(("patch_size", 3), ("pooling", "max"), ("num_layers", 0), ("activation", "tanh"))),
    Case("dlinear",
         dict(input_len=30, horizon=6, num_channels=2, kernel_size=25),
         lambda rng: _series(rng, 30, 2), (BATCH, 6, 2),
         bad_inputs=(({"inputs": np.zeros((BATCH, 29, 2), np.float32)}, ("input_len=30", "(3, 29, 2)")),
                     ({"inputs": np.zeros((BATCH, 30, 3), np.float32)}, ("num_channels=2", "(3, 30, 3)")),
                     ({"inputs": np.zeros((BATCH, 30), np.float32)}, ("input_len=30", "(3, 30)"))),
         bad_values=(("kernel_size", 24), ("horizon", -6), ("individual", "yes")), uses_dropout=False),
    Case("nlinear",
         dict(input_len=30, horizon=6, num_channels=2, individual=True),
         lambda rng: _series(rng, 30, 2), (BATCH, 6, 2),
         bad_inputs=(({"inputs": np.zeros((BATCH, 30, 1), np.float32)}, ("num_channels=2", "(3, 30, 1)")),),
         bad_values=(("input_len", 0), ("num_channels", -1)), uses_dropout=False),
    Case("transformer_forecaster",
         dict(input_len=12, horizon=4, num_channels=2, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=48,
              dropout_rate=0.1),
         lambda rng: _series(rng, 12, 2), (BATCH, 4, 2),
         bad_inputs=(({"inputs": np.zeros((BATCH, 11, 2), np.float32)}, ("input_len=12", "(3, 11, 2)")),
                     ({"inputs": np.zeros((BATCH, 12, 2, 1), np.float32)}, ("num_channels=2", "(3, 12, 2, 1)"))),
         bad_values=(("head", "conv"), ("norm_position", "middle"), ("mlp_dim", -4), ("activation", "elu"))),
    Case("autoformer",
         dict(input_len=16, label_len=8, horizon=4, num_channels=2, embed_dim=16, num_heads=2, encoder_layers=1,
              decoder_layers=1, mlp_dim=32, moving_avg=5, factor=1.0, dropout_rate=0.1),
         lambda rng: _series(rng, 16, 2), (BATCH, 4, 2),
         bad_inputs=(({"inputs": np.zeros((BATCH, 15, 2), np.float32)}, ("input_len=16", "(3, 15, 2)")),
                     ({"inputs": np.zeros((BATCH, 16, 3), np.float32)}, ("num_channels=2", "(3, 16, 3)")),
                     ({"inputs": np.zeros((BATCH, 16, 2), np.float32), "time_features": np.zeros((BATCH, 20, 1))},
                      ("time_features", "num_time_features=0"))),
         bad_values=(("moving_avg", 4), ("label_len", 17), ("factor", 0.1), ("activation", "elu"),
                     ("num_heads", 3))),
    Case("itransformer",
         dict(input_len=12, horizon=4, num_channels=3, embed_dim=16, num_heads=2, num_layers=2, mlp_dim=32,
              dropout_rate=0.1),
         lambda rng: _series(rng, 12, 3), (BATCH, 4, 3),
         bad_inputs=(({"inputs": np.zeros((BATCH, 11, 3), np.float32)}, ("input_len=12", "(3, 11, 3)")),
                     ({"inputs": np.zeros((BATCH, 12, 2), np.float32)}, ("num_channels=3", "(3, 12, 2)"))),
         bad_values=(("use_norm", "yes"), ("num_heads", 5), ("activation", "swish"), ("horizon", 0))),
    Case("time2vec_encoder",
         dict(input_len=12, horizon=4, num_channels=2, time2vec_dim=3, num_heads=2, head_dim=8, num_layers=2,
              mlp_dim=32, head_hidden=16, dropout_rate=0.1),
         lambda rng: _series(rng, 12, 2), (BATCH, 4, 2),
         bad_inputs=(({"inputs": np.zeros((BATCH, 11, 2), np.float32)}, ("input_len=12", "(3, 11, 2)")),
                     ({"inputs": np.zeros((BATCH, 12, 3), np.float32)}, ("num_channels=2", "(3, 12, 3)"))),
         bad_values=(("time2vec_input", "index"), ("time2vec_dim", 0), ("embed_dim", -1), ("head", "last"))),
    Case("t2",
         dict(max_len=12, num_channels=3, num_classes=4, embed_dim=16, conv_kernel_size=3, num_layers=2,
              num_heads=2, mlp_dim=32, dropout_rate=0.1),
         lambda rng: _masked_series(rng, 12, 3), (BATCH, 4),
         bad_inputs=(({"inputs": np.zeros((BATCH, 12, 2), np.float32)}, ("num_channels=3", "(3, 12, 2)")),
                     ({"inputs": np.zeros((BATCH, 13, 3), np.float32)}, ("max_len=12", "(3, 13, 3)")),
                     ({"inputs": np.zeros((BATCH, 12, 3), np.float32), "mask": np.ones((BATCH, 11), bool)},
                      ("mask", "(3, 12)", "(3, 11)"))),
         bad_values=(("conv_kernel_size", 0), ("num_heads", 3), ("activation", "elu"), ("dropout_rate", 1.0))),
    Case("lmuformer",
         dict(sequence="pixels", image_size=4, num_channels=1, num_classes=5, embed_dim=16, num_layers=1,
              num_embed_convs=2, memory_size=8, mlp_ratio=2, dropout_rate=0.1),
         lambda rng: {"inputs": rng.uniform(0.05, 1.0, size=(BATCH, 4, 4, 1)).astype(np.float32)}, (BATCH, 5),
         bad_inputs=(({"inputs": np.zeros((BATCH, 4, 4, 2), np.float32)}, ("4, 4, 1", "(3, 4, 4, 2)")),
                     ({"inputs": np.zeros((BATCH, 16, 1), np.float32)}, ("images", "(3, 16, 1)"))),
         bad_values=(("sequence", "columns"), ("theta", -1.0), ("memory_size", -2), ("spiking", "yes"),
                     ("embed_dim", 0))),
    Case("sansformer",
         dict(seq_len=6, num_features=5, num_classes=3, num_summaries=4, embed_dim=16, hidden_dim=24, mlp_dim=32,
              num_layers=2, mode="gsp", dropout_rate=0.1),
         lambda rng: _series(rng, 6, 5), (BATCH, 6, 4),
         bad_inputs=(({"inputs": np.zeros((BATCH, 7, 5), np.float32)}, ("seq_len=6", "(3, 7, 5)")),
                     ({"inputs": np.zeros((BATCH, 6), np.float32)}, ("num_features=5", "(3, 6)"))),
         bad_values=(("mode", "mlm"), ("readout", "sum"), ("block", "gmlp2"), ("hidden_dim", 0), ("mlp_dim", 0),
                     ("seq_len", -1), ("dropout_rate", 1.0))),
    Case("flatformer",
         dict(in_features=6, num_classes=5, grid_shape=(16, 16), window_shape=(4, 4), group_size=16, embed_dim=32,
              num_heads=4, num_blocks=1, mlp_dim=64, dropout_rate=0.1),
         _point_clouds, (BATCH, 40, 5),
         bad_inputs=(({**_CLOUD, "points": np.zeros((BATCH, 40, 5), np.float32)}, ("in_features=6", "(3, 40, 5)")),
                     ({**_CLOUD, "coords": np.zeros((BATCH, 40, 3), np.int32)}, ("coords", "(3, 40, 2)", "(3, 40, 3)")),
                     ({**_CLOUD, "coords": np.zeros((BATCH, 40, 2), np.float32)}, ("coords", "integer")),
                     ({**_CLOUD, "mask": np.ones((BATCH, 39), bool)}, ("mask", "(3, 40)", "(3, 39)")),
                     ({"points": _CLOUD["points"], "mask": _CLOUD["mask"]}, ("no 'coords'",))),
         bad_values=(("window_shape", (4,)), ("grid_shape", (16, 0)), ("group_size", 0), ("num_heads", 5),
                     ("activation", "swish"), ("num_classes", -1))),
    Case("shapeformer",
         dict(max_len=12, num_channels=3, num_classes=4, shapelets=((0.1, 0.5, -0.2), (1.0, 0.0, 1.0, 0.0, 2.0)),
              shapelet_channels=(0, 2), shapelet_starts=(2, 6), shapelet_weights=(0.5, 0.3), window=3,
              shape_embed_dim=16, generic_embed_dim=16, num_heads=2, mlp_dim=32, dropout_rate=0.1),
         lambda rng: _masked_series(rng, 12, 3), (BATCH, 4),
         bad_inputs=(({"inputs": np.zeros((BATCH, 12, 2), np.float32)}, ("num_channels=3", "(3, 12, 2)")),
                     ({"inputs": np.zeros((BATCH, 13, 3), np.float32)}, ("max_len=12", "(3, 13, 3)"))),
         bad_values=(("shapelet_channels", (0, 3)), ("shapelet_starts", (2,)), ("shapelet_starts", (2, 8)),
                     ("shapelets", ((1.0,), (1.0, 2.0))), ("window", -1), ("max_ci", 0.0),
                     ("generic_norm", "groupnorm"))),
]}


@dataclasses.dataclass(frozen=True)
class Built:
    case: Case
    config: models.ModelConfig
    model: nn.Module
    init: Callable  # jitted model.init
    variables: dict  # as init returns them: parameters boxed with their logical axes
    params: dict  # unboxed {'params': ...}
    forward: Callable  # jitted (params, batch) -> outputs, at most one trace
    batch: dict


def config_of(name: str, **changes) -> models.ModelConfig:
    cfg_cls = models.get(name).config
    return cfg_cls.from_dict({**CASES[name].config, **changes})


@functools.lru_cache(maxsize=None)
def built(name: str) -> Built:
    case = CASES[name]
    cfg = config_of(name)
    model = models.get(name).module(cfg)
    batch = case.make_batch(np.random.default_rng(0))
    init = jit(model.init)
    variables = init(jax.random.PRNGKey(0), batch)

    def forward(params, batch):
        return model.apply(params, batch)

    forward.__name__ = f"forward_{name}"  # chex counts traces per (call stack, source, name)
    forward = jit(chex.assert_max_traces(forward, n=1))
    return Built(case, cfg, model, init, variables, nn.unbox(variables), forward, batch)


@functools.lru_cache(maxsize=None)
def train_fn(name: str) -> Callable:
    """jitted (params, batch, rng) -> outputs in train mode (dropout on)."""
    b = built(name)
    return jit(lambda params, batch, rng: b.model.apply(params, batch, train=True, rngs={"dropout": rng}))


@functools.lru_cache(maxsize=None)
def grad_fn(name: str) -> Callable:
    """jitted (params, batch, rng) -> (loss, grads) of a scalar loss in train mode (dropout on)."""
    b = built(name)

    def loss(params, batch, rng):
        out = b.model.apply(params, batch, train=True, rngs={"dropout": rng})
        return jnp.mean(jnp.square(out - 0.5))

    return jit(jax.value_and_grad(loss))

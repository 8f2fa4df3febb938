"""Logical axis names, and the default rules that map them onto mesh axes.

Parameters and activations use separate names so that the same tensor dimension (say the model
width) can be split one way when stored (FSDP) and another way while computed with.
Mesh axes: 'data' (pure data parallel), 'fsdp' (data parallel with sharded parameters and
optimiser state), 'tensor' (Megatron-style tensor parallel over heads / MLP / vocab).
"""
from __future__ import annotations

# Mesh axes, outermost first.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Parameter axes.
EMBED = "embed"  # model width
MLP = "mlp"  # FFN hidden width
HEADS = "heads"  # query heads
KV_HEADS = "kv_heads"  # key/value heads (grouped-query attention)
HEAD_DIM = "head_dim"
VOCAB = "vocab"
CLASSES = "classes"
LENGTH = "length"  # learned positional tables, the input side of time-mixing weights
HORIZON = "horizon"  # forecast steps: the output side of time-mixing weights
CHANNELS = "channels"  # input channels of patch embeddings and series
NORM = "norm"  # scales and biases of norms: never sharded
LAYERS = "layers"  # stacked layers (scan)

# Activation axes.
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_KV_HEADS = "activation_kv_heads"
ACT_HEAD_DIM = "activation_head_dim"
ACT_MLP = "activation_mlp"
ACT_VOCAB = "activation_vocab"

# flax resolves rules in order and never uses one mesh axis twice in a spec, so an axis that
# appears in several rules goes to the first logical axis that asks for it.
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    (ACT_BATCH, (DATA, FSDP)),
    (ACT_LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, TENSOR),
    (ACT_KV_HEADS, TENSOR),
    (ACT_HEAD_DIM, None),
    (ACT_MLP, TENSOR),
    (ACT_VOCAB, TENSOR),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (KV_HEADS, TENSOR),
    (VOCAB, TENSOR),
    (HEAD_DIM, None),
    (CLASSES, None),
    (LENGTH, None),
    (HORIZON, None),
    (CHANNELS, None),
    (NORM, None),
    (LAYERS, None),
)


def rules(overrides=None) -> tuple[tuple[str, object], ...]:
    """Default rules with `overrides` ({logical: mesh axis or None}) put first."""
    if not overrides:
        return DEFAULT_RULES
    known = {name for name, _ in DEFAULT_RULES}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown logical axis {unknown} in sharding rules; known: {sorted(known)}")
    for name, target in overrides.items():
        for axis in (target if isinstance(target, (tuple, list)) else (target,)):
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(f"rule {name!r} -> {target!r}: mesh axis {axis!r} is not one of {MESH_AXES}")
    head = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items())
    return head + tuple((k, v) for k, v in DEFAULT_RULES if k not in overrides)

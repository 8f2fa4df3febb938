"""Dropout whose random bits are generated per shard, so a sharded train step never builds a mask of
the global activation's size on every device.

Why: threefry bits (with `jax_threefry_partitionable`, jax's default) are a counter hash that XLA's
partitioner splits like any elementwise op, so each device computes only its own part. The 'rbg' and
'unsafe_rbg' keys (much faster to compile on TPU) draw their bits with one RngBitGenerator op, which
the partitioner cannot split: every device generated the whole global mask and sliced its part out
(lm_chars on v5e:16x16: 2.7 GiB of temporaries per chip instead of 0.02). For such keys `Dropout`
draws each shard's bits locally from fold_in(key, shard index) inside a shard_map.

Numerics: threefry masks, and every mask on an unsplit input (one device), are exactly flax's
nn.Dropout's. With rbg keys on a mesh that splits the input the masks depend on the mesh layout
(the same mesh gives the same masks, so resume stays bitwise exact).

`Dropout` is a drop-in nn.Dropout (same auto-name, so the same rng stream) with `axes`, the logical
axes of its input; `per_shard_dropout()` routes plain nn.Dropout layers through the same code, taking
their input's first dimension as the batch (the trainer's train step runs under it).
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, PartitionSpec as P

from fintrans import axes as logical

# What a plain nn.Dropout's input is assumed to be sharded as: [batch, ...].
BATCH_LEADING = (logical.ACT_BATCH,)


class Dropout(nn.Dropout):
    """nn.Dropout with the input's logical axes (e.g. (ACT_BATCH, ACT_LENGTH, ACT_MLP)); dimensions
    beyond `axes` are not split. See the module docstring for how the bits are drawn."""
    axes: Sequence[Optional[str]] = BATCH_LEADING

    @nn.compact
    def __call__(self, inputs, deterministic: Optional[bool] = None, rng: Optional[jax.Array] = None):
        return apply_dropout(self, inputs, deterministic, rng, self.axes)


def apply_dropout(module: nn.Dropout, inputs: jax.Array, deterministic: Optional[bool], rng: Optional[jax.Array],
                  input_axes: Sequence[Optional[str]]) -> jax.Array:
    """nn.Dropout.__call__ of `module` with the mask from `dropout_mask`."""
    deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
    if module.rate == 0.0 or deterministic:
        return inputs
    if module.rate == 1.0:
        return jnp.zeros_like(inputs)
    keep_prob = 1.0 - module.rate
    if rng is None:
        rng = module.make_rng(module.rng_collection)
    shape = list(inputs.shape)
    for dim in module.broadcast_dims:
        shape[dim] = 1
    mask = jnp.broadcast_to(dropout_mask(rng, keep_prob, tuple(shape), input_axes), inputs.shape)
    return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def dropout_mask(key: jax.Array, keep_prob: float, shape: tuple[int, ...],
                 input_axes: Sequence[Optional[str]]) -> jax.Array:
    """bernoulli(key, keep_prob, shape), drawn per shard of `input_axes` (under the current mesh and
    logical-axis rules) when the key's bits cannot be partitioned by XLA."""
    spec = _local_spec(key, shape, input_axes)
    if spec is None:
        return jax.random.bernoulli(key, keep_prob, shape)
    mesh = jax.sharding.get_abstract_mesh()
    used = [name for entry in spec if entry is not None for name in (entry if isinstance(entry, tuple) else (entry,))]
    local_shape = tuple(size // _count(entry, mesh) for size, entry in zip(shape, spec))

    def local(key):
        # Devices holding the same part of the input (replicas along the axes not in `spec`) must draw
        # the same bits, so the index counts only the axes that split the input.
        index = 0
        for name in used:
            index = index * mesh.shape[name] + lax.axis_index(name)
        return jax.random.bernoulli(jax.random.fold_in(key, index), keep_prob, local_shape)

    return jax.shard_map(local, mesh=mesh, in_specs=P(), out_specs=P(*spec), axis_names=frozenset(used))(key)


def _local_spec(key: jax.Array, shape: tuple[int, ...], input_axes: Sequence[Optional[str]]) -> Optional[tuple]:
    """The mesh axes splitting each dimension of the mask, or None where one global draw is right:
    partitionable bits, no mesh (or inside a shard_map already), nothing split, or uneven splits."""
    impl = (str(jax.random.key_impl(key)) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            else str(jax.config.jax_default_prng_impl))
    if impl == "threefry2x32" and jax.config.jax_threefry_partitionable:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or any(t == AxisType.Manual for t in mesh.axis_types):
        return None
    names = tuple(input_axes)[:len(shape)] + (None,) * max(0, len(shape) - len(input_axes))
    spec = tuple(nn.logical_to_mesh_axes(names))
    spec = tuple(None if size == 1 else entry for size, entry in zip(shape, spec))  # broadcast dims
    if math.prod(_count(entry, mesh) for entry in spec) == 1:
        return None
    if any(size % _count(entry, mesh) for size, entry in zip(shape, spec)):
        return None
    return spec


def _count(entry, mesh) -> int:
    if entry is None:
        return 1
    return math.prod(mesh.shape[name] for name in (entry if isinstance(entry, tuple) else (entry,)))


@contextlib.contextmanager
def per_shard_dropout():
    """Within this context (while tracing), every plain flax nn.Dropout draws its mask like `Dropout`
    with its input's first dimension as the batch: models that use nn.Dropout directly are covered."""
    def interceptor(next_fun, args, kwargs, context):
        if type(context.module) is nn.Dropout and context.method_name == "__call__":
            inputs, *rest = args
            deterministic = kwargs.get("deterministic", rest[0] if rest else None)
            rng = kwargs.get("rng", rest[1] if len(rest) > 1 else None)
            return apply_dropout(context.module, inputs, deterministic, rng, BATCH_LEADING)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield

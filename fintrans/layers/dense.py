"""Dense layers whose parameters carry logical axis names."""
from __future__ import annotations

from typing import Any, Sequence

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Any
default_kernel_init = nn.initializers.lecun_normal()


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape, axes: Sequence[str | None],
                    dtype=jnp.float32):
    """A parameter annotated with logical axes (one per dimension), unboxed for use."""
    if len(axes) != len(shape):
        raise ValueError(f"parameter {name!r}: {len(axes)} logical axes {tuple(axes)} for shape {tuple(shape)}")
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class Dense(nn.Module):
    """y = x·W + b over the trailing `len(in_axes)` input dimensions.

    `features` may be a tuple (e.g. (heads, head_dim)); `in_axes` and `out_axes` name the logical
    axes of W's input and output dimensions.
    """
    features: int | tuple[int, ...]
    in_axes: tuple[str | None, ...]
    out_axes: tuple[str | None, ...]
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = _as_tuple(self.features)
        n_in = len(self.in_axes)
        if len(self.out_axes) != len(features):
            raise ValueError(f"{self.name}: out_axes {self.out_axes} do not match features {features}")
        in_shape = x.shape[-n_in:]
        kernel_shape = in_shape + features
        fan_in = math.prod(in_shape)
        # Initialise as a 2-D matrix so fan-in/fan-out match a plain Dense of the same size.
        init2d = lambda key, shape, dtype: self.kernel_init(
            key, (fan_in, math.prod(features)), dtype).reshape(shape)
        kernel = param_with_axes(self, "kernel", init2d, kernel_shape, self.in_axes + self.out_axes,
                                 self.param_dtype)
        x = x.astype(self.dtype)
        contract = tuple(range(x.ndim - n_in, x.ndim))
        y = jax.lax.dot_general(x, kernel.astype(self.dtype), ((contract, tuple(range(n_in))), ((), ())))
        if self.use_bias:
            bias = param_with_axes(self, "bias", self.bias_init, features, self.out_axes, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y

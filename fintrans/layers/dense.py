"""Dense layers whose parameters carry logical axis names, and the one place their matmul is chosen.

Every Dense (and Conv1D) multiplies through `dot_general` (same signature as jax.lax.dot_general):
its own attribute when set, else the one `inject_dot_general` installed, else jax.lax.dot_general.
So a quantised or sparse matmul reaches a whole model without touching it:

    with inject_dot_general(fake_quant_int8_dot):
        logits = jax.jit(model.apply)(params, batch)   # traced inside the with block
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Optional, Sequence

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


_INJECTED_DOT_GENERAL: contextvars.ContextVar[Optional[Callable]] = contextvars.ContextVar(
    "fintrans_dot_general", default=None)


@contextlib.contextmanager
def inject_dot_general(dot_general: Callable) -> Iterator[None]:
    """Layers without their own `dot_general` use this one while tracing inside the block (a jitted
    function traced earlier keeps the matmul it was traced with)."""
    if not callable(dot_general):
        raise TypeError(f"inject_dot_general: expected a callable like jax.lax.dot_general, got {dot_general!r}")
    token = _INJECTED_DOT_GENERAL.set(dot_general)
    try:
        yield
    finally:
        _INJECTED_DOT_GENERAL.reset(token)


def resolve_dot_general(own: Optional[Callable]) -> Callable:
    """A layer's matmul: its own, else the injected one, else jax.lax.dot_general."""
    return own or _INJECTED_DOT_GENERAL.get() or jax.lax.dot_general


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
    dot_general: Optional[Callable] = None  # None: inject_dot_general's, else jax.lax.dot_general

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
        dot = resolve_dot_general(self.dot_general)
        y = dot(x, kernel.astype(self.dtype), ((contract, tuple(range(n_in))), ((), ())))
        if self.use_bias:
            bias = param_with_axes(self, "bias", self.bias_init, features, self.out_axes, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y

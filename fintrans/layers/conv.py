"""1-D and 2-D convolutions with logically-annotated kernels and an injectable matmul / convolution.

Conv1D is a dot_general over the input's windows ("patches"): windows [B, L', k, C] · kernel [k, C, F],
which is what a small-kernel sequence conv costs anyway, shares Dense's `dot_general` injection point
(quantised or sparse matmuls swap in in one place), and steps one input at a time for streaming
(causal padding). Conv2D calls `conv_general_dilated` (injectable too), the right primitive for images.

Padding (Conv1D): 'causal' (left by (k-1)·dilation: output t sees inputs ≤ t), 'same' (the total
(k-1)·dilation split as torch does, left = total // 2), 'circular' (the same split, wrapping around),
'valid' (none).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fintrans import axes
from fintrans.layers.dense import default_kernel_init, param_with_axes, resolve_dot_general

PADDINGS_1D = ("causal", "same", "circular", "valid")


def _check_conv(name: str, *, kernel_size, stride, dilation, groups, in_features: int, features: int) -> None:
    for what, v in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation), ("groups", groups)):
        for item in (v if isinstance(v, tuple) else (v,)):
            if not isinstance(item, int) or item < 1:
                raise ValueError(f"{name}: {what}={v!r} must be a positive int (or a tuple of them)")
    if in_features % groups or features % groups:
        raise ValueError(f"{name}: groups={groups} must divide both the input channels ({in_features}) and "
                         f"features ({features})")


class Conv1D(nn.Module):
    """[B, L, C] -> [B, L', features] over axis 1. Kernel [kernel_size, C / groups, features]
    (tap j reads x[t·stride + j·dilation] of the padded input), bias [features]."""
    features: int
    kernel_size: int
    padding: str = "causal"
    stride: int = 1
    dilation: int = 1
    groups: int = 1  # channel groups; groups == C == features is a depthwise convolution
    use_bias: bool = True
    in_axis: Optional[str] = axes.CHANNELS
    out_axis: Optional[str] = axes.EMBED
    kernel_init: Any = default_kernel_init
    bias_init: Any = nn.initializers.zeros
    dot_general: Optional[Callable] = None  # None: jax.lax.dot_general (or the one inject_dot_general set)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, pad: bool = True) -> jax.Array:
        """`pad=False` reads x as already padded (how `step` uses it)."""
        if self.padding not in PADDINGS_1D:
            raise ValueError(f"{self.name}: unknown padding {self.padding!r}; choose from {PADDINGS_1D}")
        if x.ndim != 3:
            raise ValueError(f"{self.name}: expected [batch, length, channels], got shape {tuple(x.shape)}")
        c, k, g = x.shape[-1], self.kernel_size, self.groups
        _check_conv(self.name, kernel_size=k, stride=self.stride, dilation=self.dilation, groups=g, in_features=c,
                    features=self.features)
        kernel = param_with_axes(self, "kernel", self.kernel_init, (k, c // g, self.features),
                                 (None, self.in_axis, self.out_axis), self.param_dtype)
        x = x.astype(self.dtype)
        if pad:
            x = self._pad(x)
        span = (k - 1) * self.dilation + 1
        out_len = (x.shape[1] - span) // self.stride + 1
        if out_len < 1:
            raise ValueError(f"{self.name}: input of length {x.shape[1]} is shorter than the kernel's span {span}")
        last = (out_len - 1) * self.stride + 1
        windows = jnp.stack([x[:, j * self.dilation:j * self.dilation + last:self.stride] for j in range(k)],
                            axis=2)  # [B, L', k, C]
        dot = resolve_dot_general(self.dot_general)
        kernel = kernel.astype(self.dtype)
        if g == 1:
            y = dot(windows, kernel, (((2, 3), (0, 1)), ((), ())))
        else:  # contract within each group: batch over groups, then put the groups' outputs side by side
            b, length = windows.shape[:2]
            windows = windows.reshape(b, length, k, g, c // g)
            kernel = kernel.reshape(k, c // g, g, self.features // g)
            y = dot(windows, kernel, (((2, 4), (0, 1)), ((3,), (2,))))  # [G, B, L', F/G]
            y = jnp.moveaxis(y, 0, 2).reshape(b, length, self.features)
        if self.use_bias:
            bias = param_with_axes(self, "bias", self.bias_init, (self.features,), (self.out_axis,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y

    def _pad(self, x: jax.Array) -> jax.Array:
        total = (self.kernel_size - 1) * self.dilation
        if self.padding == "valid" or total == 0:
            return x
        left = total if self.padding == "causal" else total // 2
        right = total - left
        if self.padding == "circular":
            return jnp.concatenate([x[:, x.shape[1] - left:], x, x[:, :right]], axis=1)
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)))

    # --- streaming (causal, stride 1): the state is the last (k-1)·dilation inputs -----------------
    def init_state(self, batch_size: int, in_features: int) -> jax.Array:
        if self.padding != "causal" or self.stride != 1:
            raise ValueError(f"{self.name}: streaming needs padding='causal' and stride=1")
        return jnp.zeros((batch_size, (self.kernel_size - 1) * self.dilation, in_features), self.dtype)

    def step(self, state: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One input step x_t [B, C] -> (state, y_t [B, features]); equals __call__ at that step."""
        window = jnp.concatenate([state, x_t[:, None].astype(state.dtype)], axis=1)
        return window[:, 1:], self(window, pad=False)[:, -1]


class Conv2D(nn.Module):
    """[B, H, W, C] -> [B, H', W', features] with `conv_general_dilated` (NHWC, kernel HWIO)."""
    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"  # 'SAME', 'VALID' or ((top, bottom), (left, right))
    dilation: Sequence[int] = (1, 1)
    groups: int = 1
    use_bias: bool = True
    in_axis: Optional[str] = axes.CHANNELS
    out_axis: Optional[str] = axes.EMBED
    kernel_init: Any = default_kernel_init
    bias_init: Any = nn.initializers.zeros
    conv_general_dilated: Callable = jax.lax.conv_general_dilated
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: expected [batch, height, width, channels], got shape {tuple(x.shape)}")
        kh, kw = tuple(self.kernel_size)
        c, g = x.shape[-1], self.groups
        _check_conv(self.name, kernel_size=(kh, kw), stride=tuple(self.strides), dilation=tuple(self.dilation),
                    groups=g, in_features=c, features=self.features)
        kernel = param_with_axes(self, "kernel", self.kernel_init, (kh, kw, c // g, self.features),
                                 (None, None, self.in_axis, self.out_axis), self.param_dtype)
        y = self.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), window_strides=tuple(self.strides),
            padding=self.padding, rhs_dilation=tuple(self.dilation), feature_group_count=g,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = param_with_axes(self, "bias", self.bias_init, (self.features,), (self.out_axis,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y

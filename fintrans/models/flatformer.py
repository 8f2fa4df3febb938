"""FlatFormer (Liu et al., CVPR'23, 'FlatFormer: Flattened Window Attention for Efficient Point Cloud
Transformer') with a per-point segmentation head.

The points of a batch are flattened to N = batch * max_points token slots; slot n belongs to sample
n // max_points, or to none (sample id -1) where the batch's `mask` is False. Each attention layer
sorts the tokens by window (fintrans.ops.flat_window.window_order: sample, then window in snake
order, then the voxel inside the window in snake order), cuts every sample's sorted tokens into
groups of exactly `group_size` (a sample's last group is filled with copies of the tokens just
before it, as the authors do, so no masks are needed; see kernels_pallas/flat_window_attention/
grouping.py) and runs full multi-head attention inside each group. A block is four such layers
whose orderings are x-major, x-major with windows shifted by half a window, y-major and y-major
shifted, so information crosses group and window borders from block to block.

As in the authors' code (mit-han-lab/flatformer, mmdet3d/models/middle_encoders/flatformer.py):
- every layer is post-LN: x = LN(x + Attn(x)); x = LN(x + FFN(x)), with a GELU FFN of width
  mlp_dim (the authors use 2 * embed_dim);
- a fixed sinusoidal encoding of the voxel (x, y) is added to the queries' and keys' inputs only
  (q = Wq(x + pe), k = Wk(x + pe), v = Wv(x)): pos_length = (embed_dim // 4) * 2 frequencies
  temperature ** (2 * (i // 2) / pos_length) per axis, interleaved sin/cos, [pe_x, pe_y], zero
  padded to embed_dim;
- the four window orderings are computed once per forward pass and shared by all blocks.
The attention is fintrans.layers.MultiHeadAttention with the grouped pattern (the pe enters as its
qk_offset); the projections, the FFN and the norms run on the flat tokens (they are pointwise);
only q, k, v are gathered into groups and only the attention output is scattered back. The
authors read per-voxel features from a voxel encoder; this model's tokens are points, embedded by
a pointwise Dense -> LayerNorm -> GELU -> Dense (the per-point layer of a PointPillars-style
encoder), and several points may share a voxel. The head is one Dense to `num_classes` logits per
point (num_classes=0 returns the backbone's features).

Permuting a sample's points permutes the output alike when no two points of the sample share a
voxel; points on one voxel tie in the sort and keep their slot order, which can move a group border
between them.

`attention="window"` swaps the grouping for the paper's baseline, SST-style equal-window-SHAPE
attention (Fan et al., 'Embracing Single Stride 3D Object Detector with Sparse Transformer'):
every window of a sample (the authors' (ceil(n / w) + 1)^2 windows; regular windows in the x and
y layers, shifted by half a window in the shifted ones) gets `window_capacity` slots, the points
of a window fill its slots (in slot order) and the layer runs on [batch * windows, capacity]
with the empty slots masked out of attention (segment ids through the ordinary attention op), as
SST's padded windows with masks; `window_capacity=0` (the default) puts no cap on a window and
computes the same function as attention over each sample's points with the window as segment id
(no padding; its cost is the attention op's over whole samples). Same blocks, same parameters, only the partition differs. As in
SST, a window's points past the capacity are dropped (here they skip the layer and keep their
input; SST drops them for good); unlike SST's drop levels, every window has the one capacity. The
x and y layers of a block see the same windows (only the shift changes the partition).

Differences from the authors' code: the sample smaller than one group (repeats its own tokens
cyclically where the authors' index reads the previous sample's tokens; see
kernels_pallas/flat_window_attention/grouping.py); stable sort ties (the authors' torch.sort is
not stable); points as tokens with a pointwise embedding instead of the authors' voxel encoder;
a per-point segmentation head instead of the BEV detection head.

Paper defaults (Waymo): window 13x13, group 144, 128 channels, 8 heads of 16, 2 blocks,
grid 468x468 (0.32 m pillars).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fintrans import axes
from fintrans.layers import Dense, LayerNorm, TransformerBlock
from fintrans.layers.mlp import ACTIVATIONS, activation
from fintrans.models import register
from fintrans.models.config import AttentionConfig, ConfigError, check_choice, check_positive, check_rate
from fintrans.ops import flat_window
from fintrans.ops.patterns import AttentionPattern

# (name, sort axis, shifted windows) of the four layers of every block, in the authors' order.
ORDERINGS = (("x", "x", False), ("x_shift", "x", True), ("y", "y", False), ("y_shift", "y", True))
ATTENTION_MODES = ("flat", "window")  # the authors' equal-size groups; SST-style whole windows
MAX_GROUP_SIZE = 1024  # the grouped-attention kernels keep a whole group in fast memory


def _check_pair(name: str, value: Any) -> None:
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"{name}={value!r} must be two positive integers (x, y)")


@dataclasses.dataclass(frozen=True)
class FlatFormerConfig(AttentionConfig):
    DATA_FIELDS = {"num_classes": "num_classes"}  # see ModelConfig
    in_features: int = 6  # per-point input features (synthetic_scenes: 6)
    num_classes: int = 5  # segmentation classes; 0: no head, the output is the backbone's features
    grid_shape: tuple[int, int] = (468, 468)  # (nx, ny) bird's-eye voxels; coords lie in [0, nx) x [0, ny)
    window_shape: tuple[int, int] = (13, 13)
    group_size: int = 144
    embed_dim: int = 128
    num_heads: int = 8
    num_blocks: int = 2  # each block: four layers ordered x, x-shift, y, y-shift
    mlp_dim: int = 256
    activation: str = "gelu"
    norm_epsilon: float = 1e-5  # torch.nn.LayerNorm's default, as the authors'
    dropout_rate: float = 0.0  # on the attention and FFN outputs before each residual
    pos_temperature: float = 10_000.0
    normalize_pos: bool = False  # True: coordinates scaled to [0, 2 pi) before the sinusoids
    # "flat": FlatFormer's equal-size groups (the authors'); "window": the paper's SST-style baseline,
    # attention within each whole window (module docstring)
    attention: str = "flat"
    # "window" only: slots per padded window (SST's cap on tokens per window; points of a window past
    # it skip the layer); 0: no cap, every window whole (computed over each sample's points with the
    # window as segment id, which is the same function as padded windows large enough for all)
    window_capacity: int = 0
    # attention_impl (from AttentionConfig): None or an implementation of the grouped_attention op
    # (reference, xla, pallas_gpu, pallas_tpu; or xla_dense / xla_blockwise, the general attention
    # op with the groups as its batch, e.g. to compare against it).

    def attention_ops(self) -> tuple[str, ...]:
        return ("attention",) if self.attention == "window" else ("grouped_attention",)

    def validate(self):
        for name in ("in_features", "group_size", "embed_dim", "num_heads", "num_blocks", "mlp_dim"):
            check_positive(name, getattr(self, name))
        check_positive("num_classes", self.num_classes, allow_zero=True)
        _check_pair("grid_shape", self.grid_shape)
        _check_pair("window_shape", self.window_shape)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("attention", self.attention, ATTENTION_MODES)
        check_positive("window_capacity", self.window_capacity, allow_zero=True)
        check_rate("dropout_rate", self.dropout_rate)
        if self.group_size > MAX_GROUP_SIZE:
            raise ConfigError(f"group_size={self.group_size} exceeds {MAX_GROUP_SIZE}, the largest group the "
                              "grouped-attention kernels hold in fast memory")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.embed_dim < 4:
            raise ConfigError(f"embed_dim={self.embed_dim} must be at least 4 (sin and cos of x and y)")
        for name in ("norm_epsilon", "pos_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive float")
        if not isinstance(self.normalize_pos, bool):
            raise ConfigError(f"normalize_pos={self.normalize_pos!r} must be True or False")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def position_encoding(coords: jax.Array, features: int, *, temperature: float = 10_000.0,
                      grid_shape: tuple[int, int] | None = None) -> jax.Array:
    """The authors' sinusoidal (x, y) encoding: int coords [N, 2] -> float32 [N, features].

    With `grid_shape`, coordinates are first scaled to [0, 2 pi) (their normalize_pos)."""
    pos_length = (features // 4) * 2
    i = np.arange(pos_length)
    inv_freq = jnp.asarray(temperature ** (2 * (i // 2) / pos_length), jnp.float32)
    xy = coords.astype(jnp.float32)
    if grid_shape is not None:
        xy = xy / jnp.asarray(grid_shape, jnp.float32) * 2 * 3.1415  # the authors' constant
    parts = []
    for a in range(2):
        p = xy[:, a, None] / inv_freq  # [N, pos_length]
        p = jnp.stack([jnp.sin(p[:, 0::2]), jnp.cos(p[:, 1::2])], axis=-1).reshape(p.shape)
        parts.append(p)
    pe = jnp.concatenate(parts, axis=-1)
    return jnp.pad(pe, ((0, 0), (0, features - pe.shape[1])))


def flatten_points(batch) -> tuple[jax.Array, jax.Array]:
    """The batch's points as flat token slots: (coords int32 [N, 2], sample_ids int32 [N]) with
    N = batch * max_points, sample id b for the real points of row b and -1 for padding."""
    b, n = batch["mask"].shape
    sample_ids = jnp.where(batch["mask"], jnp.arange(b, dtype=jnp.int32)[:, None], -1).reshape(b * n)
    coords = jnp.where(batch["mask"][..., None], batch["coords"].astype(jnp.int32), 0).reshape(b * n, 2)
    return coords, sample_ids


def group_plans(config: FlatFormerConfig, coords: jax.Array, sample_ids: jax.Array, num_samples: int) -> dict:
    """{ordering name: GroupPlan} for the four orderings of a block (x, x_shift, y, y_shift)."""
    plans = {}
    for name, axis, shift in ORDERINGS:
        order = flat_window.window_order(coords, sample_ids, grid_shape=config.grid_shape,
                                         window_shape=config.window_shape, axis=axis, shift=shift)
        plans[name] = flat_window.make_group_plan(order, sample_ids, num_samples=num_samples,
                                                  group_size=config.group_size)
    return plans


@dataclasses.dataclass(frozen=True)
class WindowLayout:
    """SST-style padded windows of one ordering: every possible window of a sample gets
    `capacity` slots. A pytree of arrays (sizes static).

    gather: int32 [batch, windows * capacity], the row slot each padded slot reads (0 where empty).
    slot_valid: bool [batch, windows * capacity], the padded slot holds a real point.
    back: int32 [batch, points], each point's padded slot (0 where not kept; never read).
    kept: bool [batch, points], the point is real and within its window's capacity.
    """
    gather: jax.Array
    slot_valid: jax.Array
    back: jax.Array
    kept: jax.Array


jax.tree_util.register_dataclass(WindowLayout, data_fields=["gather", "slot_valid", "back", "kept"],
                                 meta_fields=[])


def num_windows(config: FlatFormerConfig) -> int:
    """Windows per sample in the padded-window layout: the authors' (ceil(n / w) + 1) per axis."""
    (nx, ny), (wx, wy) = config.grid_shape, config.window_shape
    return (-(-nx // wx) + 1) * (-(-ny // wy) + 1)


def window_segments(config: FlatFormerConfig, coords: jax.Array, sample_ids: jax.Array, batch: int) -> dict:
    """{ordering name: int32 [batch, points]}: each point's window in its sample, -1 for padding
    (the window baseline without a capacity: attention with these segment ids is attention within
    whole windows)."""
    (nx, ny), (wx, wy) = config.grid_shape, config.window_shape
    per_row = {"x": -(-nx // wx) + 1, "y": -(-ny // wy) + 1}
    out = {}
    for name, axis, shift in ORDERINGS:
        _, row, across, _ = flat_window.window_sort_keys(coords, sample_ids, grid_shape=config.grid_shape,
                                                         window_shape=config.window_shape, axis=axis, shift=shift)
        out[name] = jnp.where(sample_ids >= 0, row * per_row[axis] + across, -1).reshape(batch, -1)
    return out


def window_layouts(config: FlatFormerConfig, coords: jax.Array, sample_ids: jax.Array, batch: int) -> dict:
    """{ordering name: WindowLayout} for the window baseline: a point of window w at rank r (in row
    slot order) sits at padded slot w * capacity + r; points at ranks >= capacity are dropped."""
    (nx, ny), (wx, wy) = config.grid_shape, config.window_shape
    per_row = {"x": -(-nx // wx) + 1, "y": -(-ny // wy) + 1}
    w, m = num_windows(config), config.window_capacity
    out = {}
    for name, axis, shift in ORDERINGS:
        _, row, across, _ = flat_window.window_sort_keys(coords, sample_ids, grid_shape=config.grid_shape,
                                                         window_shape=config.window_shape, axis=axis, shift=shift)
        window = jnp.where(sample_ids >= 0, row * per_row[axis] + across, w).reshape(batch, -1)  # w: padding
        n = window.shape[1]
        iota = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), window.shape)
        sorted_window, order = jax.lax.sort((window, iota), dimension=1, num_keys=1, is_stable=True)
        first = jax.vmap(lambda a: jnp.searchsorted(a, a, side="left"))(sorted_window).astype(jnp.int32)
        rank = iota - first
        keep_sorted = (sorted_window < w) & (rank < m)
        slot = jnp.where(keep_sorted, sorted_window * m + rank, w * m)  # w * m: out of range, dropped
        rows = jnp.arange(batch)[:, None]
        gather = jnp.zeros((batch, w * m), jnp.int32).at[rows, slot].set(order, mode="drop")
        slot_valid = jnp.zeros((batch, w * m), bool).at[rows, slot].set(True, mode="drop")
        back = jnp.zeros((batch, n), jnp.int32).at[rows, order].set(jnp.where(keep_sorted, slot, 0))
        kept = jnp.zeros((batch, n), bool).at[rows, order].set(keep_sorted)
        out[name] = WindowLayout(gather, slot_valid, back, kept)
    return out


def _rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, N, ...] gathered along N by index [B, N]."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def flatformer_layer(cfg: FlatFormerConfig, name: str | None = None) -> nn.Module:
    """One post-LN layer: x = LN(x + Attn(x)) with grouped attention in one window ordering (the
    attention output's dropout is MultiHeadAttention's own), then x = LN(x + dropout(FFN(x))).
    Call it as layer(x, qk_offset=pe, groups=plan, deterministic=...) on [batch, max_points, embed_dim]."""
    return TransformerBlock(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim, norm="layernorm", norm_position="post",
        norm_epsilon=cfg.norm_epsilon, activation=cfg.activation, use_bias=True, dropout_rate=cfg.dropout_rate,
        mlp_dropout_rate=0.0, attention_impl=cfg.attention_impl,
        pattern=AttentionPattern("full" if cfg.attention == "window" else "grouped"),
        dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, name=name)


class FlatFormer(nn.Module):
    """batch {'points': float[B, N, in_features], 'coords': int[B, N, 2] voxel (x, y), 'mask': bool[B, N]}
    -> per-point logits float32[B, N, num_classes] (zeros on padding rows), or the backbone's
    features float32[B, N, embed_dim] when num_classes is 0."""
    config: FlatFormerConfig

    @nn.compact
    def __call__(self, batch, *, train: bool = False) -> jax.Array:
        cfg = self.config
        self._check(batch)
        dtype, pdtype = cfg.compute_dtype, cfg.params_dtype
        deterministic = not train
        mask = batch["mask"].astype(bool)
        b, n = mask.shape
        coords, sample_ids = flatten_points({**batch, "mask": mask})
        if cfg.attention == "window":
            plans = (window_layouts if cfg.window_capacity else window_segments)(cfg, coords, sample_ids, b)
        else:
            plans = group_plans(cfg, coords, sample_ids, b)
        pe = position_encoding(coords, cfg.embed_dim, temperature=cfg.pos_temperature,
                               grid_shape=cfg.grid_shape if cfg.normalize_pos else None)
        pe = pe.reshape(b, n, cfg.embed_dim).astype(dtype)

        points = jnp.where(mask[..., None], batch["points"], 0).astype(dtype)
        x = Dense(cfg.embed_dim, (axes.CHANNELS,), (axes.MLP,), dtype=dtype, param_dtype=pdtype,
                  name="point_embed")(points)
        x = activation(cfg.activation)(LayerNorm(epsilon=cfg.norm_epsilon, dtype=dtype, param_dtype=pdtype,
                                                 name="point_embed_norm")(x))
        x = Dense(cfg.embed_dim, (axes.MLP,), (axes.EMBED,), dtype=dtype, param_dtype=pdtype,
                  name="point_embed_out")(x)
        x = nn.with_logical_constraint(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        for i in range(cfg.num_blocks):
            for name, _, _ in ORDERINGS:
                layer = flatformer_layer(cfg, name=f"block_{i}_{name}")
                if cfg.attention == "window" and cfg.window_capacity:
                    x = self._padded_windows(layer, x, pe, plans[name], deterministic)
                elif cfg.attention == "window":
                    x = layer(x, qk_offset=pe, segment_ids=(plans[name], plans[name]), deterministic=deterministic)
                else:
                    x = layer(x, qk_offset=pe, groups=plans[name], deterministic=deterministic)
        if cfg.num_classes:
            x = Dense(cfg.num_classes, (axes.EMBED,), (axes.CLASSES,), dtype=dtype, param_dtype=pdtype,
                      name="head")(x)
        return jnp.where(mask[..., None], x, 0).astype(jnp.float32)

    def _padded_windows(self, layer, x, pe, layout: WindowLayout, deterministic):
        """The whole layer on [batch * windows, capacity] padded windows (all but attention is
        pointwise), empty slots masked out of attention as keys by segment ids (-1); points are read
        back from their slots, and a dropped point keeps its input."""
        b, c = x.shape[0], x.shape[-1]
        w, m = num_windows(self.config), self.config.window_capacity
        windows = lambda t: _rows(t, layout.gather).reshape(b * w, m, t.shape[-1])
        seg = jnp.where(layout.slot_valid, 0, -1).reshape(b * w, m)
        y = layer(windows(x), qk_offset=windows(pe), segment_ids=(seg, seg), deterministic=deterministic)
        y = _rows(y.reshape(b, w * m, c), layout.back)
        return jnp.where(layout.kept[..., None], y, x)

    def _check(self, batch) -> None:
        cfg = self.config
        for key in ("points", "coords", "mask"):
            if key not in batch:
                raise ValueError(f"flatformer: the batch has no {key!r}; it needs 'points' [batch, points, "
                                 f"{cfg.in_features}], 'coords' [batch, points, 2] and 'mask' [batch, points] "
                                 f"(got {sorted(batch)})")
        points, coords, mask = batch["points"], batch["coords"], batch["mask"]
        if points.ndim != 3 or points.shape[2] != cfg.in_features:
            raise ValueError(f"flatformer: points must be [batch, points, in_features={cfg.in_features}], got "
                             f"{tuple(points.shape)}")
        b, n = points.shape[:2]
        if tuple(coords.shape) != (b, n, 2):
            raise ValueError(f"flatformer: coords must be [batch, points, 2] = {(b, n, 2)} to match points "
                             f"{tuple(points.shape)}, got {tuple(coords.shape)}")
        if not jnp.issubdtype(coords.dtype, jnp.integer):
            raise ValueError(f"flatformer: coords must be integer voxel indices, got {coords.dtype}")
        if tuple(mask.shape) != (b, n):
            raise ValueError(f"flatformer: mask must be [batch, points] = {(b, n)} to match points "
                             f"{tuple(points.shape)}, got {tuple(mask.shape)}")


register("flatformer", FlatFormerConfig, FlatFormer)

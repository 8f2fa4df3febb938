"""The one dispatcher and the one per-shard wrapper every kernel-backed op uses.

An op is declared once and its implementations registered on it:

    MY_OP = Op("block_sparse_matmul", check=check_inputs, doc="...")
    MY_OP.register("xla", xla_fn)                                    # always works: last in every fallthrough
    MY_OP.register("pallas_gpu", gpu_fn, platforms=("gpu",))         # preferred on GPU
    MY_OP(x, w, implementation=None)                                 # dispatch
    print(MY_OP.explain(x, w))                                       # what it would run, and why

Every op lives in the `OPS` registry (fintrans.registry.Registry) and its implementations in the
op's own Registry, so an unknown op or implementation name raises an error naming the valid ones.

Implementation names are one scheme across ops (see IMPLEMENTATION_NAMES). Dispatch rules (the
loop is kernels_pallas._dispatch.run, shared with the kernel packages):
  * implementation=None tries the platform's preferred implementations in registration order
    (newest first), falling through on NotImplementedError (an input the kernel does not take) or
    an unavailable kernel module to 'xla', which must accept every valid input. An op declared with
    `table_key` (attention, decode) first follows the kernels' committed dispatch table for the
    call's device, dtype, head_dim and shape bucket: its measured order, then the unmeasured ones,
    without those the table rejects (kernels_pallas/_dispatch.py);
  * a named implementation is used as asked, never replaced: its NotImplementedError propagates.
`explain(op_name, *args, **kwargs)` says which implementation a call would use and why, by tracing
it with jax.eval_shape (nothing runs).

`per_shard` is the one shard_map wrapper: an opaque kernel call (Pallas, a custom call) cannot be
split by XLA, which would gather every input onto every device; per_shard runs it on each device's
shard of the dimensions the op never mixes (batch, groups, heads), laid out by the logical-axis
rules (fintrans.axes) the activations already follow.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

from fintrans import axes
from fintrans.registry import Registry
from kernels_pallas import _dispatch as kernel_dispatch

# The implementation names every op uses, with what each means. An op registers the subset it has.
IMPLEMENTATION_NAMES = {
    "xla": "plain XLA, the op's general algorithm; accepts every valid input (last in every fallthrough)",
    "xla_dense": "plain XLA with the full [q_len, kv_len] score matrix; any bias or mask",
    "xla_blockwise": "plain XLA online softmax over tiles (kernels_pallas.blockwise_attention's xla)",
    "reference": "the kernel package's dense float32/float64 oracle (tests)",
    "pallas_gpu": "Pallas kernel, Triton lowering (GPU)",
    "pallas_tpu": "Pallas kernel, Mosaic TPU lowering (preferred on TPU)",
    "pallas_mosaic_gpu": "Pallas kernel, Mosaic GPU lowering (Hopper GPUs)",
    "cudnn": "cuDNN's fused kernel through jax.nn.dot_product_attention (NVIDIA GPUs; the inputs it computes exactly)",
}
PLATFORMS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Implementation:
    fn: Callable[..., Any]
    platforms: tuple[str, ...] = ()  # platforms on which implementation=None tries it


class Op:
    """A kernel-backed op: an input check, named implementations and the fall-through dispatch."""

    def __init__(self, name: str, *, check: Optional[Callable[..., None]] = None, doc: str = "",
                 table_key: Optional[Callable[..., kernel_dispatch.TableKey]] = None):
        """table_key(*args, **kwargs): the call's key in the kernels' dispatch table, for an op
        whose implementation=None should follow the measured order (None: registration order)."""
        self.name = name
        self.check = check
        self.table_key = table_key
        self.__doc__ = doc or f"The {name} op."
        self.implementations: Registry[Implementation] = Registry(f"{name} implementation")
        self._preferred: list[str] = []  # newest first
        OPS.register(name, self)

    def register(self, name: str, fn: Callable[..., Any], *, platforms: Sequence[str] = (),
                 replace: bool = False) -> Callable[..., Any]:
        """Adds implementation `name` (one of IMPLEMENTATION_NAMES); on `platforms` it is tried
        before the implementations registered earlier."""
        if name not in IMPLEMENTATION_NAMES:
            raise ValueError(f"{self.name}: implementation name {name!r} is not in the naming scheme "
                             f"{sorted(IMPLEMENTATION_NAMES)} (fintrans.ops.dispatch.IMPLEMENTATION_NAMES)")
        bad = set(platforms) - set(PLATFORMS)
        if bad:
            raise ValueError(f"{self.name}: unknown platform(s) {sorted(bad)}; choose from {PLATFORMS}")
        self.implementations.register(name, Implementation(fn, tuple(platforms)), replace=replace)
        if platforms:
            self._preferred = [name] + [n for n in self._preferred if n != name]
        return fn

    def names(self) -> tuple[str, ...]:
        return self.implementations.names()

    def validate(self, implementation: Optional[str]) -> None:
        """Raises ValueError naming the op and its implementations unless `implementation` is None
        or one of them (what configs call at construction)."""
        if implementation is not None and implementation not in self.implementations:
            raise ValueError(f"{implementation!r} is not an implementation of the {self.name} op; "
                             f"choose from {list(self.names())} or None")

    def preference(self, platform: Optional[str] = None) -> tuple[str, ...]:
        """The names implementation=None tries on `platform` (default: jax's backend), in order."""
        platform = platform or jax.default_backend()
        names = [n for n in self._preferred if platform in self.implementations.get(n).platforms]
        return tuple(names) + ("xla",)

    def plan(self, *args, **kwargs) -> kernel_dispatch.Plan:
        """What implementation=None tries for these inputs, in order, and where the order comes
        from: the dispatch table's entry for table_key(*args, **kwargs), else preference()."""
        default = self.preference()
        key = self.table_key(*args, **kwargs) if self.table_key is not None else None
        return kernel_dispatch.plan(default, default, key)

    def __call__(self, *args, implementation: Optional[str] = None, **kwargs):
        if self.check is not None:
            self.check(*args, **kwargs)  # input errors before any fallthrough
        if implementation is not None:
            self.validate(implementation)
        return kernel_dispatch.run(self.name, implementation, lambda: self.plan(*args, **kwargs),
                                   lambda n: self.implementations.get(n).fn, args, kwargs)

    def explain(self, *args, implementation: Optional[str] = None, **kwargs) -> kernel_dispatch.Explanation:
        """Which implementation self(*args, implementation=..., **kwargs) would run, and why (the
        table entry and its measured times, or the registration order; each candidate skipped and
        its reason). Traced with jax.eval_shape: nothing runs."""
        return kernel_dispatch.explain(self, *args, implementation=implementation, **kwargs)

    def __repr__(self):
        return f"Op({self.name!r}, implementations={list(self.names())})"


OPS: Registry[Op] = Registry("op", load=("fintrans.ops.attention", "fintrans.ops.flat_window",
                                         "fintrans.ops.patterns"))


def get(name: str) -> Op:
    return OPS.get(name)


def explain(name: str, *args, **kwargs) -> kernel_dispatch.Explanation:
    """Which implementation op `name` would run on these inputs, and why, e.g.
    `explain("attention", q, k, v, causal=True)`; see Op.explain."""
    return get(name).explain(*args, **kwargs)


# --- the one per-shard wrapper ---

# Logical axes that must split over the same mesh axes or not at all: a device's query heads must
# find their shared key/value heads locally (grouped-query attention).
TIED_AXES = ((axes.ACT_HEADS, axes.ACT_KV_HEADS),)


def shard_specs(shapes: Sequence[Optional[tuple[int, ...]]],
                logical: Sequence[Optional[tuple[Optional[str], ...]]]) -> Optional[list[Optional[P]]]:
    """PartitionSpecs for arrays of `shapes` whose dimensions carry `logical` axis names (None: not
    split), or None without a (multi-device) mesh.

    A logical axis maps to the mesh axes the current logical-axis rules give it, kept only where
    every dimension that carries it divides evenly; tied axes (TIED_AXES) split alike or not at all.
    A None shape (an absent optional input) gets a None spec.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return None
    sizes: dict[str, list[int]] = {}
    for shape, names in zip(shapes, logical):
        if shape is None:
            continue
        if len(shape) != len(names):
            raise ValueError(f"per_shard: logical axes {names} do not match shape {shape}")
        for size, name in zip(shape, names):
            if name is not None:
                sizes.setdefault(name, []).append(size)

    def mesh_axes(name):
        found = nn.logical_to_mesh_axes((name,))[0]
        found = () if found is None else (found,) if isinstance(found, str) else tuple(found)
        found = tuple(n for n in found if n in mesh.shape)
        split = math.prod(mesh.shape[n] for n in found) if found else 1
        return found if found and all(s % split == 0 for s in sizes[name]) else ()

    resolved = {name: mesh_axes(name) for name in sizes}
    for tied in TIED_AXES:
        present = [resolved[n] for n in tied if n in resolved]
        if any(p != present[0] for p in present):
            for n in tied:
                if n in resolved:
                    resolved[n] = ()
    spec = lambda names: P(*((resolved[n] or None) if n is not None else None for n in names))
    return [None if shape is None else spec(names) for shape, names in zip(shapes, logical)]


def per_shard(kernel: Callable[..., Any], args: Sequence[Any], in_axes: Sequence[Any], out_axes: Any):
    """kernel(*args), run under shard_map on each device's shard when a mesh is active.

    in_axes: per argument, a tuple of logical axis names (None for a dimension never split), a
      tuple of such tuples for a tuple argument (say, a pair of segment-id arrays), or anything for
      a None argument. out_axes: the output's logical axis names.
    Dimensions the kernel reduces over (lengths, head_dim) must be given None; every name in
    out_axes must also name an input dimension (the output's split follows that input's).
    """
    flat_shapes, flat_axes, structure = [], [], []
    for arg, names in zip(args, in_axes):
        if isinstance(arg, tuple):
            structure.append(len(arg))
            flat_shapes += [a.shape for a in arg]
            flat_axes += list(names)
        else:
            structure.append(None)
            flat_shapes.append(None if arg is None else arg.shape)
            flat_axes.append(names if arg is not None else ())
    specs = shard_specs(flat_shapes, flat_axes)
    if specs is None:
        return kernel(*args)
    in_specs, i = [], 0
    for arg, n in zip(args, structure):
        if n is None:
            in_specs.append(specs[i])
            i += 1
        else:
            in_specs.append(tuple(specs[i:i + n]))
            i += n
    by_name = {}
    for shape, names, s in zip(flat_shapes, flat_axes, specs):
        if s is not None:
            for name, part in zip(names, s):
                by_name.setdefault(name, part)
    out_spec = P(*(by_name.get(n) if n is not None else None for n in out_axes))
    return jax.shard_map(kernel, in_specs=tuple(in_specs), out_specs=out_spec, check_vma=False)(*args)

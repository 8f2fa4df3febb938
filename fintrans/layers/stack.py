"""A stack of N residual blocks: unrolled, scanned over a 'layers' axis, or looped with shared weights;
each optionally rematerialised.

    Stack(block=functools.partial(TransformerBlock, num_heads=4, ...), num_layers=12, mode="scan",
          remat_policy="dots", name="blocks")(x, causal=True, deterministic=not train)

Modes (parameter paths under the stack's name, or the caller's with nest=False):
- 'unrolled': block_0 .. block_{N-1}, one Python call each (fastest to run on small models).
- 'scan': `nn.scan` over one block, params 'layers/...' with a leading dimension N named
  `axes.LAYERS`; every other collection (KV 'cache', 'batch_stats', 'intermediates') is stacked the
  same way. Compile time does not grow with N.
- 'looped': the N blocks ('loop/block_i') applied `loops` times with the same weights (AlgoFormer-
  style weight sharing); non-parameter collections get a leading dimension `loops` (each pass keeps
  its own KV cache), dropout differs per pass.

Keyword arguments of the call reach every block (and so its token mixer): arrays (mask, positions,
segment_ids, ...) are passed into the lifted transforms, Python values (causal=True, ...) are static.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import DenyList

from fintrans import axes
from fintrans.registry import Registry

STACK_MODES = ("unrolled", "scan", "looped")

# What activations a rematerialised block keeps for the backward pass; 'none' does not remat at all.
REMAT_POLICIES: Registry[Optional[Callable]] = Registry("remat policy")
REMAT_POLICIES.register("none", None)
REMAT_POLICIES.register("full", jax.checkpoint_policies.nothing_saveable)  # recompute the whole block
REMAT_POLICIES.register("dots", jax.checkpoint_policies.checkpoint_dots)  # keep matmul outputs
REMAT_POLICIES.register("dots_no_batch", jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims)
REMAT_POLICIES.register("everything", jax.checkpoint_policies.everything_saveable)  # remat boundary only


def remat_policy(name: str) -> Optional[Callable]:
    """The jax checkpoint policy for `name`; unknown names raise an error listing the choices."""
    return REMAT_POLICIES.get(name)


SCANNED_NAME = "layers"  # the scanned block's name: its variables carry the leading layers dimension


def per_block_ndim(path, leaf) -> int:
    """A variable's rank within one block: each scanned Stack on its path (a `SCANNED_NAME` key) added a
    leading dimension. For rank-based rules such as "no weight decay on biases and norm scales"."""
    return leaf.ndim - sum(getattr(key, "key", None) == SCANNED_NAME for key in path)


def _is_dynamic(value) -> bool:
    return any(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree.leaves(value))


class Stack(nn.Module):
    """`num_layers` blocks made by `block(name=...)`, run as `mode` says (see the module docstring)."""
    block: Callable[..., nn.Module]
    num_layers: int
    mode: str = "unrolled"
    loops: int = 1  # 'looped' only: how many times the num_layers blocks run
    remat_policy: str = "none"
    # False: the blocks live in the caller's scope (paths 'block_i' / 'layers' as if the caller had made them,
    # and the same parameter initialisation), so models that predate Stack keep checkpoints and results.
    nest: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True, state: Optional[dict] = None, **kwargs):
        """x -> x through every block; with `state` ({'block_i': that block's state}, unrolled only), one
        streaming step through every block: returns (x, new state) (see Block)."""
        if self.mode not in STACK_MODES:
            raise ValueError(f"{self.name}: unknown stack mode {self.mode!r}; choose from {STACK_MODES}")
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"{self.name}: num_layers={self.num_layers!r} must be a positive int")
        if not isinstance(self.loops, int) or self.loops < 1 or (self.loops != 1 and self.mode != "looped"):
            raise ValueError(f"{self.name}: loops={self.loops!r} must be a positive int, and 1 unless mode='looped'")
        if not self.nest:
            nn.share_scope(self, self.parent)
        policy = remat_policy(self.remat_policy)
        use_remat = self.remat_policy != "none"
        static = {k: v for k, v in kwargs.items() if not _is_dynamic(v)}
        dynamic = {k: v for k, v in kwargs.items() if _is_dynamic(v)}

        def run(module, carry, dyn):
            return module(carry, deterministic=deterministic, **static, **dyn)

        def scan_body(module, carry, dyn):
            return run(module, carry, dyn), None

        if state is not None:
            if self.mode != "unrolled":
                raise ValueError(f"{self.name}: streaming steps (state=...) need mode='unrolled', got {self.mode!r}")
            new_state = {}
            for i in range(self.num_layers):
                x, new_state[f"block_{i}"] = self.block(name=f"block_{i}")(x, state=state[f"block_{i}"], **kwargs)
            return x, new_state
        if self.mode == "unrolled":
            step = nn.remat(run, policy=policy) if use_remat else run
            for i in range(self.num_layers):
                x = step(self.block(name=f"block_{i}"), x, dynamic)
            return x

        body = nn.remat(scan_body, policy=policy, prevent_cse=False) if use_remat else scan_body
        if self.mode == "scan":
            scanned = nn.scan(body, variable_axes={True: 0}, split_rngs={"params": True, "dropout": True},
                              in_axes=(nn.broadcast,), length=self.num_layers,
                              metadata_params={nn.PARTITION_NAME: axes.LAYERS})
            x, _ = scanned(self.block(name=SCANNED_NAME), x, dynamic)
            return x
        # looped: parameters broadcast (shared), every other collection stacked per pass.
        group = Stack(block=self.block, num_layers=self.num_layers, mode="unrolled", name="loop")
        scanned = nn.scan(body, variable_broadcast="params", variable_axes={DenyList("params"): 0},
                          split_rngs={"params": False, "dropout": True}, in_axes=(nn.broadcast,), length=self.loops)
        x, _ = scanned(group, x, dynamic)
        return x


def stack_params(per_block: Sequence[Any], mode: str = "unrolled") -> dict:
    """Per-block parameter trees (block 0 first) -> the tree a Stack of that mode holds: {'block_i': ...}
    when unrolled, {'layers': leaves stacked on a new leading axis} when scanned. For converters
    (e.g. Hugging Face weights) and for comparing modes."""
    if mode == "unrolled":
        return {f"block_{i}": p for i, p in enumerate(per_block)}
    if mode == "scan":
        return {SCANNED_NAME: jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_block)}
    raise ValueError(f"stack_params: mode={mode!r}; per-block parameters map onto 'unrolled' or 'scan' stacks")


def unstack_params(tree: dict) -> list:
    """The inverse of stack_params: a Stack's parameter tree (either mode) -> per-block trees."""
    if SCANNED_NAME in tree:
        n = jax.tree.leaves(tree[SCANNED_NAME])[0].shape[0]
        return [jax.tree.map(lambda leaf: leaf[i], tree[SCANNED_NAME]) for i in range(n)]
    return [tree[f"block_{i}"] for i in range(len(tree))]

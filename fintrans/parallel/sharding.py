"""From logical axes to shardings: sharded init, batch placement, shardings of any state tree.

Recipe (design note 3): jax.eval_shape(init) keeps flax's logical-axis boxes -> partition specs ->
nn.logical_to_mesh_sharding -> jax.jit(init, out_shardings=...), so no device ever holds the full
unsharded state.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fintrans import axes


def logical_specs(boxed_tree: Any) -> Any:
    """Logical PartitionSpecs for a tree that may hold nn.LogicallyPartitioned boxes (others replicated)."""
    return nn.get_partition_spec(boxed_tree)


def mesh_shardings(boxed_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings (one per unboxed leaf) for a boxed tree under `rules`."""
    return nn.logical_to_mesh_sharding(logical_specs(boxed_tree), mesh, rules)


def sharded_init(boxed_init: Callable[..., Any], mesh: Mesh, rules, *args) -> tuple[Any, Any]:
    """Runs `boxed_init(*args)` (returning a tree with logical boxes) directly into its shardings.

    Returns (unboxed state, its shardings).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(boxed_init, *args)
        shardings = mesh_shardings(abstract, mesh, rules)
        state = jax.jit(lambda *a: nn.unbox(boxed_init(*a)), out_shardings=shardings)(*args)
    return state, shardings


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Leading (batch) dimension split as the activation batch axis is; the rest replicated."""
    spec = nn.logical_to_mesh_axes((axes.ACT_BATCH,), rules)
    return NamedSharding(mesh, P(*spec))


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each host's local batch into global arrays split along the batch dimension."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def describe(tree: Any) -> dict[str, str]:
    """Path -> sharding spec for every array leaf (for logs and tests)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        spec = getattr(getattr(leaf, "sharding", None), "spec", None)
        out[jax.tree_util.keystr(path)] = f"{tuple(leaf.shape)} {spec}"
    return out

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


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def drop_empty_boxes(tree: Any) -> Any:
    """`tree` with every box that holds no array replaced by its content. optax's masked states (a
    frozen parameter's slot under config.trainable) put a leafless MaskedNode inside the parameter's
    box; such a box has nothing to shard."""
    return jax.tree.map(lambda x: x.value if _is_box(x) and not jax.tree.leaves(x.value) else x, tree, is_leaf=_is_box)


def logical_specs(boxed_tree: Any) -> Any:
    """Logical PartitionSpecs for a tree that may hold nn.LogicallyPartitioned boxes (others replicated)."""
    return nn.get_partition_spec(drop_empty_boxes(boxed_tree))


def mesh_shardings(boxed_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings (one per unboxed leaf) for a boxed tree under `rules`."""
    return nn.logical_to_mesh_sharding(logical_specs(boxed_tree), mesh, rules)


class ShardingError(ValueError):
    """A tensor cannot be split the way the mesh and the logical-axis rules ask."""


def _split_counts(spec: P, mesh: Mesh) -> list[int]:
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    counts = []
    for entry in spec:
        names = entry if isinstance(entry, tuple) else (entry,)
        counts.append(int(np.prod([sizes[n] for n in names if n is not None])))
    return counts


def check_divisible(abstract: Any, shardings: Any) -> None:
    """Names the first array whose dimension the mesh would split unevenly (jax's own error
    names only shapes)."""
    abstract = drop_empty_boxes(abstract)
    logical = logical_specs(abstract)
    leaves = jax.tree_util.tree_leaves_with_path(abstract, is_leaf=_is_box)
    for (path, leaf), sharding, names in zip(leaves, jax.tree.leaves(shardings),
                                             jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))):
        value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
        for dim, (size, count) in enumerate(zip(value.shape, _split_counts(sharding.spec, sharding.mesh))):
            if size % count:
                raise ShardingError(
                    f"{jax.tree_util.keystr(path)} has shape {tuple(value.shape)}; its dimension {dim} (logical axis "
                    f"{names[dim]!r}, size {size}) would be split {count} ways over mesh axes "
                    f"{sharding.spec[dim]!r}. Change config.mesh, or map {names[dim]!r} elsewhere in "
                    f"config.sharding_rules (e.g. {{{names[dim]!r}: None}}).")


def sharded_init(boxed_init: Callable[..., Any], mesh: Mesh, rules, *args) -> tuple[Any, Any]:
    """Runs `boxed_init(*args)` (returning a tree with logical boxes) directly into its shardings.

    Returns (unboxed state, its shardings).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(boxed_init, *args)
        shardings = mesh_shardings(abstract, mesh, rules)
        check_divisible(abstract, shardings)
        state = jax.jit(lambda *a: nn.unbox(boxed_init(*a)), out_shardings=shardings)(*args)
    return state, shardings


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Leading (batch) dimension split as the activation batch axis is; the rest replicated."""
    spec = nn.logical_to_mesh_axes((axes.ACT_BATCH,), rules)
    return NamedSharding(mesh, P(*spec))


def batch_shards(sharding: NamedSharding) -> int:
    """How many ways `batch_sharding` splits the batch dimension."""
    return _split_counts(sharding.spec, sharding.mesh)[0] if len(sharding.spec) else 1


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

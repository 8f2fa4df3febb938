"""Meshes, logical-axis shardings, sharded init and multi-host start."""
from fintrans.parallel.distributed import initialize
from fintrans.parallel.mesh import MeshError, make_mesh, resolve_sizes
from fintrans.parallel.sharding import (ShardingError, batch_sharding, batch_shards, check_divisible, describe,
                                        global_batch, logical_specs, mesh_shardings, replicated, sharded_init)

__all__ = ["MeshError", "ShardingError", "batch_sharding", "batch_shards", "check_divisible", "describe",
           "global_batch", "initialize", "logical_specs", "make_mesh", "mesh_shardings", "replicated",
           "resolve_sizes", "sharded_init"]

"""Device meshes from config.

A mesh config names a size per mesh axis ('data', 'fsdp', 'tensor'); -1 means 'all the devices
left'. For multi-slice TPU pods, `dcn` gives the sizes across slices (over the data-centre
network) and the plain sizes are within a slice (over ICI):

    mesh = {'data': -1, 'fsdp': 4, 'tensor': 1, 'dcn': {'data': 2}}   # 2 slices, data parallel across them
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from fintrans.axes import MESH_AXES


class MeshError(ValueError):
    """The mesh config does not fit the devices."""


def resolve_sizes(sizes: Mapping[str, int], total: int, what: str = "devices") -> tuple[int, ...]:
    """Per-axis sizes in MESH_AXES order with at most one -1 filled so the product is `total`."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"unknown mesh axis {unknown}; mesh axes are {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise MeshError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    fixed = math.prod(s for s in shape if s != -1)
    if free:
        if total % fixed:
            raise MeshError(f"{total} {what} cannot be split into {dict(zip(MESH_AXES, shape))}")
        shape[free[0]] = total // fixed
    if math.prod(shape) != total:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} {what}, "
                        f"but there are {total}")
    return tuple(shape)


def make_mesh(config: Optional[Mapping[str, Any]] = None, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A Mesh over `devices` (default: all) with axes MESH_AXES and AxisType.Auto.

    Auto axes (not jax.make_mesh's Explicit default) are what linen's logical constraints need.
    """
    config = dict(config or {"data": -1})
    dcn = dict(config.pop("dcn", None) or {})
    devices = list(jax.devices() if devices is None else devices)
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    dcn_shape = resolve_sizes(dcn, num_slices, "slices") if (dcn or num_slices > 1) else (1,) * len(MESH_AXES)
    if math.prod(dcn_shape) != num_slices:
        raise MeshError(f"dcn sizes {dcn} must multiply to the number of slices ({num_slices})")
    ici_shape = resolve_sizes(config, len(devices) // num_slices, "devices per slice")
    if num_slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices=devices,
                                                    allow_split_physical_axes=True)
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici_shape, devices=devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            # Devices with no physical topology (CPU, odd subsets) are laid out in order.
            grid = np.asarray(devices, dtype=object).reshape(ici_shape)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)

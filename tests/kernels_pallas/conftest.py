"""Shared by the kernels' TPU ahead-of-time compile tests."""
from __future__ import annotations

import numpy as np
import pytest
import jax

TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}


@pytest.fixture(scope="module")
def topology():
    """get(chip) -> the devices of that chip's topology (TOPOLOGIES), compiled for on this CPU.

    libtpu loads only here (the GPU machine, which has none, never asks for it) with the
    environment it needs. The persistent compilation cache is off meanwhile: TPU executables
    cannot be loaded back on this CPU-only client, so caching them only warns on later reads."""
    import libtpu  # noqa: F401  (fails loudly without the `tpu` extra, which `make test` installs)
    from jax.experimental import topologies
    from jax.experimental.compilation_cache import compilation_cache
    cache = {}
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # jax decides once per process whether to use the cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_PLATFORMS", "cpu")
        mp.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

        def get(chip):
            if chip not in cache:
                desc = topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[chip])
                cache[chip] = np.array(desc.devices)
            return cache[chip]
        yield get
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()

"""fintrans.layers.dropout: the same masks as flax's nn.Dropout where nothing is split or the bits are
partitionable (threefry), and per-shard bits (never a global-size RngBitGenerator) for 'rbg' keys."""
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import axes
from fintrans.layers.dropout import Dropout, per_shard_dropout

REPO = Path(__file__).resolve().parents[2]


class _Both(nn.Module):
    """A fintrans Dropout and a plain nn.Dropout under the same parent names as in the models."""
    @nn.compact
    def __call__(self, x):
        return (Dropout(0.3, axes=(axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP), name="a")(x, deterministic=False),
                nn.Dropout(0.3, name="b")(x, deterministic=False))


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_one_device_masks_are_flax_dropouts(impl):
    x = jnp.arange(1.0, 1.0 + 4 * 8 * 16).reshape(4, 8, 16)
    key = jax.random.key(3, impl=impl)
    reference = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key}), reference)
    a, b = _Both().apply({}, x, rngs={"dropout": key})
    with per_shard_dropout():
        a2, b2 = _Both().apply({}, x, rngs={"dropout": key})
    for got, want in ((a2, a), (b2, b)):
        np.testing.assert_array_equal(got, want)
    # Same auto-named rng stream as nn.Dropout: the swap changes no model's masks.
    assert Dropout(0.5).name is None and type(Dropout(0.5)).__name__ == nn.Dropout.__name__


def test_deterministic_and_rate_edge_cases():
    x = jnp.ones((2, 3))
    key = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True, rngs=key), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False, rngs=key), x)
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, deterministic=False, rngs=key), jnp.zeros_like(x))


SCRIPT = r'''
import json, math, re
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from fintrans import axes, parallel
from fintrans.layers.dropout import Dropout, per_shard_dropout

mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
spec = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP)
x = jnp.ones((8, 4, 64))
out = {}

def run(impl, plain):
    key = jax.random.key(7, impl=impl)
    layer = nn.Dropout(0.5) if plain else Dropout(0.5, axes=spec)
    def f(x):
        with per_shard_dropout():
            y = layer.apply({}, x, deterministic=False, rngs={"dropout": key})
        return nn.with_logical_constraint(y, spec)
    with jax.set_mesh(mesh), nn.logical_axis_rules(axes.DEFAULT_RULES):
        xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
        compiled = jax.jit(f).lower(xs).compile()
        y = np.asarray(compiled(xs))
    # The CPU compiler expands RngBitGenerator into u32 arithmetic on arrays of the bits drawn.
    drawn = max(math.prod(map(int, s.split(","))) for s in re.findall(r"u32\[([0-9,]+)\]", compiled.as_text()))
    single = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": key}))
    return {"most_bits_drawn": drawn, "equals_single_device": bool((y == single).all()), "kept": float((y != 0).mean()),
            "blocks_differ": bool((y[0:2] != y[2:4]).any() and (y[:, :, :32] != y[:, :, 32:]).any())}

for impl in ("threefry2x32", "rbg"):
    for plain in (False, True):
        out[f"{impl}/{'nn' if plain else 'fintrans'}"] = run(impl, plain)
print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def sharded():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][len("RESULT"):])


def test_threefry_masks_on_a_mesh_are_the_single_device_masks(sharded):
    for name in ("threefry2x32/fintrans", "threefry2x32/nn"):
        assert sharded[name]["equals_single_device"], name


def test_rbg_bits_are_drawn_per_shard(sharded):
    # Global [8, 4, 64] (2048 bits; drawn whole on every device before the fix) split over data x fsdp
    # (4) and, for the MLP layer's axes, tensor (2); a plain nn.Dropout's input over its batch only.
    assert sharded["rbg/fintrans"]["most_bits_drawn"] == 2 * 4 * 32, sharded["rbg/fintrans"]
    assert sharded["rbg/nn"]["most_bits_drawn"] == 2 * 4 * 64, sharded["rbg/nn"]
    for name in ("rbg/fintrans", "rbg/nn"):
        result = sharded[name]
        assert result["blocks_differ"], f"{name}: shards repeat one mask"
        assert 0.4 < result["kept"] < 0.6, result

"""BatchNorm: batch statistics in training (masked, and global under a sharded batch), running
averages by momentum, and the running averages in evaluation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fintrans.layers.norms import BatchNorm

REPO = Path(__file__).resolve().parents[2]


def _init(x, **kw):
    bn = BatchNorm(**kw)
    variables = nn.unbox(bn.init(jax.random.key(0), x, train=False))
    params = {"scale": jnp.linspace(0.5, 2.0, x.shape[-1]), "bias": jnp.linspace(-1.0, 1.0, x.shape[-1])}
    return bn, params, variables["batch_stats"]


def test_training_normalises_by_batch_statistics_and_moves_the_running_averages():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6)).astype(np.float32)
    bn, params, stats = _init(x, momentum=0.8, epsilon=1e-3)
    np.testing.assert_array_equal(stats["mean"], 0.0)
    np.testing.assert_array_equal(stats["var"], 1.0)
    y, updates = bn.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    mean, var = x.mean((0, 1)), x.var((0, 1))
    expected = (x - mean) / np.sqrt(var + 1e-3) * np.asarray(params["scale"]) + np.asarray(params["bias"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.8 + 0.2 * var, rtol=1e-5)
    # Evaluation uses the running averages, not the batch's.
    y_eval = bn.apply({"params": params, **updates}, x, train=False)
    run_mean, run_var = 0.2 * mean, 0.8 + 0.2 * var
    expected = (x - run_mean) / np.sqrt(run_var + 1e-3) * np.asarray(params["scale"]) + np.asarray(params["bias"])
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)


def test_masked_entries_do_not_count():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 7, 4)).astype(np.float32)
    mask = np.arange(7)[None] < np.array([[7], [2], [5]])
    bn, params, stats = _init(x)
    x_garbage = np.where(mask[..., None], x, 1e6).astype(np.float32)
    _, updates = bn.apply({"params": params, "batch_stats": stats}, x_garbage, train=True, mask=mask,
                          mutable=["batch_stats"])
    real = x[mask]
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.01 * real.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.99 + 0.01 * real.var(0), rtol=1e-5)


def test_statistics_are_annotated_with_the_norm_axis():
    x = jnp.ones((2, 3))
    boxed = BatchNorm().init(jax.random.key(0), x, train=False)
    assert jax.tree.map(lambda b: b.names, boxed["batch_stats"],
                        is_leaf=lambda b: hasattr(b, "names")) == {"mean": ("norm",), "var": ("norm",)}


SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from fintrans.layers.norms import BatchNorm
x = np.random.default_rng(0).normal(1.0, 2.0, size=(8, 3, 4)).astype(np.float32)
bn = BatchNorm(momentum=0.5)
import flax.linen as nn
v = nn.unbox(bn.init(jax.random.key(0), x, train=False))
f = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))
mesh = jax.make_mesh((8,), ("data",))
sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
y, up = f(v, sharded)
y1, up1 = f(v, x)
print("RESULT" + json.dumps({"devices": len(y.sharding.device_set),
      "y": float(np.max(np.abs(np.asarray(y) - np.asarray(y1)))),
      "mean": float(np.max(np.abs(np.asarray(up["batch_stats"]["mean"]) - 0.5 * x.mean((0, 1)))))}))
'''


def test_statistics_are_global_over_a_sharded_batch():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][len("RESULT"):])
    assert out["devices"] == 8  # one row per device: per-shard statistics would differ wildly
    assert out["y"] < 1e-5 and out["mean"] < 1e-5

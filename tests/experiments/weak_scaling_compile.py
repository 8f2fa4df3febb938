"""Run as a script (by test_aot.py) with 8 host CPU devices: compiles a tiny lm_chars train step on the
first N devices with the same sequences per batch shard, and prints per-device figures as JSON."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

from experiments import aot  # noqa: E402
from experiments.configs import lm_chars  # noqa: E402


def tiny_lm(num_devices: int, tensor: int, rng_impl: str, per_shard: int = 4):
    c = lm_chars.get_config("runlocal")
    c.data.seq_len = 32
    c.model.embed_dim, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
    c.model.dropout_rate = 0.1
    c.rng_impl = rng_impl
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, num_devices // tensor, tensor
    c.batch_size = per_shard * (num_devices // tensor)
    return c


if __name__ == "__main__":
    rng_impl, tensor, *sizes = sys.argv[1:]
    rows = []
    for n in map(int, sizes):
        report, _, _ = aot.compile_for_devices(tiny_lm(n, int(tensor), rng_impl), jax.devices()[:n], "cpu")
        rows.append({"devices": n, "temp": report.per_device["temp"], "flops": report.flops_per_device})
    print(json.dumps(rows))

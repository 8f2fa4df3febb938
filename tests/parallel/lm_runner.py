"""Trains a tiny character LM through the real trainer and prints what the tests check, as JSON.

Run in a subprocess by the tests of this folder (the device count must be fixed before jax starts):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu FINTRANS_DATA_DIR=DIR \
        python tests/parallel/lm_runner.py '{"workdir": "...", "mesh": {"data": 2, "fsdp": 2, "tensor": 2}}'

Spec keys: workdir, mesh ({data, fsdp, tensor}), steps (10), distributed (optional: coordinator_address,
num_processes, process_id; the runner joins the job through fintrans.parallel.initialize with gloo CPU
collectives before the trainer starts, so config.multihost stays False), params (optional: parameter
paths, '/'-joined, whose sharding to describe). The last stdout line is `RESULT <json>`.

The trainer writes metrics.jsonl on process 0 only; to compare every process's losses the runner
also records each MetricWriter.write call on its own process (the values the trainer computed and
fetched there), without changing what the trainer does.
"""
from __future__ import annotations

import json
import os
import sys

RESULT_PREFIX = "RESULT "


def tiny_config(spec: dict):
    from experiments.configs import lm_chars
    from fintrans.train.config import model_fields

    c = lm_chars.get_config("runlocal")
    c.data.seq_len = 32
    c.data.data_dir = os.environ["FINTRANS_DATA_DIR"]
    c.data.prepare = False  # the parent test built it; processes must never build concurrently
    # Every sharded dimension divides 2: heads 4 and kv heads 2 over 'tensor', width 32 over 'fsdp'.
    c.model = model_fields("decoder_lm", vocab_size=128, max_len=32, embed_dim=32, num_layers=2, num_heads=4,
                           num_kv_heads=2, mlp_dim=64, activation="silu", glu=True, dropout_rate=0.1)
    c.batch_size = 8
    c.eval_batch_size = 8
    c.total_steps = int(spec.get("steps", 10))
    c.optimizer.warmup_steps = 2  # a real learning rate from step 2, so the losses move
    c.log_every = 1
    c.eval_every = 0
    c.eval_batches = 1
    c.checkpoint_every = 0  # the final step still saves
    c.progress_bar = False
    c.sample.prompt_len = 8
    c.sample.num_tokens = 4
    for axis, size in spec["mesh"].items():
        c.mesh[axis] = size
    return c


def _describe(arr) -> dict:
    """How one global array is laid out over the devices (this process's view)."""
    shards = arr.addressable_shards
    return {
        "shape": list(arr.shape),
        "spec": [list(p) if isinstance(p, tuple) else p for p in arr.sharding.spec],
        "shard_shapes": sorted({tuple(s.data.shape) for s in shards}),
        "num_addressable_shards": len(shards),
        # Distinct blocks held here (replicas over an axis the array is not split on hold the same block).
        "distinct_indices": len({tuple((i.start, i.stop) for i in s.index) for s in shards}),
        "shard_nbytes": sorted({int(s.data.nbytes) for s in shards}),
        "nbytes": int(arr.nbytes),
        "fully_addressable": bool(arr.is_fully_addressable),
    }


def main(spec: dict) -> dict:
    # tensorboardX imports torch whenever it is installed (the parity-test extra), 3-5 s per start;
    # the trainer never needs it. None in sys.modules makes that optional import fail as on a plain install.
    sys.modules.setdefault("torch", None)

    import jax

    from fintrans import parallel

    dist = spec.get("distributed")
    if dist:
        parallel.initialize(True, coordinator_address=dist["coordinator_address"],
                            num_processes=dist["num_processes"], process_id=dist["process_id"],
                            cpu_collectives="gloo")

    import jax.numpy as jnp
    from flax import traverse_util

    from fintrans.train import metrics as metrics_lib
    from fintrans.train import train_and_evaluate

    recorded: list[tuple[int, dict]] = []
    original_write = metrics_lib.MetricWriter.write

    def recording_write(self, step, scalars):
        recorded.append((int(step), {k: float(v) for k, v in scalars.items()}))
        return original_write(self, step, scalars)

    metrics_lib.MetricWriter.write = recording_write

    config = tiny_config(spec)
    results = train_and_evaluate(config, spec["workdir"])
    state = results["state"]

    losses = {str(s): m["train/loss"] for s, m in recorded if "train/loss" in m}
    # Per-leaf sums of squares of the final parameters: replicated scalars every process can read.
    flat = traverse_util.flatten_dict(state.params, sep="/")
    norms = jax.jit(lambda t: {k: jnp.sum(jnp.square(v.astype(jnp.float32))) for k, v in t.items()})(flat)
    out = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "mesh": {k: int(v) for k, v in jax.tree.leaves(state.params)[0].sharding.mesh.shape.items()},
        "step": int(results["step"]),
        "losses": losses,
        "eval": results.get("eval", {}),
        "param_sq_norms": {k: float(v) for k, v in jax.device_get(norms).items()},
        "sample": results.get("sample"),
        "shardings": {},
    }
    for path in spec.get("params", []):
        out["shardings"][path] = _describe(flat[path])
        mu = _find_adam_moment(state.opt_state, path)
        if mu is not None:
            out["shardings"]["opt_state.mu:" + path] = _describe(mu)
    return out


def _find_adam_moment(opt_state, path: str):
    """The first-moment leaf of `path` in an optax state, if the optimizer keeps one."""
    import jax
    from flax import traverse_util

    for node in jax.tree.leaves(opt_state, is_leaf=lambda n: hasattr(n, "mu")):
        if hasattr(node, "mu"):
            return traverse_util.flatten_dict(node.mu, sep="/").get(path)
    return None


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)

"""Compile an experiment's sharded init and train step for a TPU topology, on any machine.

    python -m experiments.aot --config=experiments/configs/lm_chars.py --topology=v5p:4x4x4 [--num_slices=2]

Needs libtpu (`pip install -e .[tpu]`); no TPU is used. Builds the config's mesh on the
topology's devices, AOT-compiles init and train step, and prints per-device memory
(compiled.memory_analysis()), FLOPs and bytes (cost_analysis()) and whether the step fits the
chip's HBM. A config whose shardings, shapes or kernels the TPU compiler rejects fails here the
way it would on the pod.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from jax.experimental import topologies
from jax.experimental.compilation_cache import compilation_cache
from ml_collections import config_flags

from fintrans import parallel
from fintrans.train import Trainer

# Compiling needs libtpu but no TPU; without this, two compiling processes (or a killed one that
# left its lock behind) make libtpu refuse to load.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

GiB = 1 << 30
# High-bandwidth memory per chip, by topology name prefix.
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5litepod": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}


@dataclasses.dataclass
class CompileReport:
    topology: str
    num_slices: int
    num_devices: int
    device_kind: str
    mesh: dict
    per_device: dict  # memory_analysis figures of the train step, bytes
    init_per_device: dict
    flops_per_device: float
    bytes_accessed_per_device: float
    hbm_bytes: Optional[int]
    peak_bytes: int
    fits: Optional[bool]
    # XLA's cost analysis counts a while loop's body once, so with loops in the step (scanned layers,
    # collective matmuls overlapping FSDP's all-gathers) flops_per_device is a lower bound.
    while_loops: int = 0
    step_compile_seconds: float = 0.0  # lowering and compiling the train step alone

    def table(self) -> str:
        gib = lambda b: f"{b / GiB:8.3f} GiB"
        rows = [
            f"{self.num_devices} x {self.device_kind} ({self.topology}, {self.num_slices} slice(s)), mesh {self.mesh}",
            f"  train step, per device: arguments {gib(self.per_device['argument'])}, outputs "
            f"{gib(self.per_device['output'])}, aliased (donated) {gib(self.per_device['alias'])}, "
            f"temporaries {gib(self.per_device['temp'])}, code {gib(self.per_device['generated_code'])}",
            f"  init, per device: outputs {gib(self.init_per_device['output'])}, temporaries "
            f"{gib(self.init_per_device['temp'])}",
            f"  FLOPs per device per step {self.flops_per_device:.4g}; bytes accessed {self.bytes_accessed_per_device:.4g}"
            + (f" (lower bounds: XLA counts each of the step's {self.while_loops} while loops once)"
               if self.while_loops else ""),
        ]
        if self.hbm_bytes:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            rows.append(f"  peak {gib(self.peak_bytes)} of {gib(self.hbm_bytes)} HBM per chip: {verdict}")
        return "\n".join(rows)


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
            "temp": m.temp_size_in_bytes, "generated_code": m.generated_code_size_in_bytes}


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _strip_boxes(tree):
    """Unboxes logical-axis metadata without nn.unbox's sharding constraint (which would run eagerly)."""
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def topology_devices(topology: str, num_slices: int = 1) -> list:
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices)
    return list(topo.devices)


@contextlib.contextmanager
def _without_persistent_cache():
    """TPU executables compiled on a machine without a TPU cannot be loaded back, so they must not
    land in a persistent compilation cache (JAX_COMPILATION_CACHE_DIR) that later runs read."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # jax decides once per process whether to use the cache
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def compile_for_topology(config, topology: str, num_slices: int = 1) -> tuple[CompileReport, Any, Any]:
    """AOT-compiles `config`'s init and train step; returns (report, compiled init, compiled step)."""
    return compile_for_devices(config, topology_devices(topology, num_slices), topology, num_slices)


def compile_for_devices(config, devices: list, topology: str, num_slices: int = 1) -> tuple[CompileReport, Any, Any]:
    """compile_for_topology on any devices (a TPU topology's, or this machine's CPU devices)."""
    trainer = Trainer(config, None, devices=devices)
    example = trainer.example_batch()
    boxed_init = trainer.boxed_init_fn(example)
    mesh, rules = trainer.mesh, trainer.rules
    with _without_persistent_cache(), jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract_boxed = jax.eval_shape(boxed_init, trainer.init_rng)
        shardings = parallel.mesh_shardings(abstract_boxed, mesh, rules)
        parallel.check_divisible(abstract_boxed, shardings)
        rng_spec = jax.ShapeDtypeStruct(trainer.init_rng.shape, trainer.init_rng.dtype,
                                        sharding=parallel.replicated(mesh))
        init = jax.jit(lambda r: nn.unbox(boxed_init(r)), out_shardings=shardings).lower(rng_spec).compile()
        abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      _strip_boxes(abstract_boxed), shardings)
        batch = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:], v.dtype, sharding=trainer.batch_sharding)
                 for k, v in example.items()}
        start = time.perf_counter()
        step = trainer.make_train_step(shardings).lower(abstract_state, batch).compile()
        step_seconds = time.perf_counter() - start
    mem, init_mem, cost = _memory(step), _memory(init), _cost(step)
    prefix = topology.split(":")[0]
    hbm = HBM_BYTES.get(prefix)
    peak = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    report = CompileReport(
        topology=topology, num_slices=num_slices, num_devices=len(devices), device_kind=devices[0].device_kind,
        mesh=dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))), per_device=mem,
        init_per_device=init_mem, flops_per_device=float(cost.get("flops", np.nan)),
        bytes_accessed_per_device=float(cost.get("bytes accessed", np.nan)), hbm_bytes=hbm, peak_bytes=peak,
        fits=None if hbm is None else peak <= hbm, while_loops=step.as_text().count(" while("),
        step_compile_seconds=step_seconds)
    return report, init, step


FLAGS = flags.FLAGS


def _define_flags():
    """Defined only when run as a script: absl flags are process-global, so defining `config` at import
    would clash with experiments.main's (DuplicateFlagError) in any process that imports both."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v4:2x2x2, v5e:4x4, v5p:4x4x4, v6e:8x8.")
    flags.DEFINE_integer("num_slices", 1, "Number of slices (multi-slice over DCN; set config.mesh.dcn).")
    flags.DEFINE_string("json", None, "Also write the report to this JSON file.")
    flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    report, _, _ = compile_for_topology(FLAGS.config, FLAGS.topology, FLAGS.num_slices)
    print(report.table())
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(dataclasses.asdict(report), f, indent=2)


if __name__ == "__main__":
    _define_flags()
    app.run(main)

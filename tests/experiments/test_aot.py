"""experiments/aot.py: AOT-compile an experiment's sharded init and train step for a TPU topology on
this CPU machine (libtpu from the `tpu` extra; no TPU is used).

Each compile takes 20-30 s on two cores, so there are three: one slice with fsdp and tensor
parallelism (checking the report and that the compiled step really splits the weights), two slices
over DCN, and the command line.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jax
import libtpu  # noqa: F401  (fails loudly without the `tpu` extra, which `make test` installs)
from jax.sharding import PartitionSpec as P

from experiments import aot
from experiments.configs import lm_chars

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = "v5e:2x2"
DEVICE_KIND = "TPU v5 lite"
GiB = 1 << 30


@pytest.fixture
def aot_env(tmp_path, monkeypatch):
    """Datasets built in a fresh directory; libtpu may load while other processes (pytest-xdist
    workers, the CLI subprocess) hold it too. Set before libtpu first loads in this process."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    monkeypatch.setenv("FINTRANS_DATA_DIR", str(tmp_path / "tfds"))
    return tmp_path


def lm_config(data=1, fsdp=2, tensor=2, dcn_data=1):
    c = lm_chars.get_config("runlocal")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.dcn.data = data, fsdp, tensor, dcn_data
    return c


def _check_report(report, *, num_devices, num_slices, mesh):
    assert report.topology == TOPOLOGY
    assert report.num_slices == num_slices
    assert report.num_devices == num_devices
    assert report.device_kind == DEVICE_KIND
    assert report.mesh == mesh
    for key in ("argument", "output", "temp", "generated_code"):
        assert report.per_device[key] > 0, (key, report.per_device)
    assert report.per_device["alias"] > 0, "the train step must donate (alias) the state"
    assert report.init_per_device["output"] > 0
    assert report.flops_per_device > 0 and math.isfinite(report.flops_per_device)
    assert report.bytes_accessed_per_device > 0
    assert report.hbm_bytes == 16 * GiB
    assert 0 < report.peak_bytes < report.hbm_bytes
    assert report.fits is True


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def test_lm_compiles_for_v5e_with_fsdp_and_tensor(aot_env):
    report, init, step = aot.compile_for_topology(lm_config(), TOPOLOGY)
    _check_report(report, num_devices=4, num_slices=1, mesh={"data": 1, "fsdp": 2, "tensor": 2})

    # The compiled step's own view of its arguments: global shapes and the shardings it was built for.
    (state_info, batch_info), _ = step.args_info
    (state_shardings, batch_shardings), _ = step.input_shardings
    assert all(info.donated for info in jax.tree.leaves(state_info))
    devices = state_shardings.step.mesh.devices
    assert devices.shape == (1, 2, 2) and {d.platform for d in devices.flat} == {"tpu"}

    shapes = {_path(p): i.shape for p, i in jax.tree_util.tree_flatten_with_path(state_info.params)[0]}
    shards = {_path(p): s.shard_shape(shapes[_path(p)])
              for p, s in jax.tree_util.tree_flatten_with_path(state_shardings.params)[0]}
    # Every weight matrix is split four ways (fsdp x tensor); only norm scales are replicated.
    for name, shape in shapes.items():
        split = math.prod(shape) // math.prod(shards[name])
        if len(shape) >= 2:
            assert split == 4, f"{name}: global {shape} but per-device shard {shards[name]}"
        else:
            assert "norm" in name, f"{name}: unexpected 1-d parameter {shape}"
    # Megatron layout for the GLU MLP: embed over fsdp, hidden over tensor, and the reverse for wo.
    block = "block_0/mlp"
    assert state_shardings.params["block_0"]["mlp"]["wi"]["kernel"].spec == P("fsdp", "tensor")
    assert state_shardings.params["block_0"]["mlp"]["wo"]["kernel"].spec == P("tensor", "fsdp")
    assert shards[f"{block}/wi/kernel"] == (shapes[f"{block}/wi/kernel"][0] // 2, shapes[f"{block}/wi/kernel"][1] // 2)

    # The optimizer state is sharded like the parameters, so the whole state per device is about a
    # quarter of its global size; the compiled memory report sees the same.
    def nbytes(tree, per_device):
        total = 0
        for info, sharding in zip(jax.tree.leaves(tree[0]), jax.tree.leaves(tree[1])):
            shape = sharding.shard_shape(info.shape) if per_device else info.shape
            total += math.prod(shape) * info.dtype.itemsize
        return total
    global_bytes = nbytes((state_info, state_shardings), per_device=False)
    device_bytes = nbytes((state_info, state_shardings), per_device=True)
    assert device_bytes < 0.3 * global_bytes, (device_bytes, global_bytes)
    assert report.per_device["argument"] < 0.5 * global_bytes, (report.per_device, global_bytes)
    # The batch is split over data x fsdp.
    assert batch_shardings["inputs"].spec == P(("data", "fsdp"))

    # The compiled init produces exactly the shardings the step takes.
    init_params = init.output_shardings.params
    assert jax.tree.map(lambda s: s.spec, init_params) == jax.tree.map(lambda s: s.spec, state_shardings.params)


def test_lm_compiles_for_two_v5e_slices(aot_env):
    report, _, step = aot.compile_for_topology(lm_config(dcn_data=2), TOPOLOGY, num_slices=2)
    _check_report(report, num_devices=8, num_slices=2, mesh={"data": 2, "fsdp": 2, "tensor": 2})
    (state_shardings, _), _ = step.input_shardings
    mesh = state_shardings.step.mesh
    # 'data' is the DCN axis: each of its rows is one whole slice; fsdp and tensor stay inside a slice.
    assert mesh.devices.shape == (2, 2, 2)
    for i in range(2):
        assert {d.slice_index for d in mesh.devices[i].flat} == {i}
    assert len({d.id for d in mesh.devices.flat}) == 8


def test_aot_command_line(aot_env):
    out = aot_env / "report.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
           "FINTRANS_DATA_DIR": str(aot_env / "tfds"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "experiments.aot", "--config=experiments/configs/lm_chars.py:runlocal",
           f"--topology={TOPOLOGY}", "--config.mesh.fsdp=2", "--config.mesh.data=1", "--config.mesh.tensor=2",
           f"--json={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    table = proc.stdout
    assert f"4 x {DEVICE_KIND} ({TOPOLOGY}, 1 slice(s)), mesh {{'data': 1, 'fsdp': 2, 'tensor': 2}}" in table, table
    for phrase in ("train step, per device: arguments", "init, per device: outputs", "FLOPs per device per step",
                   "HBM per chip: fits"):
        assert phrase in table, f"{phrase!r} missing from:\n{table}"

    report = json.loads(out.read_text())
    assert report["num_devices"] == 4 and report["device_kind"] == DEVICE_KIND
    assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert report["fits"] is True and report["flops_per_device"] > 0
    assert all(report["per_device"][k] > 0 for k in ("argument", "output", "alias", "temp"))
    assert f"{report['flops_per_device']:.4g}" in table


def test_shardings_that_do_not_divide_are_named_before_compiling(aot_env):
    from fintrans.models import ConfigError
    from fintrans.parallel import ShardingError

    with pytest.raises(ShardingError, match=r"\['key'\]\['kernel'\].*'kv_heads', size 2\) would be split 4 ways"):
        aot.compile_for_topology(lm_config(data=1, fsdp=1, tensor=4), TOPOLOGY)
    c = lm_config(data=1, fsdp=4, tensor=1)
    c.batch_size = 6
    with pytest.raises(ConfigError, match=r"batch_size=6 cannot be split over the 4 batch shards"):
        aot.compile_for_topology(c, TOPOLOGY)


def test_lm_with_pallas_attention_runs_the_kernel_per_shard(aot_env):
    """attention_impl='pallas_tpu' in a sharded train step: Mosaic accepts the kernels, and each
    device's kernel call sees only its batch shard (fsdp=2) and head shard (tensor=2). Without
    shard_map XLA would gather the whole batch and every head onto every chip."""
    config = lm_config()
    config.model.attention_impl = "pallas_tpu"
    report, _, step = aot.compile_for_topology(config, TOPOLOGY)
    assert report.fits is True
    kernels = [line for line in step.as_text().splitlines() if 'custom_call_target="tpu_custom_call"' in line]
    # Per layer: the forward, then dq and dk/dv in the backward.
    assert len(kernels) == 3 * config.model.num_layers, len(kernels)
    # The first result of every call: [batch, heads, length, head_dim] where the kernel transposes,
    # [batch, length, heads * head_dim] where it works in place (one head here: k/v's dk, dv).
    head_dim = config.model.embed_dim // config.model.num_heads
    shapes = [[int(x) for x in re.search(r"= \(?\w+\[([\d,]+)\]", line).group(1).split(",")]
              for line in kernels]
    heads = {dims[1] if len(dims) == 4 else dims[2] // head_dim for dims in shapes}
    assert {dims[0] for dims in shapes} == {config.batch_size // 2}, shapes
    assert heads <= {config.model.num_heads // 2, config.model.num_kv_heads // 2}, shapes


def test_per_device_memory_and_flops_stay_flat_under_weak_scaling(aot_env):
    """The same sequences per batch shard on 2 and 8 (CPU) devices, with dropout and 'rbg' keys, whose
    RngBitGenerator XLA cannot partition: before fintrans.layers.dropout every device drew the whole
    global mask (temporaries 1.6x and FLOPs 1.3x larger on 8 devices than on 2)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.experiments.weak_scaling_compile", "rbg", "1", "2", "8"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-5000:]
    small, large = json.loads(proc.stdout.strip().splitlines()[-1])
    assert large["temp"] <= 1.02 * small["temp"], (small, large)
    assert large["flops"] <= 1.02 * small["flops"], (small, large)


@pytest.mark.parametrize("size, low, high", [("125M", 100e6, 150e6), ("1B", 0.9e9, 1.1e9)])
def test_aot_table_sizes_have_the_parameters_they_claim(size, low, high):
    """experiments.aot_table's parameter count (which its model FLOPs use) is the model's own."""
    from experiments import aot_table
    from fintrans.train import build_model

    row = next(r for r in aot_table.rows() if r.group == "sizes" and r.name == size and not r.scan)
    config = aot_table.config_for(row)
    model, _ = build_model(config, {"vocab_size": config.model.vocab_size})
    tokens = jax.ShapeDtypeStruct((1, config.data.seq_len), jax.numpy.int32)
    shapes = jax.eval_shape(lambda t: model.init(jax.random.key(0), {"inputs": t}), tokens)["params"]
    actual = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert aot_table.parameter_count(config) == actual
    assert low < actual < high, actual

"""Two local processes joined by jax.distributed (gloo CPU collectives over 127.0.0.1), 2 CPU devices each.

Each process runs the real trainer (per-host batches through make_array_from_process_local_data,
the jitted sharded step, orbax saving to one shared workdir) on a data=1 x fsdp=2 x tensor=2 mesh
over the 4 global devices, so the parameters and their gradients are split across the two
processes. A single process with 4 devices, same mesh and same global batch, is the reference.
"""
import math

import numpy as np
import pytest

from fintrans.train import read_metrics
from .parallel_procs import Run, free_port, run_all

STEPS = 10
MESH = {"data": 1, "fsdp": 2, "tensor": 2}
PARAMS = ["block_0/mlp/wi/kernel", "token_embed/embedding"]


@pytest.fixture(scope="module")
def runs(chars_data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiprocess")
    shared, single = tmp / "two_processes", tmp / "one_process"
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        Run(f"process_{i}", {"workdir": str(shared), "mesh": MESH, "steps": STEPS, "params": PARAMS,
                             "distributed": {"coordinator_address": coordinator, "num_processes": 2,
                                             "process_id": i}},
            devices=2, data_dir=chars_data_dir, logdir=tmp)
        for i in range(2)
    ]
    procs.append(Run("one_process_4_devices", {"workdir": str(single), "mesh": MESH, "steps": STEPS,
                                               "params": PARAMS},
                     devices=4, data_dir=chars_data_dir, logdir=tmp))
    p0, p1, ref = run_all(procs)
    return {"p0": p0, "p1": p1, "ref": ref, "shared": shared, "single": single}


def _losses(result):
    return [result["losses"][str(s)] for s in range(1, STEPS + 1)]


def test_processes_joined_one_job(runs):
    for i in (0, 1):
        r = runs[f"p{i}"]
        assert r["process_index"] == i
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 4, 2)
        assert r["mesh"] == MESH and r["step"] == STEPS
    ref = runs["ref"]
    assert (ref["process_count"], ref["device_count"]) == (1, 4)


def test_both_processes_report_identical_losses(runs):
    p0, p1 = _losses(runs["p0"]), _losses(runs["p1"])
    assert all(math.isfinite(x) for x in p0)
    assert p0 == p1  # one replicated value per step, read by each process from its own devices


def test_losses_match_a_single_process_on_the_same_global_batch(runs):
    ref = _losses(runs["ref"])
    np.testing.assert_allclose(_losses(runs["p0"]), ref, rtol=1e-4)
    assert ref[0] - min(ref) > 0.1  # training moved the loss far beyond the tolerance


def test_final_parameters_and_evaluation_match(runs):
    p0, p1, ref = runs["p0"], runs["p1"], runs["ref"]
    assert p0["param_sq_norms"] == p1["param_sq_norms"]
    for name, value in ref["param_sq_norms"].items():
        np.testing.assert_allclose(p0["param_sq_norms"][name], value, rtol=1e-4, err_msg=name)
    assert p0["eval"] == p1["eval"]
    np.testing.assert_allclose(p0["eval"]["eval/loss"], ref["eval"]["eval/loss"], rtol=1e-4)


def test_samples_agree_across_processes(runs):
    """The generated sample is one computation over all devices: every process must see the same prompt."""
    assert runs["p0"]["sample"] == runs["p1"]["sample"] == runs["ref"]["sample"]


@pytest.mark.parametrize("name, spec", [("block_0/mlp/wi/kernel", ["fsdp", "tensor"]),
                                        ("token_embed/embedding", ["tensor", "fsdp"])])
def test_weights_are_split_across_the_processes(runs, name, spec):
    for i in (0, 1):
        facts = runs[f"p{i}"]["shardings"][name]
        assert facts["spec"] == spec
        assert not facts["fully_addressable"]  # the other half lives in the other process
        assert facts["num_addressable_shards"] == facts["distinct_indices"] == 2
        assert facts["shard_nbytes"] == [facts["nbytes"] // 4]
        moment = runs[f"p{i}"]["shardings"]["opt_state.mu:" + name]
        assert moment["spec"] == spec and moment["shard_shapes"] == facts["shard_shapes"]


def test_only_process_zero_writes_metrics(runs):
    rows = read_metrics(runs["shared"])
    train = [r for r in rows if "train/loss" in r]
    # One line per step: a second writer would have duplicated them in the shared workdir.
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert [r["train/loss"] for r in train] == pytest.approx(_losses(runs["p0"]), rel=1e-6)
    assert [r["step"] for r in rows if "eval/loss" in r] == [STEPS]


def test_the_final_checkpoint_is_complete(runs):
    """Both processes saved into the shared workdir; orbax finalised one step-10 checkpoint, no temporaries."""
    root = runs["shared"] / "checkpoints"
    entries = sorted(p.name for p in root.iterdir())
    assert entries == [str(STEPS)], entries
    step = root / str(STEPS)
    assert (step / "state").is_dir() and (step / "data").is_dir()
    assert not [p for p in step.rglob("*") if "tmp" in p.name.lower()]

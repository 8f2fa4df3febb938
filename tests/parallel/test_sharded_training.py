"""The trainer on 8 (forced host) devices, mesh data=2 x fsdp=2 x tensor=2, against one device.

Both runs train the same tiny character LM (dropout on) for 10 steps through
fintrans.train.train_and_evaluate in subprocesses (the device count is fixed before jax starts).
Splitting the batch, the parameters and the optimiser state must not change the numbers, and the
large weights must really be split.
"""
import math

import numpy as np
import pytest

from fintrans.train import read_metrics
from .parallel_procs import Run, run_all

STEPS = 10
MESH_8 = {"data": 2, "fsdp": 2, "tensor": 2}
PARAMS = ["token_embed/embedding", "block_0/mlp/wi/kernel", "block_0/mlp/wo/kernel", "block_1/mlp/wi_gate/kernel",
          "block_0/attention/query/kernel", "block_0/attention/key/kernel", "block_0/attention/out/kernel",
          "final_norm/scale"]


@pytest.fixture(scope="module")
def runs(chars_data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded_training")
    workdirs = {"one": tmp / "one_device", "eight": tmp / "eight_devices"}
    procs = [
        Run("one_device", {"workdir": str(workdirs["one"]), "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
                           "steps": STEPS}, devices=1, data_dir=chars_data_dir, logdir=tmp),
        Run("eight_devices", {"workdir": str(workdirs["eight"]), "mesh": MESH_8, "steps": STEPS, "params": PARAMS},
            devices=8, data_dir=chars_data_dir, logdir=tmp),
    ]
    one, eight = run_all(procs)
    return {"one": one, "eight": eight, "workdirs": workdirs}


def _losses(result):
    return [result["losses"][str(s)] for s in range(1, STEPS + 1)]


def test_runs_use_the_meshes_asked_for(runs):
    one, eight = runs["one"], runs["eight"]
    assert (one["device_count"], one["process_count"]) == (1, 1)
    assert one["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert (eight["device_count"], eight["process_count"]) == (8, 1)
    assert eight["mesh"] == MESH_8
    assert one["step"] == eight["step"] == STEPS


def test_losses_match_one_device_at_every_step(runs):
    one, eight = _losses(runs["one"]), _losses(runs["eight"])
    assert all(math.isfinite(x) for x in one + eight)
    np.testing.assert_allclose(eight, one, rtol=1e-4)
    # The comparison means something: training moved the loss well beyond the tolerance.
    assert one[0] - min(one) > 0.1


def test_metrics_file_holds_the_same_losses(runs):
    """metrics.jsonl (what a user reads) has one train/loss per step, equal to what the trainer computed."""
    for key in ("one", "eight"):
        rows = [r for r in read_metrics(runs["workdirs"][key]) if "train/loss" in r]
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        np.testing.assert_allclose([r["train/loss"] for r in rows], _losses(runs[key]), rtol=1e-6)


def test_final_parameters_and_evaluation_match_one_device(runs):
    one, eight = runs["one"], runs["eight"]
    assert one["param_sq_norms"].keys() == eight["param_sq_norms"].keys()
    for name, value in one["param_sq_norms"].items():
        np.testing.assert_allclose(eight["param_sq_norms"][name], value, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(eight["eval"]["eval/loss"], one["eval"]["eval/loss"], rtol=1e-4)
    assert eight["sample"] == one["sample"]


def _check_split(facts, spec, parts):
    """`facts` (lm_runner's description of one array): split by `spec`, each device holding 1/parts."""
    assert facts["spec"] == spec
    assert facts["fully_addressable"] and facts["num_addressable_shards"] == 8
    expected = [s // p for s, p in zip(facts["shape"], _parts_per_dim(spec))]
    assert facts["shard_shapes"] == [expected], facts
    assert math.prod(facts["shape"]) == parts * math.prod(expected)
    assert facts["shard_nbytes"] == [facts["nbytes"] // parts]
    # 8 devices, `parts` distinct blocks: the rest are replicas (over 'data', which splits only the batch).
    assert facts["distinct_indices"] == parts


def _parts_per_dim(spec):
    return [1 if axis is None else math.prod(MESH_8[a] for a in ([axis] if isinstance(axis, str) else axis))
            for axis in spec]


@pytest.mark.parametrize("name, spec", [
    ("block_0/mlp/wi/kernel", ["fsdp", "tensor"]),  # [embed, mlp]
    ("block_1/mlp/wi_gate/kernel", ["fsdp", "tensor"]),
    ("block_0/mlp/wo/kernel", ["tensor", "fsdp"]),  # [mlp, embed]
    ("token_embed/embedding", ["tensor", "fsdp"]),  # [vocab, embed]
])
def test_large_weights_are_split_four_ways(runs, name, spec):
    _check_split(runs["eight"]["shardings"][name], spec, parts=4)


@pytest.mark.parametrize("name, spec", [
    ("block_0/attention/query/kernel", ["fsdp", "tensor", None]),  # [embed, heads, head_dim]
    ("block_0/attention/key/kernel", ["fsdp", "tensor", None]),  # [embed, kv_heads, head_dim]
    ("block_0/attention/out/kernel", ["tensor", None, "fsdp"]),  # [heads, head_dim, embed]
])
def test_attention_weights_are_split_over_heads_and_embed(runs, name, spec):
    _check_split(runs["eight"]["shardings"][name], spec, parts=4)


@pytest.mark.parametrize("name", ["block_0/mlp/wi/kernel", "token_embed/embedding"])
def test_optimizer_state_is_split_like_its_parameter(runs, name):
    """FSDP: Adam's moments are stored split exactly as the parameter is, not replicated."""
    shardings = runs["eight"]["shardings"]
    moment = shardings["opt_state.mu:" + name]
    assert moment["spec"] == shardings[name]["spec"]
    assert moment["shard_shapes"] == shardings[name]["shard_shapes"]
    assert moment["distinct_indices"] == 4


def test_norm_scales_are_replicated(runs):
    facts = runs["eight"]["shardings"]["final_norm/scale"]
    assert all(axis is None for axis in facts["spec"])
    assert facts["shard_shapes"] == [facts["shape"]] and facts["distinct_indices"] == 1

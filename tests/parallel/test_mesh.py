"""Mesh sizes, meshes and logical-axis rules: pure functions and one-device meshes, in process."""
import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from fintrans import axes, parallel
from fintrans.parallel import MeshError, resolve_sizes


# -- resolve_sizes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes, total, expected", [
    ({"data": -1}, 8, (8, 1, 1)),
    ({"data": -1, "fsdp": 2, "tensor": 2}, 8, (2, 2, 2)),
    ({"data": 2, "fsdp": -1, "tensor": 1}, 8, (2, 4, 1)),
    ({"tensor": -1, "data": 2}, 8, (2, 1, 4)),  # axes missing from the config default to 1
    ({"data": 1, "fsdp": 1, "tensor": -1}, 1, (1, 1, 1)),
    ({}, 1, (1, 1, 1)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, 8, (2, 2, 2)),  # no -1: the product must match exactly
])
def test_resolve_sizes_fills_the_free_axis(sizes, total, expected):
    assert resolve_sizes(sizes, total) == expected
    assert len(expected) == len(axes.MESH_AXES)


def test_resolve_sizes_rejects_two_free_axes():
    with pytest.raises(MeshError, match="only one mesh axis may be -1"):
        resolve_sizes({"data": -1, "fsdp": -1}, 8)


@pytest.mark.parametrize("sizes, total", [
    ({"data": -1, "fsdp": 3}, 8),  # 8 devices cannot be split into fsdp=3
    ({"data": 2, "fsdp": 2, "tensor": 2}, 4),  # asks for 8, there are 4
    ({"data": 4}, 8),  # no free axis and 4 != 8
])
def test_resolve_sizes_rejects_sizes_that_do_not_fit(sizes, total):
    with pytest.raises(MeshError) as info:
        resolve_sizes(sizes, total)
    message = str(info.value)
    # The message names the mesh it could not build (every axis with its size) and the device count.
    for axis in axes.MESH_AXES:
        assert f"'{axis}'" in message
    assert str(total) in message and "devices" in message


def test_resolve_sizes_names_what_is_counted():
    with pytest.raises(MeshError, match="slices"):
        resolve_sizes({"data": 3}, 2, "slices")


@pytest.mark.parametrize("bad", [0, -2])
def test_resolve_sizes_rejects_non_positive_sizes(bad):
    with pytest.raises(MeshError, match="positive or -1"):
        resolve_sizes({"fsdp": bad}, 8)


def test_resolve_sizes_rejects_unknown_axis_naming_valid_ones():
    with pytest.raises(MeshError) as info:
        resolve_sizes({"data": -1, "model": 2}, 8)
    message = str(info.value)
    assert "'model'" in message
    for axis in axes.MESH_AXES:
        assert axis in message


def test_mesh_error_is_a_value_error():
    assert issubclass(MeshError, ValueError)


# -- make_mesh on this process's devices ---------------------------------------------------------------
def test_make_mesh_one_device_has_all_axes_auto():
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "dcn": {"data": 1}}, devices=jax.devices()[:1])
    assert mesh.axis_names == axes.MESH_AXES
    assert tuple(mesh.devices.shape) == (1, 1, 1)
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_make_mesh_rejects_sizes_that_do_not_fit_the_devices():
    with pytest.raises(MeshError, match="needs 2 devices per slice"):
        parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 1}, devices=jax.devices()[:1])


def test_make_mesh_rejects_dcn_sizes_that_do_not_match_the_slices():
    # CPU devices form one slice: asking for 2 slices along 'data' must fail.
    with pytest.raises(MeshError, match="slices"):
        parallel.make_mesh({"data": -1, "dcn": {"data": 2}}, devices=jax.devices()[:1])


# -- logical-axis rules --------------------------------------------------------------------------------
def test_default_rules_cover_every_logical_axis_once():
    names = [name for name, _ in axes.DEFAULT_RULES]
    assert len(names) == len(set(names))
    for name, target in axes.DEFAULT_RULES:
        for axis in (target if isinstance(target, tuple) else (target,)):
            assert axis is None or axis in axes.MESH_AXES, (name, target)
    assert axes.rules() is axes.DEFAULT_RULES
    assert axes.rules({}) is axes.DEFAULT_RULES


def test_rule_overrides_come_first_and_replace_the_default():
    rules = axes.rules({axes.EMBED: None, axes.MLP: [axes.FSDP, axes.TENSOR]})
    assert rules[0] == (axes.EMBED, None)
    assert rules[1] == (axes.MLP, (axes.FSDP, axes.TENSOR))  # lists become tuples (hashable, as flax wants)
    names = [name for name, _ in rules]
    assert sorted(names) == sorted(name for name, _ in axes.DEFAULT_RULES)  # each logical axis exactly once
    # The overrides change where parameters go: the MLP kernel is no longer split over 'fsdp' by its
    # embed dimension, and its hidden dimension takes both axes.
    assert nn.logical_to_mesh_axes((axes.EMBED, axes.MLP), rules) == P(None, (axes.FSDP, axes.TENSOR))
    assert nn.logical_to_mesh_axes((axes.EMBED, axes.MLP), axes.DEFAULT_RULES) == P(axes.FSDP, axes.TENSOR)


def test_default_rules_split_the_batch_over_data_and_fsdp():
    mesh = parallel.make_mesh({"data": -1}, devices=jax.devices()[:1])
    sharding = parallel.batch_sharding(mesh, axes.DEFAULT_RULES)
    assert sharding.spec == P((axes.DATA, axes.FSDP))


def test_rules_reject_unknown_logical_axis_naming_known_ones():
    with pytest.raises(ValueError) as info:
        axes.rules({"hidden": axes.TENSOR})
    message = str(info.value)
    assert "'hidden'" in message
    for name in (axes.EMBED, axes.MLP, axes.VOCAB, axes.ACT_BATCH):
        assert name in message


@pytest.mark.parametrize("target", ["model", ("data", "model"), ["fsdp", "x"]])
def test_rules_reject_unknown_mesh_axis(target):
    with pytest.raises(ValueError) as info:
        axes.rules({axes.MLP: target})
    message = str(info.value)
    assert axes.MLP in message
    assert all(axis in message for axis in axes.MESH_AXES)


def test_trainer_config_rules_are_checked():
    """A bad override in config.sharding_rules fails when the trainer builds its rules."""
    from experiments.configs import lm_chars
    from fintrans.train import Trainer

    config = lm_chars.get_config("runlocal")
    config.sharding_rules = {"not_an_axis": "data"}
    with pytest.raises(ValueError, match="not_an_axis"):
        Trainer(config, None, devices=jax.devices()[:1])

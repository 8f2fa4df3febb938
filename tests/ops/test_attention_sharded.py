"""Pallas kernels under a mesh: fintrans.ops runs them per shard (dispatch.per_shard: shard_map over
batch/groups and heads), since XLA cannot split an opaque kernel call and would gather every input
onto every device.

Runs in a subprocess with 8 forced host devices (the count is fixed before jax starts). The
kernel inside is the blockwise XLA implementation, wrapped to record the shapes each device sees.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from fintrans.ops import attention as attn_lib
from fintrans.ops import dispatch, flat_window

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from fintrans import axes, parallel
    from fintrans.ops import attention as attn_lib
    from fintrans.ops import dispatch, flat_window

    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    seen = []
    def recording(q, k, v, pair):  # what one device's kernel call gets
        seen.append([list(q.shape), list(k.shape), None if pair is None else list(pair[0].shape)])
        return attn_lib.blockwise.blockwise_attention(q, k, v, causal=True, segment_ids=pair,
                                                      implementation="xla")
    out = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(axes.DEFAULT_RULES):
        as_lists = lambda spec: [list(d) if isinstance(d, tuple) else d for d in spec]
        specs = lambda qs, ks: dispatch.shard_specs(
            [qs, ks, qs[:2]], [attn_lib.Q_AXES, attn_lib.KV_AXES, attn_lib.SEGMENT_AXES])
        out["specs"] = {name: [as_lists(s) for s in specs(qs, ks)] for name, qs, ks in (
            ("mha", (8, 64, 4, 16), (8, 64, 4, 16)),
            ("gqa", (8, 64, 4, 16), (8, 64, 2, 16)),
            ("mqa", (8, 64, 4, 16), (8, 64, 1, 16)),
            ("small_batch", (2, 64, 4, 16), (2, 64, 4, 16)))}
        # Grouped attention: groups take the batch's place, q/k/v heads split alike.
        out["specs"]["grouped"] = [as_lists(s) for s in dispatch.shard_specs(
            [(12, 16, 4, 16)] * 3, [flat_window.GROUP_AXES] * 3)]
        keys = jax.random.split(jax.random.key(0), 3)
        q = jax.random.normal(keys[0], (8, 64, 4, 16))
        k, v = (jax.random.normal(kk, (8, 64, 2, 16)) for kk in keys[1:])
        seg = jnp.asarray(np.repeat(np.arange(2), 32)[None].repeat(8, 0), jnp.int32)
        shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        q, k, v, seg = (jax.device_put(x, shard) for x in (q, k, v, seg))
        loss = lambda q, k, v: jnp.sum(jnp.sin(dispatch.per_shard(
            recording, (q, k, v, (seg, seg)),
            (attn_lib.Q_AXES, attn_lib.KV_AXES, attn_lib.KV_AXES, (attn_lib.SEGMENT_AXES,) * 2), attn_lib.Q_AXES)))
        per_shard = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    whole = lambda q, k, v: jnp.sum(jnp.sin(attn_lib.blockwise.blockwise_attention(
        q, k, v, causal=True, segment_ids=(seg, seg), implementation="xla")))
    ref = jax.value_and_grad(whole, argnums=(0, 1, 2))(q, k, v)
    out["seen"] = seen

    # Lean decode attention per shard: one query token per sequence, ragged cached lengths.
    seen_decode = []
    real_lean = attn_lib.lean.lean_decode_attention
    def recording_decode(q, k, v, lengths, **kwargs):
        seen_decode.append([list(q.shape), list(k.shape), list(lengths.shape)])
        return real_lean(q, k, v, lengths, implementation="xla", num_programs=3)
    attn_lib.lean.lean_decode_attention = recording_decode  # what the decode op's per-shard kernel calls
    keys = jax.random.split(jax.random.key(1), 3)
    qd = jax.random.normal(keys[0], (8, 4, 16))
    kd, vd = (jax.random.normal(kk, (8, 64, 2, 16)) for kk in keys[1:])
    lengths = jnp.array([64, 1, 0, 33, 7, 64, 20, 2], jnp.int32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(axes.DEFAULT_RULES):
        qd_s, kd_s, vd_s, len_s = (jax.device_put(x, shard) for x in (qd, kd, vd, lengths))
        decoded = jax.jit(lambda *a: attn_lib.decode_attention(*a, implementation="xla"))(qd_s, kd_s, vd_s, len_s)
    attn_lib.lean.lean_decode_attention = real_lean
    ref_decode = real_lean(qd, kd, vd, lengths, implementation="reference")
    out["seen_decode"] = seen_decode
    out["decode_diff"] = float(jnp.max(jnp.abs(decoded - ref_decode)))
    # Relative to each leaf's scale: the loss is a sum over 32k elements.
    out["max_diff"] = max(float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(b))))
                          for a, b in zip(jax.tree.leaves(per_shard), jax.tree.leaves(ref)))
    out["no_mesh"] = dispatch.shard_specs([(8, 64, 4, 16)], [attn_lib.Q_AXES])
    print("RESULT" + json.dumps(out))
''')


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_specs_split_batch_and_heads_as_the_rules_lay_out_activations(result):
    specs = result["specs"]
    batch = ["data", "fsdp"]
    assert specs["mha"] == [[batch, None, "tensor", None]] * 2 + [[batch, None]]
    assert specs["gqa"] == specs["mha"]  # 4 query and 2 kv heads both split over tensor=2
    # One kv head cannot be split: keep every head whole so query heads find their kv head locally.
    assert specs["mqa"][:2] == [[batch, None, None, None]] * 2
    # A batch of 2 does not divide over data x fsdp = 4: not split.
    assert specs["small_batch"][0] == [None, None, "tensor", None]
    assert result["no_mesh"] is None
    assert specs["grouped"] == [[batch, None, "tensor", None]] * 3


def test_each_device_attends_over_its_own_shard_and_the_result_is_exact(result):
    # Traced once per shard shape: batch 8 / (data 2 x fsdp 2), heads / tensor 2, full length.
    assert result["seen"] and all(s == [[2, 64, 2, 16], [2, 64, 1, 16], [2, 64]] for s in result["seen"])
    assert result["max_diff"] < 1e-5


def test_only_the_kernel_calls_xla_cannot_split_are_wrapped(monkeypatch):
    """XLA splits its own implementations; the opaque Pallas calls (and the lean decode schedule,
    which flattens work across sequences and heads) go through dispatch.per_shard."""
    wrapped = []
    monkeypatch.setattr(dispatch, "per_shard", lambda kernel, args, *axes: wrapped.append(1) or kernel(*args))
    identity = lambda q, *a, **kw: q
    monkeypatch.setattr(attn_lib.blockwise, "blockwise_attention", identity)
    monkeypatch.setattr(attn_lib.lean, "lean_decode_attention", identity)
    monkeypatch.setattr(flat_window._kernel, "grouped_attention", identity)
    q = jax.numpy.zeros((1, 4, 2, 8))
    expect = {"pallas_gpu": 1, "pallas_tpu": 1, "xla_blockwise": 0, "reference": 0}
    for name, n in expect.items():
        del wrapped[:]
        attn_lib.dot_product_attention(q, q, q, implementation=name)
        assert len(wrapped) == n, name
    for name, n in {"pallas_gpu": 1, "pallas_tpu": 1, "xla": 0, "reference": 0}.items():
        del wrapped[:]
        flat_window.grouped_attention(q, q, q, implementation=name)
        assert len(wrapped) == n, name
    for name in ("pallas_gpu", "pallas_tpu", "xla"):
        del wrapped[:]
        attn_lib.decode_attention(q[:, 0], q, q, jax.numpy.ones((1,), jax.numpy.int32), implementation=name)
        assert len(wrapped) == 1, name


def test_lean_decode_runs_per_shard_on_ragged_lengths(result):
    """Each device schedules its own sequences' and heads' cache tiles (batch 8 over 4, kv heads 2
    over tensor 2, q heads 4 over 2), and the merged result equals the unsharded reference."""
    assert result["seen_decode"] and all(s == [[2, 2, 16], [2, 64, 1, 16], [2]] for s in result["seen_decode"])
    assert result["decode_diff"] < 1e-5

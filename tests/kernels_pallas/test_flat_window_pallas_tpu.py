"""pallas_tpu (Pallas Mosaic TPU) grouped attention: TPU interpret mode against the float64
dense oracle, and ahead-of-time compiles through Mosaic for v5e, v5p and v6e (on this CPU).

Interpret cases are tiny but take every layout path: 128-lane chunks holding several masked
heads (head_dim 16 and 64), a chunk narrower than 128 lanes (H*D = 72, head_dim 24), one head
per chunk without masks (head_dim 128), group sizes 32, 64, 144 (not a multiple of 128 lanes)
and 256, num_groups not a multiple of groups_per_block (the edge block's missing groups read as
NaN in interpret mode and must not leak), float32 and bfloat16.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from kernels_pallas.flat_window_attention import grouped_attention, pallas_tpu, reference
from tests.kernels_pallas.flat_window_oracle import TOLERANCE, check_against_oracle, forward_and_grads, inputs

# (num_groups, group_size, heads, head_dim), dtype, groups_per_block
INTERPRET_CASES = [
    # 2 heads of 64 in one 128-lane chunk; 3 blocks, the last with 1 group.
    ((5, 32, 2, 64), jnp.float32, 2),
    # 8 heads of 16 in one chunk (the FlatFormer layout); 144 rows; 2 blocks, the last partial.
    ((3, 144, 8, 16), jnp.bfloat16, 2),
    # 3 heads of 24: one 72-lane chunk, masked heads; 64 rows; a single block of 2.
    ((2, 64, 3, 24), jnp.float32, 2),
    # head_dim 128: one head per chunk (two chunks), no masks; 256 rows.
    ((2, 256, 2, 128), jnp.bfloat16, 1),
]


@pytest.mark.parametrize("shape,dtype,gpb", INTERPRET_CASES,
                         ids=[f"{'x'.join(map(str, s))}-{jnp.dtype(d).name}-gpb{g}"
                              for s, d, g in INTERPRET_CASES])
def test_interpret_matches_oracle(shape, dtype, gpb):
    impl = functools.partial(grouped_attention, implementation="pallas_tpu", interpret=True,
                             groups_per_block=gpb)
    # 144 rows: also outside differentiation (the forward kernel without the lse residual).
    check_against_oracle(impl, shape, dtype, primal=shape[1] == 144)


def test_layout_choices():
    """Chunks are aligned 128-lane slices whenever heads tile them; groups_per_block follows
    TARGET_ROWS, the VMEM budget and MIN_STEPS."""
    assert pallas_tpu._chunking(8, 16) == (128, 8)
    assert pallas_tpu._chunking(8, 32) == (128, 4)
    assert pallas_tpu._chunking(4, 256) == (256, 1)
    assert pallas_tpu._chunking(2, 16) == (32, 2)      # H*D < 128: one narrow chunk
    assert pallas_tpu._chunking(8, 48) == (384, 8)     # 48 does not tile 128 lanes: all at once
    assert pallas_tpu.default_groups_per_block(2048, 128, 8, 16, 2) == 8
    assert pallas_tpu.default_groups_per_block(1821, 144, 8, 16, 2) == 7
    assert pallas_tpu.default_groups_per_block(10, 64, 8, 16, 2) == 2   # >= MIN_STEPS-ish steps
    # 256 rows of 8 heads of 64 in f32 (512 KiB a group): the budget allows 1 group a step.
    assert pallas_tpu.default_groups_per_block(4096, 256, 8, 64, 4) == 1


def test_unsupported_inputs_fall_through():
    """NotImplementedError lets the dispatcher use xla: float16 (Mosaic has no f16 tiles),
    groups larger than 512, blocks that would not fit VMEM."""
    q = jnp.zeros((4, 64, 2, 16), jnp.float16)
    with pytest.raises(NotImplementedError, match="float16"):
        pallas_tpu.attention(q, q, q, sm_scale=0.25)
    q = jnp.zeros((1, 520, 1, 16), jnp.float32)
    with pytest.raises(NotImplementedError, match="group_size"):
        pallas_tpu.attention(q, q, q, sm_scale=0.25)
    q = jax.ShapeDtypeStruct((64, 256, 8, 64), jnp.float32)
    with pytest.raises(NotImplementedError, match="VMEM"):
        pallas_tpu.attention(q, q, q, sm_scale=0.125, groups_per_block=64)


@pytest.mark.tpu_only
def test_tpu_matches_reference():
    """Compiled on a TPU with the defaults at the benchmark's shape (groups of 144, 8 heads of
    16), against the float32 dense reference on the same TPU."""
    shape = (1821, 144, 8, 16)
    q, k, v, do = inputs(shape, jnp.bfloat16, 1)
    kernel = functools.partial(grouped_attention, implementation="pallas_tpu")
    got = jax.jit(lambda *a: forward_and_grads(kernel, *a))(q, k, v, do)
    dense = functools.partial(reference.attention, sm_scale=16 ** -0.5)
    with jax.default_matmul_precision("highest"):
        f32 = lambda x: x.astype(jnp.float32)
        want = jax.jit(lambda *a: forward_and_grads(dense, *a))(f32(q), f32(k), f32(v), f32(do))
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        err = np.max(np.abs(g - w)) / np.max(np.abs(w))
        assert np.isfinite(g).all() and err <= TOLERANCE[jnp.dtype(jnp.bfloat16)], (name, err)


# ----------------------------------------------------------------------------- AOT (Mosaic)

# (chip, group_size, heads, head_dim, dtype): forward and backward in one program (the gradient
# of a shard_mapped call, as a training step would have it). Every chip sees both group sizes
# (64, and 144 which is not a multiple of 128 lanes) and both head sizes (16: 8 masked heads in
# one chunk; 32: two chunks of 4). bf16 only: float32 compiles (verified for these shapes) take
# 2-3x longer (six-pass f32 matmuls).
AOT_CASES = [
    ("v5e", 64, 8, 16, jnp.bfloat16), ("v5e", 144, 8, 32, jnp.bfloat16),
    ("v5p", 144, 8, 16, jnp.bfloat16), ("v5p", 64, 8, 32, jnp.bfloat16),
    ("v6e", 144, 8, 16, jnp.bfloat16), ("v6e", 64, 8, 32, jnp.bfloat16),
]


@pytest.mark.parametrize("chip,s,h,d,dtype", AOT_CASES,
                         ids=[f"{c}-S{s}-h{h}x{d}-{jnp.dtype(t).name}"
                              for c, s, h, d, t in AOT_CASES])
def test_compiles_for_topology(topology, chip, s, h, d, dtype):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    devices = topology(chip)
    n = devices.size
    mesh = Mesh(devices.reshape(n), ("data",))
    groups = 8192 // s + 5  # per chip: not a multiple of the default groups_per_block

    def attn(q, k, v):
        return grouped_attention(q, k, v, implementation="pallas_tpu")
    sharded = jax.shard_map(attn, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=P("data"),
                            check_vma=False)
    grad = jax.grad(lambda *a: sharded(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    arg = jax.ShapeDtypeStruct((n * groups, s, h, d), dtype,
                               sharding=NamedSharding(mesh, P("data")))
    compiled = jax.jit(grad).lower(arg, arg, arg).compile()
    # Both Mosaic kernels are in the program: the forward (for the residuals) and the backward.
    assert compiled.as_text().count('custom_call_target="tpu_custom_call"') == 2
    mem = compiled.memory_analysis()
    one = groups * s * h * d * jnp.dtype(dtype).itemsize  # one [groups, s, h, d] array, per chip
    # Three inputs in, three gradients out (XLA's default HBM layout of a [.., heads, 16 or 32]
    # parameter pads the minor dims, up to 2x; the kernels themselves see [groups, s, h * d]).
    assert 3 * one <= mem.argument_size_in_bytes <= 6 * one
    assert 3 * one <= mem.output_size_in_bytes <= 6 * one
    # Temporaries: the residuals (out, lse) and dO, a few inputs' worth (v5p stages some in its
    # large VMEM); no [groups, h, s, s] score tensor as dense XLA attention would hold.
    assert mem.temp_size_in_bytes < 4 * one + (4 << 20)

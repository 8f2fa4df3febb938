"""pallas_tpu compiled ahead of time through Mosaic for real TPU topologies, on this CPU machine.

libtpu compiles for a topology without the hardware, so Mosaic's own checks (tile shapes,
layouts, VMEM) run here: a block shape or op Mosaic rejects fails the way it would on a TPU.
Each case shard_maps the attention over the topology's devices (one sequence per chip), as a
training step would, with the default (tuned) tiles.
"""
from __future__ import annotations

import pytest
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kernels_pallas.blockwise_attention import blockwise_attention

GiB = 1 << 30
HBM = {"v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}


# (chip, q_len, kv_len, q_heads, kv_heads, head_dim, causal, segments, with gradients)
CASES = [
    ("v5e", 2048, 2048, 8, 8, 128, True, False, False),
    ("v5e", 2048, 2048, 8, 8, 128, True, False, True),
    ("v5e", 1000, 1000, 8, 2, 64, True, True, True),   # GQA, padded length, segments
    ("v5p", 2048, 2048, 8, 2, 128, True, False, True),  # GQA on a megacore chip
    ("v5p", 300, 3000, 4, 1, 256, True, True, True),    # MQA, q_len < kv_len, head_dim 256
    ("v6e", 2048, 2048, 8, 8, 128, True, False, True),
    ("v6e", 1000, 1000, 8, 1, 64, False, True, True),   # MQA, non-causal, segments
    ("v6e", 1000, 1000, 4, 2, 80, True, False, True, jnp.float16),  # f32 inside; head_dim unpadded
]


CASES = [c if len(c) == 10 else c + (jnp.bfloat16,) for c in CASES]  # dtype defaults to bf16


@pytest.mark.parametrize("chip,lq,lk,hq,hkv,d,causal,segments,grad,dtype", CASES,
                         ids=[f"{c[0]}-q{c[1]}-kv{c[2]}-h{c[3]}x{c[4]}-d{c[5]}"
                              f"{'-causal' if c[6] else ''}{'-seg' if c[7] else ''}"
                              f"{'-grad' if c[8] else '-fwd'}-{jnp.dtype(c[9]).name}" for c in CASES])
def test_compiles_for_topology(topology, chip, lq, lk, hq, hkv, d, causal, segments, grad, dtype):
    devices = topology(chip)
    n = devices.size
    mesh = Mesh(devices.reshape(n), ("data",))
    spec = P("data")

    def attn(q, k, v, qs, ks):
        return blockwise_attention(q, k, v, causal=causal, segment_ids=(qs, ks) if segments else None,
                                   implementation="pallas_tpu")
    sharded = jax.shard_map(attn, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec, check_vma=False)
    if grad:
        fn = jax.grad(lambda *a: sharded(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    else:
        fn = sharded
    arg = lambda *shape, dtype=dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=NamedSharding(mesh, spec))
    args = (arg(n, lq, hq, d), arg(n, lk, hkv, d), arg(n, lk, hkv, d),
            arg(n, lq, dtype=jnp.int32), arg(n, lk, dtype=jnp.int32))
    compiled = jax.jit(fn).lower(*args).compile()

    # The Mosaic kernels are in the program (forward; plus dq and dk/dv for the gradients).
    assert compiled.as_text().count('custom_call_target="tpu_custom_call"') == (3 if grad else 1)
    mem = compiled.memory_analysis()
    size = jnp.dtype(dtype).itemsize
    q_bytes, kv_bytes = lq * hq * d * size, lk * hkv * d * size  # one sequence per chip
    inputs = q_bytes + 2 * kv_bytes + ((lq + lk) * 4 if segments else 0)  # unused args are pruned
    outputs = q_bytes + 2 * kv_bytes if grad else q_bytes
    # Per-device sizes (the batch is split), up to the padding of HBM tiles.
    assert inputs <= mem.argument_size_in_bytes < 1.5 * inputs
    assert outputs <= mem.output_size_in_bytes < 1.5 * outputs
    # O(length) memory: temporaries (padded copies, residuals, logsumexp) stay within a few
    # times the inputs (XLA may keep small ones in VMEM: 0 on v5e/v6e at these sizes; float16 adds float32
    # copies), far
    # below a [q_len, kv_len] score matrix (134 MiB for the 2k cases).
    assert 0 <= mem.temp_size_in_bytes < 8 * (q_bytes + 2 * kv_bytes) + 4 * 1024 * 1024
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    assert peak < HBM[chip]

"""pallas_tpu compiled ahead of time through Mosaic for real TPU topologies, on this CPU machine.

libtpu compiles for a topology without the hardware, so Mosaic's own checks (tile shapes,
layouts, VMEM) run here: a block shape or op Mosaic rejects fails the way it would on a TPU.
Each case shard_maps the attention over the topology's devices (one sequence per chip), as a
training step would, with the default (tuned) tiles. q, k, v arrive as [batch, length,
heads * head_dim] buffers (a projection's output, the in-place view's layout) and are split into
heads inside the step: with head_dim a multiple of 128 the kernels then read and write them in
place, and the compiled program holds no transpose or layout-changing copy of an activation.
"""
from __future__ import annotations

import math
import re

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
    ("v5e", 2048, 2048, 8, 2, 128, True, True, True),  # GQA in place, segment tile ranges
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
        heads = lambda x, h: x.reshape(x.shape[0], x.shape[1], h, d)
        out = blockwise_attention(heads(q, hq), heads(k, hkv), heads(v, hkv), causal=causal,
                                  segment_ids=(qs, ks) if segments else None,
                                  implementation="pallas_tpu")
        return out.reshape(q.shape)
    sharded = jax.shard_map(attn, mesh=mesh, in_specs=(spec,) * 5, out_specs=spec, check_vma=False)
    if grad:
        fn = jax.grad(lambda *a: sharded(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))
    else:
        fn = sharded
    arg = lambda *shape, dtype=dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=NamedSharding(mesh, spec))
    args = (arg(n, lq, hq * d), arg(n, lk, hkv * d), arg(n, lk, hkv * d),
            arg(n, lq, dtype=jnp.int32), arg(n, lk, dtype=jnp.int32))
    compiled = jax.jit(fn).lower(*args).compile()
    hlo = compiled.as_text()

    # The Mosaic kernels are in the program (forward; plus dq and dk/dv for the gradients).
    calls = _kernel_operands(hlo)
    assert len(calls) == (3 if grad else 1)
    # Heads in place ([1, length, heads * d], head_dim a multiple of 128, or a single head) or
    # transposed ([1, heads, length, d]); per device the batch is 1, lengths padded to the tiles.
    in_place = lambda h: d % 128 == 0 or h == 1

    def has_view(operands, length, h):
        view = lambda s: (s[0], s[2]) if in_place(h) else (s[0], s[1], s[3])
        want = (1, h * d) if in_place(h) else (1, h, d)
        at = 1 if in_place(h) else 2
        return any(len(s) == len(want) + 1 and view(s) == want and length <= s[at] < length + 1024
                   for s in operands)
    for operands in calls:
        assert has_view(operands, lq, hq) and has_view(operands, lk, hkv), operands
    # Every transpose or layout-changing copy of an activation is the transposing path's: none
    # when every tensor is read in place.
    copies = _relayouts(hlo, min(lq * hq, lk * hkv) * d)
    assert bool(copies) == (not (in_place(hq) and in_place(hkv))), copies
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


def _kernel_operands(hlo):
    """Per Mosaic custom call in the compiled HLO, the shapes of its array operands."""
    calls = []
    for line in hlo.splitlines():
        if 'custom_call_target="tpu_custom_call"' in line:
            constraints = re.search(r"operand_layout_constraints=\{(.*?)\}\}", line).group(1)
            calls.append([tuple(int(x) for x in dims.split(",") if x)
                          for dims in re.findall(r"\w+\[([\d,]*)\]", constraints)])
    return calls


def _relayouts(hlo, min_elements):
    """Transposes and copies (fused or not) producing at least min_elements: with the inputs'
    layouts fixed, moving heads between the length and lane axes shows up as one of these.
    (Memory-space moves are copy-start/copy-done and not counted.)"""
    found = re.finditer(r"= \w+\[([\d,]*)\]\{[^}]*\} (?:copy|transpose)\(", hlo)
    return [m.group(0) for m in found
            if math.prod(int(x) for x in m.group(1).split(",") if x) >= min_elements]

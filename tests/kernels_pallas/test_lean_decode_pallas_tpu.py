"""pallas_tpu lean decode attention: TPU interpret mode against the float64 reference, and
ahead-of-time compiles through Mosaic for real TPU topologies (on this CPU machine).

Interpret mode simulates the grid (P, ceil(U / P)) step by step (~30 ms a step plus several
seconds of compiling per shape), so each case is small (block_k 8 or 16) yet spans many tiles,
and covers several requirements at once: ragged lengths with 0, 1, max_len and one long among
short; GQA and MQA; num_programs 1, 3 and 7, whose ranges start, end and cross inside segments;
a max_len that is not a multiple of block_k (the last tile reads past the array); f32 and bf16.
test_grid_follows_valid_tokens records the grid points the interpreter runs for short sequences
in a 64k cache.
"""
from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from kernels_pallas.lean_decode_attention import lean_decode_attention, reference
from kernels_pallas.lean_decode_attention.common import schedule

TOLERANCE = {jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.bfloat16): 2e-2}

# (batch, max_len, q_heads, kv_heads, head_dim, lengths, block_k, num_programs, dtype)
CASES = [
    # GQA, ragged with 0, 1 and max_len; max_len 50 is not a multiple of 16; 3 programs.
    (4, 50, 4, 2, 64, (0, 1, 50, 23), 16, 3, jnp.float32),
    # MQA, one long among short (the long one is split over programs); 7 programs.
    (4, 96, 4, 1, 128, (3, 96, 1, 9), 8, 7, jnp.bfloat16),
    # GQA, uniform lengths, a single program walking every segment.
    (2, 40, 8, 2, 128, (40, 40), 8, 1, jnp.float32),
    # GQA group 4, head_dim 128 (read in place), a length of exactly one tile; 4 units for 7
    # programs: programs without units write only the trash slot; bf16.
    (3, 64, 8, 2, 128, (16, 0, 3), 16, 7, jnp.bfloat16),
]


def _inputs(b, max_len, hq, hkv, d, dtype, seed):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(kq, (b, hq, d), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (b, max_len, hkv, d), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (b, max_len, hkv, d), jnp.float32).astype(dtype)
    return q, k, v


def _case_id(c):
    b, max_len, hq, hkv, d, lengths, bk, p, dtype = c
    return f"b{b}-L{max_len}-h{hq}x{hkv}-d{d}-len{'_'.join(map(str, lengths))}-bk{bk}-P{p}-{jnp.dtype(dtype).name}"


@pytest.mark.parametrize("b,max_len,hq,hkv,d,lengths,bk,n_prog,dtype", CASES,
                         ids=[_case_id(c) for c in CASES])
def test_interpret_matches_reference(b, max_len, hq, hkv, d, lengths, bk, n_prog, dtype):
    q, k, v = _inputs(b, max_len, hq, hkv, d, dtype, seed=b * 7 + max_len)
    lengths = jnp.asarray(lengths, jnp.int32)
    f = jax.jit(functools.partial(lean_decode_attention, implementation="pallas_tpu",
                                  interpret=True, block_k=bk, num_programs=n_prog))
    got = np.asarray(f(q, k, v, lengths).astype(jnp.float32), np.float64)
    assert got.shape == (b, hq, d)
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        want = np.asarray(reference.attention(f64(q), f64(k), f64(v), lengths,
                                              sm_scale=d ** -0.5))
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= TOLERANCE[jnp.dtype(dtype)], err
    zero = np.asarray(lengths) == 0
    assert np.all(got[zero] == 0.0)  # empty sequences: exact zeros
    # Ranges really cross segments: some program covers parts of two or more.
    sched = schedule(lengths, hkv, max_len, bk, n_prog)
    if 1 < n_prog < int(sched.seg_start[-1]):
        starts = np.asarray(sched.seg_start)
        inner = [(s, e) for s, e in zip(np.asarray(sched.prog_start), np.asarray(sched.prog_end))
                 if np.any((starts > s) & (starts < e))]
        assert inner


def test_grid_follows_valid_tokens(monkeypatch):
    """A 100-token and a 3-token sequence in a 64k cache (GQA, bf16, block_k 16, 3 programs):
    the interpreter runs exactly the P x ceil(U / P) grid points of the U valid units, not the
    P x ceil(U_max / P) = 16386 a grid sized by max_len would, and the result is right."""
    from jax.experimental.pallas import tpu as pltpu
    from kernels_pallas.lean_decode_attention import pallas_tpu
    points = []

    def record(*args):  # (grid point, core); jax 0.10 also threads an ordering token first
        *token, point, _ = args
        points.append(tuple(int(x) for x in point))
        return token[0] if token else ()
    monkeypatch.setattr(pallas_tpu, "_InterpretParams",
                        functools.partial(pltpu.InterpretParams, grid_point_recorder=record))
    b, max_len, hq, hkv, d, bk, n_prog = 2, 65536, 4, 2, 128, 16, 3
    lengths = np.array([100, 3], np.int32)
    # Random tokens up to 128, then a constant 100 (cheap to make): a score over any token past
    # the lengths would swamp the softmax.
    q, k, v = _inputs(b, 128, hq, hkv, d, jnp.bfloat16, seed=3)
    tail = jnp.full((b, max_len - 128, hkv, d), 100.0, jnp.bfloat16)
    k, v = (jnp.concatenate([x, tail], axis=1) for x in (k, v))
    f = jax.jit(functools.partial(lean_decode_attention, implementation="pallas_tpu",
                                  interpret=True, block_k=bk, num_programs=n_prog))
    got = np.asarray(f(q, k, v, jnp.asarray(lengths)).astype(jnp.float32), np.float64)
    jax.effects_barrier()
    units = hkv * int(np.sum(-(-lengths // bk)))
    steps = -(-units // n_prog)
    assert sorted(points) == [(p, i) for p in range(n_prog) for i in range(steps)]
    assert len(points) * 100 < n_prog * -(-(b * hkv * (max_len // bk)) // n_prog)
    # Tokens past the lengths are masked: the reference over the first 128 cached tokens.
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        want = np.asarray(reference.attention(f64(q), f64(k[:, :128]), f64(v[:, :128]),
                                              jnp.asarray(lengths), sm_scale=d ** -0.5))
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= TOLERANCE[jnp.dtype(jnp.bfloat16)], err


def test_float16_and_unaligned_tiles_fall_back_on_hardware():
    from kernels_pallas.lean_decode_attention import pallas_tpu
    q, k, v = _inputs(1, 256, 2, 1, 128, jnp.float16, 0)
    with pytest.raises(NotImplementedError):
        pallas_tpu.attention(q, k, v, jnp.array([5]), sm_scale=1.0, num_programs=2)
    q, k, v = _inputs(1, 256, 2, 1, 128, jnp.bfloat16, 0)
    with pytest.raises(NotImplementedError):
        pallas_tpu.attention(q, k, v, jnp.array([5]), sm_scale=1.0, block_k=64, num_programs=2)


# ----------------------------------------------------------------------------- AOT (Mosaic)

# (chip, max_len, q_heads, kv_heads, head_dim, dtype): one sequence per chip.
AOT_CASES = [
    ("v5e", 8192, 32, 8, 128, jnp.bfloat16), ("v5p", 8192, 32, 8, 128, jnp.bfloat16),
    ("v6e", 8192, 32, 8, 128, jnp.bfloat16),
    # head_dim 64 with GQA: the transposed-cache path; max_len 1000 leaves a partial last tile.
    ("v5e", 1000, 8, 2, 64, jnp.float32),
    # MQA with head_dim 64: read in place (the block spans the whole minor axis).
    ("v6e", 3000, 8, 1, 64, jnp.bfloat16),
]


@pytest.mark.parametrize("chip,max_len,hq,hkv,d,dtype", AOT_CASES,
                         ids=[f"{c[0]}-L{c[1]}-h{c[2]}x{c[3]}-d{c[4]}-{jnp.dtype(c[5]).name}"
                              for c in AOT_CASES])
def test_compiles_for_topology(topology, chip, max_len, hq, hkv, d, dtype):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    devices = topology(chip)
    n = devices.size
    mesh = Mesh(devices.reshape(n), ("data",))
    spec = P("data")

    def attn(q, k, v, lengths):
        return lean_decode_attention(q, k, v, lengths, implementation="pallas_tpu", num_programs=8)
    fn = jax.shard_map(attn, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec, check_vma=False)
    arg = lambda *shape, dtype=dtype: jax.ShapeDtypeStruct(
        shape, dtype, sharding=NamedSharding(mesh, spec))
    compiled = jax.jit(fn).lower(arg(n, hq, d), arg(n, max_len, hkv, d), arg(n, max_len, hkv, d),
                                 arg(n, dtype=jnp.int32)).compile()
    calls = [line for line in compiled.as_text().splitlines() if "tpu_custom_call" in line]
    assert len(calls) == 1
    # The grid's step count is a traced scalar operand (it follows the lengths), ahead of the
    # prefetched step tables.
    assert re.search(r"operand_layout_constraints=\{s32\[\], s32\[\d+\]", calls[0]), calls[0][:300]
    mem = compiled.memory_analysis()
    kv_bytes = 2 * max_len * hkv * d * jnp.dtype(dtype).itemsize  # both caches, one sequence
    assert kv_bytes <= mem.argument_size_in_bytes < 1.1 * kv_bytes
    # d % 128 == 0 or MQA: the caches are read in place, no transposed copy. (v5p's XLA may
    # still stage them in its large VMEM, memory-space assignment: temporaries of their size.)
    # Otherwise the transposed copy of both caches is a temporary.
    assert mem.temp_size_in_bytes <= 1.1 * kv_bytes + (1 << 20)

"""Lean decode attention: the stream-K schedule's properties, the xla implementation against the
float64 oracle on uniform and ragged batches, and the public function's checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.lean_decode_attention import common, lean_decode_attention
from tests.kernels_pallas.decode_oracle import check, inputs, oracle

# (batch, max_len, q_heads, kv_heads, head_dim, lengths)
SHAPES = [
    (4, 100, 4, 2, 16, [0, 1, 100, 37]),          # GQA; empty, single-token and full sequences
    (8, 300, 8, 1, 32, [300] + [7] * 7),          # MQA; one long sequence among short ones
    (2, 64, 4, 4, 16, [64, 64]),                  # uniform, MHA
    (3, 129, 6, 3, 80, [129, 128, 65]),           # odd max_len and head_dim
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s[0]}_L{s[1]}_h{s[2]}x{s[3]}_d{s[4]}")
@pytest.mark.parametrize("num_programs", [1, 3, 7])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xla_matches_oracle(shape, num_programs, dtype):
    b, max_len, hq, hkv, d, lengths = shape
    q, k, v, lens = inputs(b, max_len, hq, hkv, d, lengths, dtype, seed=num_programs)
    got = lean_decode_attention(q, k, v, lens, implementation="xla", block_k=16, num_programs=num_programs)
    assert got.shape == q.shape and got.dtype == q.dtype
    check(got, oracle(q, k, v, lens), dtype, lengths)


def test_default_tiles_and_programs_and_scale():
    q, k, v, lens = inputs(2, 700, 4, 2, 64, [700, 300], "float32", seed=1)
    check(lean_decode_attention(q, k, v, lens, sm_scale=0.05), oracle(q, k, v, lens, 0.05), "float32", [700, 300])


@pytest.mark.parametrize("lengths, programs", [([1000, 16, 16, 16], 8), ([0, 5, 0, 999], 3), ([64] * 4, 16)])
def test_schedule_splits_only_valid_tiles_evenly_with_unique_slots(lengths, programs):
    block, kv_heads = 16, 2
    sched = common.schedule(jnp.asarray(lengths), kv_heads, 1000, block, programs)
    tiles = [-(-n // block) for n in lengths for _ in range(kv_heads)]
    total = sum(tiles)
    assert int(sched.seg_start[-1]) == total  # units exist for valid tokens only
    work = np.asarray(sched.prog_end - sched.prog_start)
    assert work.sum() == total and work.max() - work.min() <= 1  # equal shares (stream-K)
    assert int(sched.steps) == -(-total // programs)
    slots = set()
    for p in range(programs):  # every (program, segment) pair it touches has its own slot p + s
        units = np.arange(int(sched.prog_start[p]), int(sched.prog_end[p]))
        segs = {int(s) for s in common.locate(sched, jnp.asarray(units, jnp.int32))[0]} if units.size else set()
        assert not slots & {p + s for s in segs}
        slots |= {p + s for s in segs}
    assert len(slots) <= programs + len(tiles)


def test_ragged_work_follows_valid_tokens_not_batch_times_max_len():
    """One 8k sequence among seven 16-token ones: the lockstep loop runs for ceil(units / P)
    steps: 312 units of 256 tokens (per kv head), against 2048 if every sequence were padded."""
    ragged = common.schedule(jnp.asarray([8192] + [16] * 7), 8, 8192, 256, 16)
    padded = common.schedule(jnp.asarray([8192] * 8), 8, 8192, 256, 16)
    assert int(ragged.steps) == -(-(8 * 32 + 7 * 8) // 16)
    assert int(padded.steps) == 2048 // 16


@pytest.mark.parametrize("args, kwargs, message", [
    ((jnp.zeros((2, 4, 8, 1)),), {}, r"q as \[batch, q_heads, head_dim\]"),
    ((None, jnp.zeros((2, 16, 3, 8)), jnp.zeros((2, 16, 3, 8))), {}, r"multiple of key/value heads \(3\)"),
    ((None, None, jnp.zeros((2, 17, 2, 8))), {}, "same shape"),
    ((None, None, None, jnp.zeros((3,), jnp.int32)), {}, r"lengths must be an int array \[batch\]"),
    ((None, None, None, jnp.zeros((2,))), {}, "lengths must be an int array"),
    ((None, jnp.zeros((2, 16, 2, 8), jnp.bfloat16), None), {}, "share a dtype"),
    ((), dict(num_programs=0), "num_programs must be a positive int"),
    ((), dict(implementation="flash"), "unknown implementation 'flash'"),
])
def test_bad_inputs_name_the_problem(args, kwargs, message):
    default = (jnp.zeros((2, 4, 8)), jnp.zeros((2, 16, 2, 8)), jnp.zeros((2, 16, 2, 8)), jnp.zeros((2,), jnp.int32))
    args = tuple(a if a is not None else d for a, d in zip(args + (None,) * 4, default))
    with pytest.raises(ValueError, match=message):
        lean_decode_attention(*args, **kwargs)


def test_jit_with_traced_lengths_compiles_once():
    q, k, v, _ = inputs(2, 64, 4, 2, 16, [1, 1], "float32", seed=2)
    f = jax.jit(lambda lens: lean_decode_attention(q, k, v, lens, implementation="xla", block_k=16,
                                                   num_programs=3))
    for lengths in ([1, 64], [30, 0], [64, 64]):
        check(f(jnp.asarray(lengths, jnp.int32)), oracle(q, k, v, jnp.asarray(lengths)), "float32", lengths)
    assert f._cache_size() == 1

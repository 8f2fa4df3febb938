"""pallas_mosaic_gpu (Pallas Mosaic GPU, Hopper) blockwise attention against the float64 oracle.

On CPU the kernels run in Pallas's GPU interpret mode: every warpgroup is a thread, and TMA
copies, barriers and wgmma are simulated (with kernels_pallas._mgpu_interpret's additions), so the
producer/consumer ring, the ping-pong turn barrier, the causal ranges and the dq reduce-adds run as
written for the hardware. Interpret mode costs seconds per CTA, so each case is small yet spans
several kv tiles (64-key tiles) and covers several requirements at once. The same kernels are
lowered to Mosaic GPU for CUDA (no GPU needed: layouts, shared-memory budget and wgmma operand
rules are checked there) at the benchmark's sizes, and `gpu_only` tests run them compiled.
"""
from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from kernels_pallas.blockwise_attention import BlockSizes, blockwise_attention
from kernels_pallas.blockwise_attention import pallas_mosaic_gpu as mg
from tests.kernels_pallas.attention_oracle import Case, check_against_oracle, inputs

KV64 = BlockSizes(block_kv=64)


def _impl(block_sizes=KV64, interpret=True):
    def impl(q, k, v, **kw):
        return blockwise_attention(q, k, v, implementation="pallas_mosaic_gpu", interpret=interpret,
                                   block_sizes=block_sizes, **kw)
    return impl


INTERPRET_CASES = [
    # MQA (two query heads share every key tile: "heads" mode), causal with q_len < kv_len
    # (end-aligned), 6 kv tiles through a 4-slot ring (wraps), kv padded 330 -> 384, head_dim 64.
    (Case(1, 64, 330, 2, 1, 64, causal=True), jnp.bfloat16),
    # GQA 4/2, causal + packed segments (queries of a segment with no keys: zeros, zero grads),
    # both lengths ragged, head_dim 128, float16.
    (Case(1, 100, 130, 4, 2, 128, causal=True, segments=True), jnp.float16),
    # One head per kv head ("rows" mode: the consumers take two row tiles), causal with
    # q_len > kv_len (early queries see nothing, one consumer finishes early and releases the
    # tiles it does not need), batch 2.
    (Case(2, 128, 70, 1, 1, 64, causal=True), jnp.bfloat16),
]


@pytest.mark.parametrize("case,dtype", INTERPRET_CASES,
                         ids=[f"{c}-{jnp.dtype(d).name}" for c, d in INTERPRET_CASES])
def test_interpret_matches_oracle(case, dtype):
    check_against_oracle(_impl(), case, dtype)


def test_no_races_and_every_barrier_phase_observed():
    """The race detector sees no unsynchronised shared-memory access (the ring, the turn barrier,
    the dq tile reused between reduce-adds), and barrier deallocation checks that every thread
    that waits on a barrier observed all of its phases."""
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks
    from kernels_pallas._mgpu_interpret import interpret_params
    case = Case(1, 128, 200, 1, 1, 64, causal=True)
    q, k, v, do, _ = inputs(case, jnp.bfloat16, 1)
    params = interpret_params(detect_races=True)
    fn = lambda q, k, v: mg.attention(q, k, v, causal=True, q_segment_ids=None, kv_segment_ids=None,
                                      sm_scale=0.125, block_sizes=KV64, interpret=params)
    out, vjp = jax.vjp(fn, q, k, v)
    jax.block_until_ready(vjp(do))
    assert not gpu_callbacks.get_races().races_found


def _numpy_visits(case, qs, ks, rows, cols, causal_rows_first):
    """(row tile, col tile) pairs holding a visible entry, counted from the element masks."""
    q_pos, k_pos = np.arange(case.q_len), np.arange(case.kv_len)
    keep = qs[:, :, None] == ks[:, None, :]
    if case.causal:
        keep &= k_pos[None, None, :] <= q_pos[None, :, None] + case.kv_len - case.q_len
    if not causal_rows_first:
        keep = np.swapaxes(keep, 1, 2)
    b, n, m = keep.shape
    pad = np.zeros((b, -(-n // rows) * rows, -(-m // cols) * cols), bool)
    pad[:, :n, :m] = keep
    tiles = pad.reshape(b, pad.shape[1] // rows, rows, pad.shape[2] // cols, cols).any(axis=(2, 4))
    return int(tiles.sum())


def test_tile_visits_follow_segments():
    """Key padding folded into kv segment ids (-1 for padded keys) bounds the kv loop: a batch
    whose rows are half padding visits half the tiles of the unpadded one, and each kernel visits
    exactly the tiles that hold a visible pair (times the CTA's consumers)."""
    case = Case(1, 128, 256, 1, 1, 64)
    q, k, v, _, _ = inputs(case, jnp.bfloat16, 2)
    qs = np.zeros((1, 128), np.int32)
    counts = {}
    for name, valid in (("full", 256), ("half", 128)):
        ks = np.where(np.arange(256)[None, :] < valid, 0, -1).astype(np.int32)
        counts[name] = mg.tile_visits(q, k, v, causal=False, q_segment_ids=jnp.asarray(qs),
                                      kv_segment_ids=jnp.asarray(ks), sm_scale=0.125,
                                      block_sizes=KV64)
        # Forward: both consumers of a CTA (128 query rows, one head) visit each 64-key tile of
        # the CTA's range.
        assert counts[name]["forward"] == 2 * _numpy_visits(case, qs, ks, 128, 64, True)
        # Backward: both consumers of a CTA (128 keys) visit each 64-row query tile in range.
        assert counts[name]["dkv"] == 2 * _numpy_visits(case, qs, ks, 128, 64, False)
    assert counts["half"]["forward"] * 2 == counts["full"]["forward"]
    assert counts["half"]["dkv"] * 2 == counts["full"]["dkv"]


# Lowered to Mosaic GPU for CUDA on this CPU: the benchmark's target shapes and the other paths.
LOWER_CASES = [
    (Case(2, 8192, 8192, 16, 16, 128), jnp.bfloat16),
    (Case(2, 8192, 8192, 16, 16, 128, causal=True), jnp.bfloat16),
    (Case(1, 4096, 4096, 32, 8, 128, causal=True), jnp.float16),       # GQA, heads mode
    (Case(1, 1000, 1500, 8, 8, 64, causal=True, segments=True), jnp.bfloat16),
]


@pytest.mark.parametrize("case,dtype", LOWER_CASES, ids=[f"{c}-{jnp.dtype(d).name}" for c, d in LOWER_CASES])
def test_lowers_to_mosaic_gpu_for_cuda(case, dtype):
    S = jax.ShapeDtypeStruct
    q = S((case.batch, case.q_len, case.q_heads, case.head_dim), dtype)
    k = S((case.batch, case.kv_len, case.kv_heads, case.head_dim), dtype)
    seg = (S((case.batch, case.q_len), jnp.int32), S((case.batch, case.kv_len), jnp.int32)) \
        if case.segments else (None, None)
    p = mg._plan(q, k, case.causal, case.segments, case.head_dim ** -0.5, None, False)
    fwd = jax.jit(lambda *a: mg._forward(p, *a)[:2]).trace(q, k, k, *seg)
    lse = S((case.batch, case.q_heads, p.lq_pad), jnp.float32)
    bwd = jax.jit(lambda *a: mg._backward(p, *a)[:3]).trace(q, k, k, *seg, q, lse, q)
    for traced in (fwd, bwd):
        assert traced.lower(lowering_platforms=("cuda",)).as_text().count("@mosaic_gpu") == 1


def test_rejects_what_it_cannot_do():
    q = jnp.zeros((1, 128, 2, 64), jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="bfloat16 or float16"):
        blockwise_attention(q.astype(jnp.float32), q.astype(jnp.float32), q.astype(jnp.float32),
                            implementation="pallas_mosaic_gpu", interpret=True)
    q80 = jnp.zeros((1, 128, 2, 80), jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="head_dim"):
        blockwise_attention(q80, q80, q80, implementation="pallas_mosaic_gpu", interpret=True)
    with pytest.raises(NotImplementedError, match="multiple of 64"):
        blockwise_attention(q, q, q, implementation="pallas_mosaic_gpu", interpret=True,
                            block_sizes=BlockSizes(block_kv=96))
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="interpret=True"):
            blockwise_attention(q, q, q, implementation="pallas_mosaic_gpu")


# Compiled on a Hopper GPU with the default tiles and stages.
GPU_CASES = [
    (Case(2, 2048, 2048, 8, 8, 128), jnp.bfloat16),
    (Case(1, 4096, 4096, 8, 2, 128, causal=True), jnp.bfloat16),       # GQA
    (Case(1, 2048, 3072, 4, 1, 64, causal=True), jnp.float16),         # MQA, q_len < kv_len
    (Case(1, 2000, 2500, 4, 4, 128, causal=True, segments=True), jnp.bfloat16),  # padding, segments
]


@pytest.mark.gpu_only
@pytest.mark.parametrize("case,dtype", GPU_CASES, ids=[f"{c}-{jnp.dtype(d).name}" for c, d in GPU_CASES])
def test_gpu_matches_oracle(case, dtype):
    check_against_oracle(_impl(block_sizes=None, interpret=False), case, dtype)

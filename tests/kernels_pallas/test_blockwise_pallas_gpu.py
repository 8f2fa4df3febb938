"""pallas_gpu (Pallas + Triton lowering) blockwise attention against the float64 oracle.

On CPU the kernels run in interpret mode with 16-row tiles, so small shapes still span many tiles
(loop-bound skipping, diagonal masking, padding of odd lengths); tile skipping by segment ids is
counted by the kernels themselves (tile_visits) against counts from the dense masks. The same
kernels are lowered to Triton IR for CUDA (no GPU needed), and `gpu_only` tests run them compiled
at realistic sizes.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from kernels_pallas.blockwise_attention import BlockSizes, blockwise_attention
from kernels_pallas.blockwise_attention import pallas_gpu
from tests.kernels_pallas.attention_oracle import Case, check_against_oracle, inputs
# The tile-count and explicit-segment-id helpers are shared with the XLA implementation's tests.
from tests.kernels_pallas.test_blockwise_xla import (check_with_segment_ids, key_padded_ids,
                                                     visible_tiles)

TILES = BlockSizes(16, 16)


def _impl(block_sizes=TILES, interpret=True):
    def impl(q, k, v, **kw):
        return blockwise_attention(q, k, v, implementation="pallas_gpu", interpret=interpret,
                                   block_sizes=block_sizes, **kw)
    return impl


# Each case covers several requirements at once: interpret mode and the eager float64 oracle cost
# ~15 s of compilation per case on CPU.
INTERPRET_CASES = [
    # q_len 1, kv_len 7: one padded tile each; MQA; causal end-aligned (the query sees all keys);
    # the default tiles (capped at the short lengths) and head_dim 128.
    (Case(1, 1, 7, 2, 1, 128, causal=True), jnp.float32, None),
    # kv_len 2 < q_len 7, causal: five queries see no key (zeros, zero grads); head_dim 80 -> 128.
    # (kv_len 1 would make dq identically 0, which a relative-error check cannot judge.)
    (Case(1, 7, 2, 2, 2, 80, causal=True), jnp.float32, TILES),
    # 129 (odd, 9 tiles) != 100, GQA, head_dim 80, segments without causal, bf16.
    (Case(2, 129, 100, 4, 2, 80, segments=True), jnp.bfloat16, TILES),
    # Multi-tile causal with q_len < kv_len: skipped, diagonal and fully visible tiles; forward and
    # backward tiles differ (lengths padded to the largest), MQA, head_dim 64.
    (Case(1, 100, 160, 4, 1, 64, causal=True), jnp.float32, BlockSizes(32, 16, 16, 32)),
    # Segments (some queries see nothing) with causal q_len > kv_len, GQA, float16.
    (Case(2, 60, 50, 4, 2, 64, causal=True, segments=True), jnp.float16, TILES),
]


@pytest.mark.parametrize("case,dtype,tiles", INTERPRET_CASES,
                         ids=[f"{c}-{jnp.dtype(d).name}" for c, d, _ in INTERPRET_CASES])
def test_interpret_matches_oracle(case, dtype, tiles):
    check_against_oracle(_impl(tiles), case, dtype)


@pytest.mark.parametrize("q_len,kv_len,bq,bk", [(100, 160, 32, 16), (160, 100, 16, 32),
                                                (64, 64, 16, 16), (7, 1, 16, 16), (33, 97, 64, 16)])
def test_causal_loop_bounds(q_len, kv_len, bq, bk):
    """The loops skip only fully masked tiles, and only tiles that need it get the element mask."""
    p = pallas_gpu._Plan(q_len, kv_len, 64, 64, pallas_gpu.round_up(q_len, max(bq, 16)),
                         pallas_gpu.round_up(kv_len, max(bk, 16)), 1, True, False, 1.0,
                         (bq, bk, 4, 1), (bq, bk, 4, 1), (bq, bk, 4, 1), True)
    rows = np.arange(p.lq_pad)[:, None]
    cols = np.arange(p.lk_pad)[None, :]
    vis = (cols <= rows + kv_len - q_len) & (cols < kv_len) & (rows < q_len)
    tile = lambda qi, kj: vis[qi * bq:(qi + 1) * bq, kj * bk:(kj + 1) * bk]
    n_q, n_k = p.lq_pad // bq, p.lk_pad // bk
    for qi in range(n_q):  # forward / dq: [0, n_full) fully visible, nothing at or after n_hi
        n_full, n_hi = (int(x) for x in pallas_gpu._kv_range(p, jnp.int32(qi), bq, bk))
        real = slice(0, min(bq, q_len - qi * bq)) if qi * bq < q_len else slice(0, 0)
        for kj in range(n_k):
            t = tile(qi, kj)[real]
            if kj < n_full:
                assert t.all(), (qi, kj)
            if kj >= n_hi:
                assert not t.any(), (qi, kj)
    for kj in range(n_k):  # dk/dv: nothing before lo, [mid, n_q) fully visible for real rows
        lo, mid, nq = (int(x) for x in pallas_gpu._q_range(p, jnp.int32(kj), bq, bk))
        for qi in range(n_q):
            t = tile(qi, kj)
            if qi < lo or qi >= nq:
                assert not t.any(), (kj, qi)
            if mid <= qi < nq:
                last = min(bq, q_len - qi * bq)
                assert t[:last].all(), (kj, qi)


def _visits(case, seg, tiles):
    q, k, v, _, _ = inputs(case, jnp.float32, 0)
    qs, ks = (None, None) if seg is None else seg
    return pallas_gpu.tile_visits(q, k, v, causal=case.causal, q_segment_ids=qs,
                                  kv_segment_ids=ks, sm_scale=0.1, block_sizes=tiles)


def _expected(case, seg, tiles, dtype=jnp.float32):
    """Tile pairs with a visible pair (numpy, from the masks) per kernel, times the q heads: each
    forward/dq program is one q head, each dk/dv program walks its group of q heads. (The
    default tiles depend on the dtype.)"""
    p = pallas_gpu._plan(*inputs(case, dtype, 0)[:2], case.causal, True, 0.1, tiles, True)
    count = lambda t: visible_tiles(case.q_len, case.kv_len, case.causal, *seg, t[0], t[1])
    return {"forward": count(p.fwd) * case.q_heads, "dq": count(p.dq) * case.q_heads,
            "dkv": count(p.dkv) * case.q_heads}


def test_interpret_key_padding_skips_its_tiles():
    """Rows keeping 30 and 70 of 100 keys (half the batch's keys are padding) run about half the
    tile steps of the unpadded batch in all three kernels, each row with its own bound (GQA dk/dv
    loop over the group; forward and backward tiles differ, so q is padded past whole tiles), and
    the results still match the oracle."""
    case, tiles = Case(2, 100, 100, 2, 1, 32, segments=True), BlockSizes(16, 32, 32, 16)
    padded = key_padded_ids([[100], [100]], [30, 70], 100)
    unpadded = key_padded_ids([[100], [100]], [100, 100], 100)
    got, full = _visits(case, padded, tiles), _visits(case, unpadded, tiles)
    assert got == _expected(case, padded, tiles)
    assert full == _expected(case, unpadded, tiles) == _visits(case, None, tiles)
    for name in got:
        assert 0.4 <= got[name] / full[name] <= 0.6, (name, got, full)
    check_with_segment_ids(_impl(tiles), case, jnp.bfloat16, padded)


def test_interpret_packed_causal_segments_skip_off_diagonal_tiles():
    """Packed causal sequences visit only their segments' diagonal blocks, fewer than the causal
    mask alone; row 0's third segment has only padded keys, so its queries see no key (zeros,
    zero gradients)."""
    case = Case(2, 100, 100, 4, 2, 64, causal=True, segments=True)
    seg = key_padded_ids([[40, 30, 30], [60, 40]], [70, 85], 100)
    got = _visits(case, seg, TILES)
    assert got == _expected(case, seg, TILES)
    causal_only = _visits(case, None, TILES)
    for name in got:
        assert got[name] < 0.8 * causal_only[name], (name, got, causal_only)
    assert check_with_segment_ids(_impl(TILES), case, jnp.float16, seg).any()


@pytest.mark.parametrize("case,dtype,tiles", [
    (Case(1, 300, 300, 4, 1, 80, causal=True, segments=True), jnp.bfloat16, None),
    (Case(1, 1000, 1000, 4, 2, 256, causal=True), jnp.float16, None),
    (Case(1, 333, 200, 4, 4, 64), jnp.float32, None),
    # Forward tiles smaller than the padding: the forward skips a q tile made only of padding.
    (Case(2, 100, 100, 2, 1, 32, causal=True), jnp.bfloat16, BlockSizes(16, 32, 32, 16)),
])
def test_lowers_to_triton_for_cuda(case, dtype, tiles):
    """Without a GPU, the non-interpreted path still lowers to a Triton custom call for CUDA
    (catches unsupported ops and non-power-of-two shapes in the kernels)."""
    q, k, v, do, seg = inputs(case, dtype, 0)
    qs, ks = seg if seg is not None else (None, None)
    plan = pallas_gpu._plan(q, k, case.causal, seg is not None, case.head_dim ** -0.5, tiles,
                            False)
    # Also with tile_visits' counters (the plan's count flag) so they stay lowerable on a GPU.
    for p in (plan, dataclasses.replace(plan, count=True)):
        out, lse = jax.eval_shape(lambda *a: pallas_gpu._forward(p, *a), q, k, v, qs, ks)[:2]
        fwd = jax.jit(lambda *a: pallas_gpu._forward(p, *a)).trace(q, k, v, qs, ks)
        bwd = jax.jit(lambda *a: pallas_gpu._backward(p, *a)).trace(
            q, k, v, qs, ks, jnp.zeros(out.shape, out.dtype), jnp.zeros(lse.shape, lse.dtype), do)
        texts = [t.lower(lowering_platforms=("cuda",)).as_text() for t in (fwd, bwd)]
        assert [t.count("xla.gpu.triton") for t in texts] == [1, 2]


def test_rejects_what_it_cannot_do():
    q = jnp.zeros((1, 8, 2, 64), jnp.float32)
    with pytest.raises(NotImplementedError, match="power-of-two"):
        blockwise_attention(q, q, q, implementation="pallas_gpu", interpret=True,
                            block_sizes=BlockSizes(24, 16))
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="interpret=True"):
            blockwise_attention(q, q, q, implementation="pallas_gpu")


# Compiled on a real GPU with the default tiles, at sizes where tiles, stages and warps matter.
# Seven cases (each compiles three Triton kernels and runs the float64 oracle) to stay well inside
# the GPU check's time limit for all of tests/kernels_pallas.
GPU_CASES = [
    (Case(2, 2048, 2048, 8, 8, 128), jnp.bfloat16),
    (Case(1, 4096, 4096, 8, 2, 128, causal=True), jnp.bfloat16),           # GQA
    (Case(1, 2048, 2048, 8, 1, 64, causal=True), jnp.float16),             # MQA
    (Case(1, 2048, 3072, 4, 4, 64), jnp.bfloat16),                         # q_len != kv_len
    (Case(1, 2048, 2048, 4, 2, 256, causal=True), jnp.float16),
    (Case(1, 2000, 2500, 4, 2, 80, causal=True), jnp.bfloat16),            # padding everywhere
    (Case(2, 2048, 2048, 4, 4, 128, causal=True, segments=True), jnp.float16),
]


@pytest.mark.gpu_only
@pytest.mark.parametrize("case,dtype", GPU_CASES,
                         ids=[f"{c}-{jnp.dtype(d).name}" for c, d in GPU_CASES])
def test_gpu_matches_oracle(case, dtype):
    check_against_oracle(_impl(block_sizes=None, interpret=False), case, dtype)


@pytest.mark.gpu_only
def test_gpu_key_padding_tile_visits():
    """Compiled, with the default tiles: the counters (one int32 per program) agree with the
    masks' counts, and a batch that is half key padding runs about half the tiles."""
    case = Case(2, 2048, 2048, 4, 2, 128, causal=True, segments=True)
    q, k, v, _, _ = inputs(case, jnp.bfloat16, 0)
    padded = key_padded_ids([[2048], [2048]], [700, 1400], 2048)
    unpadded = key_padded_ids([[2048], [2048]], [2048, 2048], 2048)
    visits = lambda seg: pallas_gpu.tile_visits(q, k, v, causal=True, q_segment_ids=seg[0],
                                                kv_segment_ids=seg[1], sm_scale=0.1,
                                                interpret=False)
    got, full = visits(padded), visits(unpadded)
    assert got == _expected(case, padded, None, jnp.bfloat16)
    assert full == _expected(case, unpadded, None, jnp.bfloat16)
    for name in got:
        assert got[name] < 0.8 * full[name], (name, got, full)

"""pallas_tpu (Pallas Mosaic TPU) blockwise attention against the float64 oracle.

On CPU the kernels run in TPU interpret mode (simulated HBM/VMEM and DMAs) with 16 x 128 tiles,
so small shapes still span many tiles: causal block skipping, diagonal masking, padded lengths
and head_dim. Interpret mode costs ~8 s of compiling per case and ~30 ms per grid step, so each
case covers several requirements. Mosaic's own checks run in test_blockwise_pallas_tpu_aot.py;
the `tpu_only` test runs the compiled kernels at a realistic size.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from kernels_pallas.blockwise_attention import BlockSizes, blockwise_attention, reference
from kernels_pallas.blockwise_attention import pallas_tpu
from tests.kernels_pallas.attention_oracle import (TOLERANCE, Case, check_against_oracle,
                                                   forward_and_grads, inputs)

TILES = BlockSizes(16, 128)


def _impl(block_sizes=TILES, interpret=True):
    def impl(q, k, v, *, causal, segment_ids, sm_scale):
        # jit: interpret mode run eagerly re-traces the kernels on every call.
        f = jax.jit(functools.partial(blockwise_attention, causal=causal, sm_scale=sm_scale,
                                      implementation="pallas_tpu", interpret=interpret,
                                      block_sizes=block_sizes))
        return f(q, k, v, segment_ids=segment_ids)
    return impl


INTERPRET_CASES = [
    # q_len 1 / kv_len 7, non-causal, MQA, float16, the default tiles (capped at the lengths).
    (Case(2, 1, 7, 2, 1, 64), jnp.float16, None),
    # 129 (odd: 9 q tiles, 2 kv tiles), causal square: tiles skipped (no compute, no DMA),
    # diagonal tiles masked, fully visible tiles unmasked; head_dim 80 padded to 128; bf16.
    (Case(1, 129, 129, 2, 2, 80, causal=True), jnp.bfloat16, TILES),
    # q_len 40 < kv_len 300 (3 kv tiles, the last padded), causal, GQA; other backward tiles.
    (Case(1, 40, 300, 4, 2, 64, causal=True), jnp.float32, BlockSizes(16, 128, 8, 256)),
    # Causal with q_len 50 > kv_len 40 (the first 10 queries see no key) and segments (the last
    # queries see no key either): zeros and zero gradients there; MQA, bf16.
    (Case(2, 50, 40, 2, 1, 64, causal=True, segments=True), jnp.bfloat16, TILES),
    # Segments, non-causal, GQA, head_dim 128 (no padding), f32.
    (Case(1, 24, 140, 4, 2, 128, segments=True), jnp.float32, TILES),
]


@pytest.mark.parametrize("case,dtype,tiles", INTERPRET_CASES,
                         ids=[f"{c}-{jnp.dtype(d).name}" for c, d, _ in INTERPRET_CASES])
def test_interpret_matches_oracle(case, dtype, tiles):
    check_against_oracle(_impl(tiles), case, dtype)


@pytest.mark.parametrize("q_len,kv_len,bq,bk", [(129, 129, 16, 128), (40, 300, 16, 128),
                                                (300, 40, 128, 16), (20, 7, 8, 8), (64, 64, 16, 16)])
def test_causal_block_flags(q_len, kv_len, bq, bk):
    """Skipped tiles see nothing, unmasked tiles see everything (and no padded key), and the
    clamped index maps point at a computed tile (so a skipped step fetches nothing new)."""
    cfg = pallas_tpu._Config(True, 1.0, q_len, kv_len, False, BlockSizes(bq, bk, bq, bk), True)
    nq, nk = -(-q_len // bq), -(-kv_len // bk)
    vis = np.zeros((nq * bq, nk * bk), bool)
    vis[:q_len, :kv_len] = np.asarray(reference.visible(q_len, kv_len, True))[0, 0]
    tile = lambda x, qi, kj: x[qi * bq:(qi + 1) * bq, kj * bk:(kj + 1) * bk]
    dont_care = np.zeros_like(vis)
    dont_care[q_len:, :kv_len] = True  # padded queries may see real keys or not
    for qi in range(nq):
        for kj in range(nk):
            run, masked = (bool(x) for x in pallas_tpu._block_flags(cfg, qi, kj, bq, bk))
            assert run or not tile(vis, qi, kj).any(), (qi, kj)
            assert masked or (tile(vis, qi, kj) | tile(dont_care, qi, kj)).all(), (qi, kj)
        last = int(pallas_tpu._last_kv_block(cfg, qi, bq, bk))
        seen = vis[qi * bq:(qi + 1) * bq].any(axis=0)
        assert not seen[(last + 1) * bk:].any(), qi
        assert bool(pallas_tpu._block_flags(cfg, qi, last, bq, bk)[0]) or not seen.any(), qi
    for kj in range(nk):
        first = int(pallas_tpu._first_q_block(cfg, kj, bq, bk, nq))
        assert bool(pallas_tpu._block_flags(cfg, first, kj, bq, bk)[0]), kj
        assert not vis[:first * bq, kj * bk:(kj + 1) * bk].any(), kj


def test_unsupported_tiles_fall_through():
    """Hardware tiles must be multiples of 128 lanes; otherwise NotImplementedError lets the
    dispatcher use the xla implementation."""
    q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
    with pytest.raises(NotImplementedError, match="multiple of 128"):
        pallas_tpu.attention(q, q, q, causal=False, q_segment_ids=None, kv_segment_ids=None,
                             sm_scale=0.125, block_sizes=BlockSizes(64, 128), interpret=False)


@pytest.mark.tpu_only
def test_tpu_matches_reference_at_2k():
    """Compiled on a TPU with the default tiles (bf16, 2k tokens, causal GQA with segments),
    against the float32 dense reference on the same TPU (no float64 there)."""
    case = Case(2, 2048, 2048, 8, 2, 128, causal=True, segments=True)
    q, k, v, do, (qs, ks) = inputs(case, jnp.bfloat16, 0)
    kw = dict(causal=True, sm_scale=128 ** -0.5)
    kernel = lambda q, k, v: blockwise_attention(q, k, v, segment_ids=(qs, ks),
                                                 implementation="pallas_tpu", **kw)
    dense = lambda q, k, v: reference.attention(q, k, v, q_segment_ids=qs, kv_segment_ids=ks, **kw)
    got = jax.jit(lambda *a: forward_and_grads(kernel, *a))(q, k, v, do)
    with jax.default_matmul_precision("highest"):
        f32 = lambda x: x.astype(jnp.float32)
        want = jax.jit(lambda *a: forward_and_grads(dense, *a))(f32(q), f32(k), f32(v), f32(do))
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        tol = TOLERANCE[jnp.dtype(jnp.bfloat16)]["out" if name == "out" else "grad"]
        err = np.max(np.abs(g - w)) / np.max(np.abs(w))
        assert np.isfinite(g).all() and err <= tol, (name, err)

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
                                                   forward_and_grads, inputs, oracle)

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
    # queries see no key either, and their q tile no kv tile): zeros and zero gradients there;
    # MQA, bf16. (Segments without causality, GQA and head_dim 128 in place: test_tile_visits.)
    (Case(2, 50, 40, 2, 1, 64, causal=True, segments=True), jnp.bfloat16, TILES),
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


def _needed_tiles(vis, bq, bk):
    """[b, q_len, kv_len] visibility -> [b, q tiles, kv tiles]: tiles holding a visible pair."""
    b, lq, lk = vis.shape
    nq, nk = -(-lq // bq), -(-lk // bk)
    padded = np.zeros((b, nq * bq, nk * bk), bool)
    padded[:, :lq, :lk] = vis
    return padded.reshape(b, nq, bq, nk, bk).any(axis=(2, 4))


def _visibility(lq, lk, causal, qs, ks):
    """The dense mask in numpy, straight from the definitions (not from the kernel's bounds)."""
    vis = np.asarray(qs)[:, :, None] == np.asarray(ks)[:, None, :]
    if causal:
        vis &= np.arange(lk)[None, None, :] <= np.arange(lq)[None, :, None] + (lk - lq)
    return vis


def _key_padded(batch, length, valid):
    """Key padding folded into segment ids as fintrans.ops does: queries 0, padded keys -1."""
    qs = np.zeros((batch, length), np.int32)
    ks = np.where(np.arange(length)[None, :] < np.asarray(valid)[:, None], 0, -1).astype(np.int32)
    return qs, ks


def _packed(lengths):
    """Packed sequences: sorted segment ids, one per sequence."""
    return np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)[None, :]


TILE_VISIT_CASES = [
    # Half-padded batch (valid keys 32 and 40 of 64), non-causal, GQA, head_dim 128 read in
    # place, f32: the q tiles visit only the kv tiles with valid keys; the outputs and gradients
    # are also checked against the oracle (the segment path without causality).
    ("half_padded", Case(2, 64, 64, 2, 1, 128), BlockSizes(32, 16, 32, 16), _key_padded(2, 64, (32, 40))),
    # Causal packed segments (20, 30, 14 tokens), MQA, other backward tiles: tiles below the
    # diagonal whose segments differ are skipped as well as those above it.
    ("causal_packed", Case(1, 64, 64, 2, 1, 64, causal=True), BlockSizes(16, 16, 8, 16),
     (_packed((20, 30, 14)),) * 2),
]


@pytest.mark.parametrize("name,case,tiles,seg", TILE_VISIT_CASES, ids=[c[0] for c in TILE_VISIT_CASES])
def test_tile_visits(name, case, tiles, seg):
    """The pairs each kernel computes are exactly the tile pairs holding a visible pair (derived
    here from the dense mask), so segment ids and key padding skip tiles as causality does."""
    q, k, v, do, _ = inputs(case, jnp.float32, 1)
    qs, ks = (jnp.asarray(x) for x in seg)
    count = jax.jit(functools.partial(pallas_tpu.tile_visits, causal=case.causal, sm_scale=None,
                                      block_sizes=tiles))
    got = {key: int(n) for key, n in count(q, k, v, q_segment_ids=qs, kv_segment_ids=ks).items()}
    vis = _visibility(case.q_len, case.kv_len, case.causal, qs, ks)
    forward = case.q_heads * int(_needed_tiles(vis, tiles.block_q, tiles.block_kv).sum())
    backward = case.q_heads * int(_needed_tiles(vis, tiles.block_q_bwd, tiles.block_kv_bwd).sum())
    assert got == {"forward": forward, "dq": backward, "dkv": backward}
    # Without the segment ranges only causality would skip.
    plain = _needed_tiles(_visibility(case.q_len, case.kv_len, case.causal, 0 * qs, 0 * ks),
                          tiles.block_q, tiles.block_kv).sum() * case.q_heads
    if name == "half_padded":
        # About half: the share of kv tiles holding a valid (unpadded) key.
        share = _needed_tiles(np.asarray(ks)[:, None, :] >= 0, 1, tiles.block_kv).mean()
        assert forward == plain * share and share <= 0.65
        got = forward_and_grads(
            lambda q, k, v: _impl(tiles)(q, k, v, causal=False, segment_ids=(qs, ks), sm_scale=None),
            q, k, v, do)
        want = oracle(case, q, k, v, do, (qs, ks), case.head_dim ** -0.5)
        for what, g, w in zip(("out", "dq", "dk", "dv"), got, want):
            tol = TOLERANCE[jnp.dtype(jnp.float32)]["out" if what == "out" else "grad"]
            err = np.max(np.abs(np.asarray(g, np.float64) - w)) / np.max(np.abs(w))
            assert err <= tol, (what, err)
    else:
        assert forward < plain


@pytest.mark.parametrize("causal", [False, True])
def test_segment_range_index_maps(causal):
    """With segment ranges (and causality), every reduction step fetches a tile that some step
    of the same reduction computes (or, when none does, a single one): skipped steps issue no
    DMA, and no computed tile is missed or fetched twice."""
    rng = np.random.default_rng(0)
    lq, lk, bq, bk = 80, 96, 16, 16
    qs = np.sort(rng.integers(0, 5, (2, lq)), axis=1).astype(np.int32)
    ks = np.sort(rng.integers(1, 6, (2, lk)), axis=1).astype(np.int32)
    nq, nk = lq // bq, lk // bk
    cfg = pallas_tpu._Config(causal, 1.0, lq, lk, True, BlockSizes(bq, bk, bq, bk), True)
    loops = [  # (rows, steps, index map, row ids and tile, step ids and tile, q is the row)
        (nq, nk, pallas_tpu._kv_visit(cfg, bq, bk, nq), (qs, bq), (ks, bk), True),
        (nk, nq, pallas_tpu._q_visit(cfg, bq, bk, nq, nk), (ks, bk), (qs, bq), False)]
    for n_rows, n_steps, visit, (row_ids, row_tile), (step_ids, step_tile), q_rows in loops:
        lo, hi = (np.asarray(x) for x in pallas_tpu._ranges(
            row_ids, step_ids, row_tile, step_tile, n_rows, n_steps))
        for b in range(2):
            for r in range(n_rows):
                fetched = [int(visit(b, r, t, lo, hi)) for t in range(n_steps)]
                computed = []
                for t in range(n_steps):
                    qi, kj = (r, t) if q_rows else (t, r)
                    run = bool(pallas_tpu._block_flags(cfg, qi, kj, bq, bk)[0])
                    if run and lo[b * n_rows + r] <= t < hi[b * n_rows + r]:
                        computed.append(t)
                        assert fetched[t] == t
                assert fetched == sorted(fetched)  # monotone: no tile is fetched twice
                assert set(fetched) == (set(computed) or {fetched[0]}), (b, r, fetched, computed)


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

"""The XLA blockwise implementation (the CPU fallback) against the float64 oracle, and the
properties it exists for: O(length) memory, and tiles that are never computed (causal, padding,
segment ids), counted by the kernel itself (tile_visits) against counts from the dense masks.
The tile-count helpers here are shared with test_blockwise_pallas_gpu.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.blockwise_attention import BlockSizes, blockwise_attention
from kernels_pallas.blockwise_attention import xla as xla_impl
from tests.kernels_pallas.attention_oracle import (TOLERANCE, Case, check_against_oracle,
                                                   forward_and_grads, inputs, oracle, visible_rows)

# Small tiles so short sequences still span many of them (and the backward's differ from the
# forward's, which exercises the shared padding).
TILES = BlockSizes(block_q=16, block_kv=32, block_q_bwd=32, block_kv_bwd=16)

CASES = [
    Case(2, 7, 7, 4, 4, 32),
    Case(1, 1, 129, 4, 2, 16, causal=True),  # one query: the last position, sees every key
    Case(1, 129, 100, 2, 1, 16, causal=True),  # more queries than keys: the first see nothing
    Case(2, 100, 257, 4, 1, 64, causal=True),  # MQA, queries aligned to the end of the keys
    Case(2, 129, 129, 2, 2, 32, causal=True, segments=True),
    Case(1, 50, 70, 4, 2, 80, segments=True),
    Case(1, 1000, 1000, 2, 1, 32, causal=True),
]


def _xla(block_sizes):
    return lambda q, k, v, **kw: blockwise_attention(q, k, v, implementation="xla",
                                                     block_sizes=block_sizes, **kw)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matches_oracle(case, dtype):
    check_against_oracle(_xla(TILES), case, dtype, seed=hash((str(case), dtype)) % 2**31)


@pytest.mark.parametrize("case", [CASES[3], CASES[4]], ids=str)
def test_float16_and_default_tiles(case):
    check_against_oracle(_xla(None), case, "float16", seed=5)


def test_custom_scale():
    check_against_oracle(_xla(TILES), Case(1, 33, 40, 2, 2, 16, causal=True), "float32", sm_scale=0.05)


def _fwd_bwd_temp_bytes(length, causal=True):
    x = jax.ShapeDtypeStruct((1, length, 4, 64), jnp.float32)
    loss = lambda q, k, v: blockwise_attention(q, k, v, causal=causal, implementation="xla").sum()
    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return step.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


def test_memory_grows_linearly_with_length():
    small, large = _fwd_bwd_temp_bytes(4096), _fwd_bwd_temp_bytes(16384)
    dense_scores = 4 * 16384 * 16384 * 4  # one float32 [heads, L, L] score matrix at 16k
    assert large < dense_scores / 20, large
    assert large / small < 4 * 1.2, (small, large)  # 4x the length, about 4x the memory


# --- Tile skipping, counted by the kernels (tile_visits) against counts from the dense masks ---

def visible_tiles(q_len, kv_len, causal, qs, ks, block_q, block_kv) -> int:
    """(batch element, q tile, kv tile) triples holding at least one visible (query, key) pair,
    counted with numpy from the dense mask: what an exact tile-skipping loop computes."""
    rows, cols = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
    vis = (cols <= rows + kv_len - q_len) if causal else np.ones((q_len, kv_len), bool)
    vis = vis[None] & (np.asarray(qs)[:, :, None] == np.asarray(ks)[:, None, :])
    nq, nk = -(-q_len // block_q), -(-kv_len // block_kv)
    vis = np.pad(vis, ((0, 0), (0, nq * block_q - q_len), (0, nk * block_kv - kv_len)))
    return int(vis.reshape(len(vis), nq, block_q, nk, block_kv).any(axis=(2, 4)).sum())


def key_padded_ids(segment_lengths, kv_valid, length):
    """(q ids, kv ids) [batch, length] for packed segments (lengths per row, summing to
    `length`) with a key-padding mask folded in as fintrans.ops.attention._segment_pair does:
    keys at or past kv_valid[row] get -1, an id no query has."""
    qs = np.stack([np.repeat(np.arange(len(row)), row) for row in segment_lengths])
    assert qs.shape[1] == length
    ks = np.where(np.arange(length)[None, :] < np.asarray(kv_valid)[:, None], qs, -1)
    return jnp.asarray(qs, jnp.int32), jnp.asarray(ks, jnp.int32)


def check_with_segment_ids(impl, case, dtype, seg, seed=0):
    """Output and gradients of impl with these segment ids match the float64 oracle; queries
    that see no key give exact zeros (attention_oracle.check_against_oracle draws its own ids)."""
    dtype = jnp.dtype(dtype)
    q, k, v, do, _ = inputs(case, dtype, seed)
    fn = lambda q, k, v: impl(q, k, v, causal=case.causal, segment_ids=seg)
    got = forward_and_grads(fn, q, k, v, do)
    want = oracle(case, q, k, v, do, seg, case.head_dim ** -0.5)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        g = np.asarray(g.astype(jnp.float32), np.float64)
        err = float(np.max(np.abs(g - w))) / max(float(np.max(np.abs(w))), 1e-6)
        tol = TOLERANCE[dtype]["out" if name == "out" else "grad"]
        assert err <= tol, f"{name}: max error {err:.2e} > {tol:.0e} for {case} {dtype}"
    blind = ~visible_rows(case, seg)
    for name, g in (("out", got[0]), ("dq", got[1])):
        assert np.all(np.asarray(g.astype(jnp.float32))[blind] == 0), name
    return blind


def _visits(case, seg, block_sizes=TILES):
    q, k, v, _, _ = inputs(case, jnp.float32, 0)
    qs, ks = (None, None) if seg is None else seg
    return xla_impl.tile_visits(q, k, v, causal=case.causal, q_segment_ids=qs, kv_segment_ids=ks,
                                sm_scale=0.1, block_sizes=block_sizes)


def _expected(case, seg, block_sizes=TILES):
    if seg is None:  # no segment ids: every query shares the one segment
        seg = np.zeros((case.batch, case.q_len)), np.zeros((case.batch, case.kv_len))
    count = lambda bq, bk: visible_tiles(case.q_len, case.kv_len, case.causal, *seg, bq, bk)
    return {"forward": count(block_sizes.block_q, block_sizes.block_kv),
            "backward": count(block_sizes.block_q_bwd, block_sizes.block_kv_bwd)}


def test_causal_skips_the_tiles_above_the_diagonal():
    """Without segment ids: the causal loops run the diagonal and below only, and no tile made
    only of padding (100 rounds up to 128 here), for the whole batch per step."""
    for causal in (False, True):
        case = Case(2, 100, 100, 2, 1, 16, causal=causal)
        assert _visits(case, None) == _expected(case, None)
    full = _expected(Case(2, 100, 100, 2, 1, 16), None)["forward"]
    assert full == 2 * 7 * 4  # 7 q tiles of 16 and 4 kv tiles of 32 per batch element


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_key_padding_skips_its_tiles(dtype):
    """A batch whose keys are half padding (rows keep 30 and 70 of 100 keys) runs about half the
    tile steps of the same batch unpadded, in both passes; each row gets its own bound (a bound
    common to the batch would cost the longest row's), and the results still match the oracle."""
    case = Case(2, 100, 100, 2, 1, 32, segments=True)
    padded = key_padded_ids([[100], [100]], [30, 70], 100)
    unpadded = key_padded_ids([[100], [100]], [100, 100], 100)
    got, full = _visits(case, padded), _visits(case, unpadded)
    assert got == _expected(case, padded)
    assert full == _expected(case, unpadded) == _visits(case, None)
    for name in got:
        assert 0.4 <= got[name] / full[name] <= 0.6, (name, got, full)
    check_with_segment_ids(_xla(TILES), case, dtype, padded)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_causal_segments_skip_off_diagonal_tiles(dtype):
    """Packed causal sequences visit only the tiles on their segments' diagonal blocks: fewer
    than the causal mask alone. A segment whose keys are all padding (row 0's third) has queries
    that see no key: zeros and zero gradients."""
    case = Case(2, 100, 100, 2, 1, 32, causal=True, segments=True)
    seg = key_padded_ids([[40, 30, 30], [60, 40]], [70, 85], 100)
    got = _visits(case, seg)
    assert got == _expected(case, seg)
    causal_only = _visits(case, None)
    for name in got:
        assert got[name] < 0.8 * causal_only[name], (name, got, causal_only)
    assert check_with_segment_ids(_xla(TILES), case, dtype, seg).any()


def test_jit_and_vmap():
    q = jax.random.normal(jax.random.key(0), (3, 2, 40, 2, 16))
    f = lambda q: blockwise_attention(q, q, q, causal=True, implementation="xla",
                                      block_sizes=BlockSizes(16, 16))
    batched = jax.jit(jax.vmap(f))(q)
    np.testing.assert_allclose(batched[1], f(q[1]), atol=1e-6)

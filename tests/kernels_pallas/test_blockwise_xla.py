"""The XLA blockwise implementation (the CPU fallback) against the float64 oracle, and the
properties it exists for: O(length) memory and causal tiles that are never computed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.blockwise_attention import BlockSizes, blockwise_attention
from tests.kernels_pallas.attention_oracle import Case, check_against_oracle

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


def test_causal_skips_the_tiles_above_the_diagonal():
    """Visible-tile counting through the loop bounds: the causal forward runs about half the
    tile steps of the full one (counted with a host callback in each step)."""
    steps = []

    def count(*_):
        steps.append(1)

    import kernels_pallas.blockwise_attention.xla as xla_impl
    original = xla_impl._visible

    def counting_visible(*args):
        jax.debug.callback(count)
        return original(*args)

    q = jnp.ones((1, 256, 1, 8))
    results = {}
    try:
        xla_impl._visible = counting_visible
        for causal in (False, True):
            steps.clear()
            jax.block_until_ready(blockwise_attention(q, q, q, causal=causal, implementation="xla",
                                                      block_sizes=BlockSizes(32, 32)))
            results[causal] = len(steps)
    finally:
        xla_impl._visible = original
    assert results[False] == 8 * 8
    assert results[True] == 8 * 9 // 2  # the diagonal and below


def test_jit_and_vmap():
    q = jax.random.normal(jax.random.key(0), (3, 2, 40, 2, 16))
    f = lambda q: blockwise_attention(q, q, q, causal=True, implementation="xla",
                                      block_sizes=BlockSizes(16, 16))
    batched = jax.jit(jax.vmap(f))(q)
    np.testing.assert_allclose(batched[1], f(q[1]), atol=1e-6)

"""pallas_gpu (Pallas + Triton lowering) lean decode attention against the float64 oracle.

On CPU the kernel runs in interpret mode with 16- or 32-token units, so small caches still give
many units and ranges that start, end and cross segments (num_programs 1, 3, 7). The same kernel
is lowered to Triton IR for CUDA (no GPU needed), and `gpu_only` tests run it compiled at
realistic sizes.
"""
from __future__ import annotations

import pytest
import jax
import jax.numpy as jnp

from kernels_pallas.lean_decode_attention import IMPLEMENTATIONS, PREFERENCE, lean_decode_attention
from kernels_pallas.lean_decode_attention import pallas_gpu
from tests.kernels_pallas.decode_oracle import check, inputs, oracle


def _run(q, k, v, lens, **kw):
    return lean_decode_attention(q, k, v, lens, implementation="pallas_gpu", interpret=True, **kw)


# (batch, max_len, q_heads, kv_heads, head_dim, lengths, block_k). Each (case, programs, dtype)
# is one interpret-mode compile (~2 s on CPU), so the cases each cover several requirements.
CASES = [
    (4, 100, 8, 2, 64, [0, 1, 100, 37], 16),      # GQA 4; empty, single-token and full; clamped last tile
    (5, 300, 8, 1, 80, [300, 7, 0, 12, 5], 32),   # MQA 8; one long among short; head_dim 80 -> 128
    (2, 64, 4, 4, 32, [64, 64], None),            # uniform, MHA, default block_k (capped at 64)
]


@pytest.mark.parametrize("num_programs", [1, 3, 7])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}_L{c[1]}_h{c[2]}x{c[3]}_d{c[4]}")
def test_interpret_matches_oracle_float32(case, num_programs):
    b, max_len, hq, hkv, d, lengths, bk = case
    q, k, v, lens = inputs(b, max_len, hq, hkv, d, lengths, "float32", seed=num_programs)
    got = _run(q, k, v, lens, block_k=bk, num_programs=num_programs)
    assert got.shape == q.shape and got.dtype == q.dtype
    check(got, oracle(q, k, v, lens), "float32", lengths)


@pytest.mark.parametrize("case,num_programs", [(CASES[0], 7), (CASES[1], 3)],
                         ids=["gqa_p7", "mqa_p3"])
def test_interpret_matches_oracle_bfloat16(case, num_programs):
    b, max_len, hq, hkv, d, lengths, bk = case
    q, k, v, lens = inputs(b, max_len, hq, hkv, d, lengths, "bfloat16", seed=num_programs)
    got = _run(q, k, v, lens, block_k=bk, num_programs=num_programs)
    assert got.dtype == jnp.bfloat16
    check(got, oracle(q, k, v, lens), "bfloat16", lengths)


def test_cache_shorter_than_a_tile_and_more_programs_than_units():
    """max_len 10 < 16 (the cache is padded to one tile); 5 units over 7 programs (some idle)."""
    lengths = [10, 3, 0]
    q, k, v, lens = inputs(3, 10, 4, 2, 16, lengths, "float32", seed=0)
    check(_run(q, k, v, lens, num_programs=7, sm_scale=0.3), oracle(q, k, v, lens, 0.3),
          "float32", lengths)


@pytest.mark.parametrize("shape,dtype", [
    ((1, 32768, 32, 8, 128), jnp.bfloat16),   # the realistic size: default block_k 64
    ((3, 1000, 8, 1, 80), jnp.float32),       # MQA, padded head_dim, float32 dots
    ((2, 8, 4, 4, 256), jnp.float16),         # d=256 (block_k 32), cache shorter than a tile
])
def test_lowers_to_triton_for_cuda(shape, dtype):
    """Without a GPU, the non-interpreted path still lowers to a Triton custom call for CUDA
    (catches ops the Triton lowering lacks, scalar/dynamic indexing, non-power-of-two shapes)."""
    b, max_len, hq, hkv, d = shape
    q = jax.ShapeDtypeStruct((b, hq, d), dtype)
    cache = jax.ShapeDtypeStruct((b, max_len, hkv, d), dtype)
    lens = jax.ShapeDtypeStruct((b,), jnp.int32)
    bk = max(16, min(pallas_gpu.DEFAULT_BLOCK_K[max(16, pallas_gpu._pow2(d))],
                     pallas_gpu._floor_pow2(max_len)))
    fn = lambda *a: pallas_gpu._attention(*a, sm_scale=d ** -0.5, bk=bk, num_programs=264,
                                          interpret=False)
    text = jax.jit(fn).trace(q, cache, cache, lens).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 1


def test_registered_and_preferred_on_gpu():
    assert "pallas_gpu" in IMPLEMENTATIONS
    assert PREFERENCE["gpu"] == ("cudnn", "pallas_mosaic_gpu", "pallas_gpu", "xla")


def test_rejects_what_it_cannot_do():
    q, k, v, lens = inputs(1, 32, 65, 1, 16, [32], "float32", seed=0)
    with pytest.raises(NotImplementedError, match="query heads per kv head"):
        _run(q, k, v, lens, num_programs=2)
    q, k, v, lens = inputs(1, 32, 2, 1, 16, [32], "float32", seed=0)
    with pytest.raises(NotImplementedError, match="power-of-two block_k"):
        _run(q, k, v, lens, num_programs=2, block_k=24)
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="interpret=True"):
            lean_decode_attention(q, k, v, lens, implementation="pallas_gpu", num_programs=2)


# Compiled on a real GPU with the default block_k and num_programs (2 per SM).
@pytest.mark.gpu_only
@pytest.mark.parametrize("shape,lengths", [
    ((1, 32768, 32, 8, 128), [32768]),                              # one long context
    ((6, 32768, 32, 8, 128), [32768, 1, 0, 4097, 30000, 64]),       # ragged batch
], ids=["b1_32k", "ragged"])
def test_gpu_compiled_matches_oracle(shape, lengths):
    b, max_len, hq, hkv, d = shape
    q, k, v, lens = inputs(b, max_len, hq, hkv, d, lengths, "bfloat16", seed=0)
    got = lean_decode_attention(q, k, v, lens, implementation="pallas_gpu")
    check(got, oracle(q, k, v, lens), "bfloat16", lengths)
    # Dispatch with implementation=None picks this kernel on a GPU and agrees with it.
    same = lean_decode_attention(q, k, v, lens)
    assert jnp.array_equal(same, got)

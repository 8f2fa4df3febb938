"""pallas_mosaic_gpu (Pallas Mosaic GPU, Hopper) lean decode attention against the float64 oracle.

On CPU both kernels (the stream-K decode with its producer warpgroup's TMA ring, and the merge of
the partials) run in Pallas's GPU interpret mode, with 64-token units so small caches give several
units and program ranges that start, end and cross segments. The same kernels are lowered to
Mosaic GPU for CUDA at the benchmark's sizes, and `gpu_only` tests run them compiled.
"""
from __future__ import annotations

import pytest
import jax
import jax.numpy as jnp

from kernels_pallas import _mgpu
from kernels_pallas.lean_decode_attention import lean_decode_attention
from kernels_pallas.lean_decode_attention import pallas_mosaic_gpu as mg
from tests.kernels_pallas.decode_oracle import check, inputs, oracle


def _run(q, k, v, lens, **kw):
    return lean_decode_attention(q, k, v, lens, implementation="pallas_mosaic_gpu", interpret=True, **kw)


# (batch, max_len, q_heads, kv_heads, head_dim, lengths, block_k, num_programs, dtype); each is
# one interpret-mode run of a few seconds, so each covers several requirements.
CASES = [
    # GQA 2; empty, single-token, full and partial sequences; the last tile's read start clamped
    # (200 is not a multiple of 64); 3 programs whose ranges cross segments.
    (4, 200, 4, 2, 64, [0, 1, 200, 77], 64, 3, jnp.bfloat16),
    # MQA 8 over one kv head, one long sequence among short ones split over programs; 4 units
    # of the long one stream through the 4-slot ring and wrap it; head_dim 128; float16.
    (3, 300, 8, 1, 128, [5, 300, 0], 64, 7, jnp.float16),
    # More programs than units (idle programs write no slot and the merge skips them); a cache
    # shorter than one 128-token tile (padded to it).
    (2, 100, 4, 4, 64, [100, 3], 128, 7, jnp.bfloat16),
]


@pytest.mark.parametrize("b,max_len,hq,hkv,d,lengths,bk,n_prog,dtype", CASES,
                         ids=[f"b{c[0]}_L{c[1]}_h{c[2]}x{c[3]}_d{c[4]}_P{c[7]}" for c in CASES])
def test_interpret_matches_oracle(b, max_len, hq, hkv, d, lengths, bk, n_prog, dtype):
    q, k, v, lens = inputs(b, max_len, hq, hkv, d, lengths, dtype, seed=n_prog)
    got = _run(q, k, v, lens, block_k=bk, num_programs=n_prog)
    assert got.shape == q.shape and got.dtype == q.dtype
    check(got, oracle(q, k, v, lens), dtype, lengths)


@pytest.mark.parametrize("shape", [(1, 131072, 32, 8, 128), (8, 131072, 32, 8, 64)],
                         ids=["b1_128k_d128", "b8_128k_d64"])
def test_lowers_to_mosaic_gpu_for_cuda(shape, monkeypatch):
    """Without a GPU, both kernels lower to Mosaic GPU for CUDA (layouts, shared memory, TMA)."""
    monkeypatch.setattr(_mgpu, "check_device", lambda *a: None)
    b, max_len, hq, hkv, d = shape
    S = jax.ShapeDtypeStruct
    fn = lambda q, k, v, n: mg.attention(q, k, v, n, sm_scale=d ** -0.5, num_programs=264)
    cache = S((b, max_len, hkv, d), jnp.bfloat16)
    text = jax.jit(fn).trace(S((b, hq, d), jnp.bfloat16), cache, cache, S((b,), jnp.int32)).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count("@mosaic_gpu") == 2


def test_rejects_what_it_cannot_do():
    q, k, v, lens = inputs(1, 64, 2, 1, 64, [64], "float32", seed=0)
    with pytest.raises(NotImplementedError, match="bfloat16 or float16"):
        _run(q, k, v, lens, num_programs=2)
    q, k, v, lens = inputs(1, 64, 65, 1, 64, [64], "bfloat16", seed=0)
    with pytest.raises(NotImplementedError, match="query heads per kv head"):
        _run(q, k, v, lens, num_programs=2)
    q, k, v, lens = inputs(1, 64, 2, 1, 64, [64], "bfloat16", seed=0)
    with pytest.raises(NotImplementedError, match="block_k"):
        _run(q, k, v, lens, num_programs=2, block_k=96)
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="interpret=True"):
            lean_decode_attention(q, k, v, lens, implementation="pallas_mosaic_gpu", num_programs=2)


@pytest.mark.gpu_only
@pytest.mark.parametrize("shape,lengths", [
    ((1, 131072, 32, 8, 128), [131072]),                                  # the decode target
    ((6, 32768, 32, 8, 64), [32768, 1, 0, 4097, 30000, 64]),
], ids=["b1_128k", "ragged_d64"])
def test_gpu_compiled_matches_oracle(shape, lengths):
    b, max_len, hq, hkv, d = shape
    q, k, v, lens = inputs(b, max_len, hq, hkv, d, lengths, "bfloat16", seed=0)
    got = lean_decode_attention(q, k, v, lens, implementation="pallas_mosaic_gpu")
    check(got, oracle(q, k, v, lens), "bfloat16", lengths)

"""pallas_gpu (Pallas + Triton lowering) grouped attention against the float64 dense oracle.

On CPU the kernels run in interpret mode at tiny shapes that still exercise what matters: the
(group, head) loop of a program, a last program with fewer groups (num_groups not a multiple of
groups_per_block), several query tiles per group, group sizes that are not powers of two (144:
key and row pieces 128 + 16; 40: pieces 32 + 16, the last masked past 40), head_dim padded to a
power of two (24 -> 32), float32 and bfloat16. The same kernels are lowered to Triton for CUDA
(no GPU needed), and a `gpu_only` test runs them compiled at the benchmark's size.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from kernels_pallas.flat_window_attention import grouped_attention, pallas_gpu, reference
from tests.kernels_pallas.flat_window_oracle import TOLERANCE, check_against_oracle, forward_and_grads, inputs

def _impl(groups_per_block, interpret=True):
    return functools.partial(grouped_attention, implementation="pallas_gpu", interpret=interpret,
                             groups_per_block=groups_per_block)


# (num_groups, group_size, heads, head_dim), dtype, groups_per_block. Each case covers several
# requirements (interpret mode costs seconds of compiling per case).
INTERPRET_CASES = [
    # 40 (not a multiple of 16): key and row pieces 32 + 16, the last one masked past 40 (a
    # group of 32, one power-of-two piece, takes the same path as 64 below); head_dim 64;
    # 3 programs, the last with 1 group.
    ((5, 40, 2, 64), jnp.float32, 2),
    # 2 programs, the last with 1 group; 64 rows in 1 tile; 3 heads (odd); bf16.
    ((3, 64, 3, 16), jnp.bfloat16, 2),
    # 144: key pieces 128 + 16; query rows 2 x 64 + 16 forward, 4 x 32 + 16 backward; head_dim
    # 24 padded to 32 (masked columns); 3 programs of 1 group.
    ((3, 144, 2, 24), jnp.float32, 1),
    # 256: 4 forward / 8 backward query tiles; the backward accumulates dk, dv over them; bf16.
    ((2, 256, 1, 16), jnp.bfloat16, 1),
]


@pytest.mark.parametrize("shape,dtype,gpb", INTERPRET_CASES,
                         ids=[f"{'x'.join(map(str, s))}-{jnp.dtype(d).name}-gpb{g}"
                              for s, d, g in INTERPRET_CASES])
def test_interpret_matches_oracle(shape, dtype, gpb):
    check_against_oracle(_impl(gpb), shape, dtype, primal=shape[1] == 64)


@pytest.mark.parametrize("shape,dtype", [((2048, 128, 8, 16), jnp.bfloat16),
                                         ((1000, 144, 8, 16), jnp.float16),
                                         ((77, 256, 2, 64), jnp.float32),
                                         ((33, 32, 8, 16), jnp.bfloat16),
                                         ((9, 40, 3, 24), jnp.bfloat16)])
def test_lowers_to_triton_for_cuda(shape, dtype):
    """Without a GPU, the compiled path still lowers to Triton custom calls for CUDA: the
    forward kernel (with and without the lse residual) and the backward kernel (catches ops the
    Triton lowering rejects and tiles that are not powers of two)."""
    q = jax.ShapeDtypeStruct(shape, dtype)
    p = pallas_gpu._plan(q, shape[-1] ** -0.5, None, False)
    out, lse = jax.eval_shape(lambda *a: pallas_gpu._forward(p, *a), q, q, q)
    assert lse.shape == (shape[0], shape[2], shape[1])
    fwd = jax.jit(lambda *a: pallas_gpu._forward(p, *a)).trace(q, q, q)
    primal = jax.jit(lambda *a: pallas_gpu._forward(p, *a, False)).trace(q, q, q)
    bwd = jax.jit(lambda *a: pallas_gpu._backward(p, *a)).trace(q, q, q, out, lse, q)
    texts = [t.lower(lowering_platforms=("cuda",)).as_text() for t in (fwd, primal, bwd)]
    assert [t.count("xla.gpu.triton") for t in texts] == [1, 1, 1]


def test_tiling_rules():
    """Keys and query rows are cut into power-of-two pieces covering S rounded up to 16 (no
    padding to the next power of two); full query tiles keep the [bq, S16] f32 score tile within
    16384 elements forward and 8192 backward; groups_per_block gives ~256 rows a head and
    >= 1024 programs when there are enough groups."""
    assert pallas_gpu._pieces(0, 144) == ((0, 128), (128, 16))
    assert pallas_gpu._pieces(0, 208) == ((0, 128), (128, 64), (192, 16))
    assert pallas_gpu._pieces(128, 16) == ((128, 16),)
    for (s, d_pad), (fwd, bwd) in pallas_gpu.DEFAULTS.items():
        s16 = -(-s // 16) * 16
        for launch, budget in ((fwd, 16384), (bwd, 8192)):
            assert launch.bq >= 16 and launch.bq & (launch.bq - 1) == 0
            assert launch.bq * s16 <= budget or launch.bq == 16
            assert 2 * launch.bq * s16 > budget or launch.bq >= s  # the largest that fits
    assert pallas_gpu.DEFAULTS[(128, 16)][0].bq == 128  # the anchor's group: one forward tile
    assert pallas_gpu.DEFAULTS[(144, 16)][0].bq == 64   # 2 x 64 + a piece of 16
    assert pallas_gpu.default_groups_per_block(2048, 128) == 2   # the anchor: 1024 programs
    assert pallas_gpu.default_groups_per_block(4096, 64) == 4
    assert pallas_gpu.default_groups_per_block(1821, 144) == 1
    assert pallas_gpu.default_groups_per_block(5, 32) == 1


def test_rejects_what_it_cannot_do():
    """NotImplementedError (dispatch falls through to xla) for inputs the kernel does not take;
    RuntimeError when asked to compile without a GPU."""
    with pytest.raises(NotImplementedError, match="registers"):
        q = jnp.zeros((1, 1024, 1, 64), jnp.float32)
        pallas_gpu.attention(q, q, q, sm_scale=0.125, interpret=True)
    with jax.enable_x64(True):
        q = jnp.zeros((1, 32, 1, 16), jnp.float64)
        with pytest.raises(NotImplementedError, match="float64"):
            pallas_gpu.attention(q, q, q, sm_scale=0.25, interpret=True)
    if jax.default_backend() != "gpu":
        q = jnp.zeros((1, 32, 1, 16), jnp.float32)
        with pytest.raises(RuntimeError, match="interpret=True"):
            grouped_attention(q, q, q, implementation="pallas_gpu")


# Compiled on a real GPU with the defaults, at the benchmark's shape (262,144 tokens, 8 heads of
# 16; groups of 128 and 144), against the float32 dense reference on the same GPU.
GPU_CASES = [((2048, 128, 8, 16), jnp.bfloat16), ((1821, 144, 8, 16), jnp.float16),
             ((4096, 64, 8, 16), jnp.float32), ((300, 256, 4, 64), jnp.bfloat16)]


@pytest.mark.gpu_only
@pytest.mark.parametrize("shape,dtype", GPU_CASES,
                         ids=[f"{'x'.join(map(str, s))}-{jnp.dtype(d).name}" for s, d in GPU_CASES])
def test_gpu_matches_reference(shape, dtype):
    q, k, v, do = inputs(shape, dtype, 1)
    kernel = functools.partial(grouped_attention, implementation="pallas_gpu")
    got = jax.jit(lambda *a: forward_and_grads(kernel, *a))(q, k, v, do)
    dense = functools.partial(reference.attention, sm_scale=shape[-1] ** -0.5)
    with jax.default_matmul_precision("highest"):
        f32 = lambda x: x.astype(jnp.float32)
        want = jax.jit(lambda *a: forward_and_grads(dense, *a))(f32(q), f32(k), f32(v), f32(do))
    tol = max(TOLERANCE[jnp.dtype(dtype)], 2e-5)  # the f32 reference rounds too
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        err = np.max(np.abs(g - w)) / np.max(np.abs(w))
        assert np.isfinite(g).all() and err <= tol, (name, err)

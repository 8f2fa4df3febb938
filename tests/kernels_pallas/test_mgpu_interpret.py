"""kernels_pallas._mgpu_interpret: each operand form added to jax's GPU interpret mode does what the
hardware does, checked against numpy with small Mosaic GPU kernels (a second or two each)."""
from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels_pallas import _mgpu
from kernels_pallas._mgpu_interpret import interpret_params

M = 64
TILED = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def _draw(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32)).astype(jnp.bfloat16)


def _f32(x):
    return np.asarray(x.astype(jnp.float32), np.float64)


@pytest.mark.parametrize("form", ["transposed_b", "register_a", "accumulator_store"])
def test_wgmma_operand_forms(form):
    """acc += a @ b with B read through a transposed view, A from registers, or an accumulator
    that re-enters with a value stored into it (the loop-carried FlashAttention accumulator)."""
    a, b, init = _draw(0, M, 64), _draw(1, 64, 64), _draw(2, M, 64).astype(jnp.float32)

    def kernel(a_ref, b_ref, init_ref, o_ref, a_smem, b_smem, bar):
        plgpu.copy_gmem_to_smem(a_ref, a_smem, bar.at[0])
        plgpu.copy_gmem_to_smem(b_ref, b_smem, bar.at[1])
        plgpu.barrier_wait(bar.at[0])
        plgpu.barrier_wait(bar.at[1])

        def run(acc_ref):
            if form == "accumulator_store":
                acc_ref[...] = init_ref[...]
            lhs = a_smem[...] if form == "register_a" else a_smem
            rhs = plgpu.transpose_ref(b_smem, (1, 0)) if form == "transposed_b" else b_smem
            plgpu.wgmma(acc_ref, lhs, rhs)
            return acc_ref[...]
        o_ref[...] = pl.run_scoped(run, plgpu.ACC((M, 64), jnp.float32))

    out = plgpu.kernel(kernel, out_type=jax.ShapeDtypeStruct((M, 64), jnp.float32),
                       scratch_types=[plgpu.SMEM((M, 64), jnp.bfloat16, transforms=TILED),
                                      plgpu.SMEM((64, 64), jnp.bfloat16, transforms=TILED),
                                      plgpu.Barrier(num_barriers=2)],
                       interpret=interpret_params())(a, b, init)
    bb = _f32(b).T if form == "transposed_b" else _f32(b)
    want = _f32(a) @ bb + (_f32(init) if form == "accumulator_store" else 0.0)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-4)


def test_layouts_loads_and_dynamic_slice_starts():
    """broadcasted_iota/layout_cast keep values, plgpu.load reads a 1-D slice with a row layout,
    and TMA copies from slices whose start is computed in the kernel (a loop index) are exact."""
    x = jnp.arange(4 * M, dtype=jnp.int32)

    def kernel(x_ref, o_ref, ids_ref, smem, bar):
        def step(i, carry):
            plgpu.copy_gmem_to_smem(x_ref.at[pl.ds(i * M, M)], smem.at[i], bar.at[0])
            plgpu.barrier_wait(bar.at[0])
            return carry
        lax.fori_loop(0, 4, step, None)
        rows = plgpu.load(smem.at[2], (), layout=plgpu.Layout.WGMMA.reduce(1))
        cols = plgpu.broadcasted_iota(jnp.int32, (M, 64), 1, layout=plgpu.Layout.WGMMA)
        o_ref[...] = lax.broadcast_in_dim(rows, (M, 64), [0]) * 1000 + cols
        ids_ref[...] = smem[...]

    out, ids = plgpu.kernel(kernel, out_type=[jax.ShapeDtypeStruct((M, 64), jnp.int32),
                                              jax.ShapeDtypeStruct((4, M), jnp.int32)],
                            scratch_types=[plgpu.SMEM((4, M), jnp.int32), plgpu.Barrier(num_barriers=1)],
                            interpret=interpret_params())(x)
    np.testing.assert_array_equal(np.asarray(ids), np.arange(4 * M).reshape(4, M))
    want = (2 * M + np.arange(M))[:, None] * 1000 + np.arange(64)[None, :]
    np.testing.assert_array_equal(np.asarray(out), want)


def test_tma_reduce_add_into_an_aliased_buffer():
    """Three CTAs add their tile into the same rows of a float32 buffer that starts as the aliased
    input (how the backward accumulates dq): the result is the input plus three times the tile."""
    tile = jnp.asarray(np.random.default_rng(3).standard_normal((M, 64), np.float32))
    start = jnp.asarray(np.random.default_rng(4).standard_normal((2 * M, 64), np.float32))

    def body(tile_ref, start_ref, out_ref):
        del start_ref  # aliased to out_ref

        def inner(smem, bar):
            plgpu.copy_gmem_to_smem(tile_ref, smem, bar.at[0])
            plgpu.barrier_wait(bar.at[0])
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(smem, out_ref.at[pl.ds(M, M)], reduction_op="add")
            plgpu.wait_smem_to_gmem(0)
        pl.run_scoped(inner, plgpu.SMEM((M, 64), jnp.float32), plgpu.Barrier(num_barriers=1),
                      collective_axes="wg")

    out = _mgpu.kernel(body, out_type=jax.ShapeDtypeStruct((2 * M, 64), jnp.float32), grid=(3,),
                       grid_names=("x",), num_threads=1, interpret=interpret_params(),
                       input_output_aliases={1: 0})(tile, start)
    want = np.asarray(start, np.float64).copy()
    want[M:] += 3 * np.asarray(tile, np.float64)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-6, atol=1e-5)

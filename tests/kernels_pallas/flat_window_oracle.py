"""The float64 dense oracle the flattened-window kernels (pallas_gpu, pallas_tpu) are checked against:
their output and the three input gradients, as max|got - want| / max|want|."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.flat_window_attention import reference

# bf16/f16 inputs are exact in f64, so this bounds the kernel's own rounding (p and dS rounded to the
# input dtype before their matmuls).
TOLERANCE = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1.5e-2, jnp.dtype(jnp.float16): 2e-3}


def inputs(shape, dtype, seed):
    """q, k, v and the output cotangent do, standard normal."""
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype) for _ in range(4)]


def forward_and_grads(fn, q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(do.astype(out.dtype))


@functools.partial(jax.jit, static_argnums=0)
def _oracle_f64(sm_scale, q, k, v, do):
    return forward_and_grads(functools.partial(reference.attention, sm_scale=sm_scale), q, k, v, do)


def check_against_oracle(impl, shape, dtype, seed=0, primal=False):
    """impl(q, k, v) (sm_scale left to the default) must match the float64 oracle; `primal`: also the call
    outside differentiation (a forward kernel without the lse residual) must equal the differentiated one."""
    dtype = jnp.dtype(dtype)
    q, k, v, do = inputs(shape, dtype, seed)
    got = jax.jit(lambda *a: forward_and_grads(impl, *a))(q, k, v, do)
    if primal:
        np.testing.assert_array_equal(np.asarray(jax.jit(impl)(q, k, v)), np.asarray(got[0]))
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)  # noqa: E731
        want = [np.asarray(w) for w in _oracle_f64(shape[-1] ** -0.5, *map(f64, (q, k, v, do)))]
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.shape == shape and g.dtype == dtype, (name, g.shape, g.dtype)
        g = np.asarray(g.astype(jnp.float32), np.float64)
        assert np.all(np.isfinite(g)), name
        err = float(np.max(np.abs(g - w))) / float(np.max(np.abs(w)))
        assert err <= TOLERANCE[dtype], f"{name}: error {err:.2e} at {shape} {dtype}"

"""Shared by the lean-decode tests: random caches with given lengths and the float64 oracle."""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from kernels_pallas.lean_decode_attention import reference

# Bound on max|got - want| / max|want| per dtype.
TOLERANCE = {jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.float16): 4e-3, jnp.dtype(jnp.bfloat16): 2e-2}


def inputs(batch, max_len, q_heads, kv_heads, head_dim, lengths, dtype, seed):
    rng = np.random.default_rng(seed)
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
    return (draw(batch, q_heads, head_dim), draw(batch, max_len, kv_heads, head_dim),
            draw(batch, max_len, kv_heads, head_dim), jnp.asarray(lengths, jnp.int32))


def oracle(q, k, v, lengths, sm_scale=None):
    """The dense reference in float64."""
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
        return np.asarray(reference.attention(f64(q), f64(k), f64(v), lengths, sm_scale=scale))


def check(got, want, dtype, lengths):
    dtype = jnp.dtype(dtype)
    got = np.asarray(jnp.asarray(got).astype(jnp.float32), np.float64)
    assert np.all(np.isfinite(got))
    err = float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-6)
    assert err <= TOLERANCE[dtype], f"max error {err:.2e} of max|ref| for {dtype}"
    empty = np.asarray(lengths) == 0
    assert np.all(got[empty] == 0), "a sequence with no cached tokens must give exact zeros"

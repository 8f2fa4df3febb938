"""Shared checks for every blockwise-attention implementation: random cases, the float64 oracle,
per-dtype tolerances, and the comparison of the output and all three gradients.

An implementation's test file picks the cases it can afford (interpret mode is slow) and calls
`check_against_oracle(impl, case, dtype)`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import numpy as np
import jax
import jax.numpy as jnp

from kernels_pallas.blockwise_attention import reference

# Bound on max|got - want| / max|want|, per dtype, for the output and for each gradient. bf16 and
# f16 inputs are exact in float64, so the error measured is the implementation's own rounding
# (probabilities rounded to the input dtype before the p·v product, float32 accumulation).
TOLERANCE = {
    jnp.dtype(jnp.float32): {"out": 2e-5, "grad": 5e-5},
    jnp.dtype(jnp.float16): {"out": 4e-3, "grad": 1e-2},
    jnp.dtype(jnp.bfloat16): {"out": 2e-2, "grad": 4e-2},
}


@dataclasses.dataclass(frozen=True)
class Case:
    batch: int
    q_len: int
    kv_len: int
    q_heads: int
    kv_heads: int
    head_dim: int
    causal: bool = False
    segments: bool = False  # random packed segments, some queries in a segment with no keys

    def __str__(self):
        return (f"b{self.batch}_q{self.q_len}_kv{self.kv_len}_h{self.q_heads}x{self.kv_heads}"
                f"_d{self.head_dim}{'_causal' if self.causal else ''}{'_seg' if self.segments else ''}")


def inputs(case: Case, dtype, seed: int):
    """q, k, v, output cotangent and segment ids (or None), freshly drawn from `seed`."""
    rng = np.random.default_rng(seed)
    def draw(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
    q = draw(case.batch, case.q_len, case.q_heads, case.head_dim)
    k = draw(case.batch, case.kv_len, case.kv_heads, case.head_dim)
    v = draw(case.batch, case.kv_len, case.kv_heads, case.head_dim)
    do = draw(case.batch, case.q_len, case.q_heads, case.head_dim)
    seg = None
    if case.segments:
        # Sorted ids as in packed sequences; queries may use id 3, which no key has (rows that
        # see nothing must come back as zeros with zero gradients).
        qs = np.sort(rng.integers(0, 4, (case.batch, case.q_len)), axis=1)
        qs[:, -1] = 3
        ks = np.sort(rng.integers(0, 3, (case.batch, case.kv_len)), axis=1)
        seg = (jnp.asarray(qs, jnp.int32), jnp.asarray(ks, jnp.int32))
    return q, k, v, do, seg


def forward_and_grads(fn: Callable, q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(do.astype(out.dtype))


def oracle(case: Case, q, k, v, do, seg, sm_scale):
    """Output and (dq, dk, dv) of the dense reference, in float64."""
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        return tuple(np.asarray(x) for x in _oracle_f64(case.causal, float(sm_scale), f64(q), f64(k),
                                                         f64(v), f64(do), seg))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _oracle_f64(causal, sm_scale, q, k, v, do, seg):
    # One compiled program per shape: op-by-op float64 dispatch costs seconds per new shape.
    qs, ks = (None, None) if seg is None else seg
    fn = lambda q, k, v: reference.attention(q, k, v, causal=causal, q_segment_ids=qs,
                                             kv_segment_ids=ks, sm_scale=sm_scale)
    return forward_and_grads(fn, q, k, v, do)


def visible_rows(case: Case, seg) -> np.ndarray:
    """[batch, q_len] bool: which queries see at least one key."""
    qs, ks = (None, None) if seg is None else seg
    keep = reference.visible(case.q_len, case.kv_len, case.causal, qs, ks)
    keep = jnp.broadcast_to(keep, (case.batch, 1, case.q_len, case.kv_len))
    return np.asarray(jnp.any(keep[:, 0], axis=-1))


def check_against_oracle(impl: Callable, case: Case, dtype, seed: int = 0,
                         sm_scale: Optional[float] = None):
    """impl(q, k, v, *, causal, segment_ids, sm_scale) must match the float64 oracle."""
    dtype = jnp.dtype(dtype)
    q, k, v, do, seg = inputs(case, dtype, seed)
    scale = case.head_dim ** -0.5 if sm_scale is None else sm_scale
    fn = lambda q, k, v: impl(q, k, v, causal=case.causal, segment_ids=seg, sm_scale=sm_scale)
    got = forward_and_grads(fn, q, k, v, do)
    want = oracle(case, q, k, v, do, seg, scale)
    for name, g, w, x in zip(("out", "dq", "dk", "dv"), got, want, (q, q, k, v)):
        assert g.shape == w.shape and g.dtype == x.dtype, (name, g.shape, g.dtype, w.shape, x.dtype)
        g = np.asarray(g.astype(jnp.float32), np.float64)
        assert np.all(np.isfinite(g)), f"{name}: non-finite values for {case} {dtype}"
        tol = TOLERANCE[dtype]["out" if name == "out" else "grad"]
        scale_w = max(float(np.max(np.abs(w))), 1e-6)
        err = float(np.max(np.abs(g - w))) / scale_w
        assert err <= tol, f"{name}: max error {err:.2e} of max|ref| > {tol:.0e} for {case} {dtype}"
    if case.segments:
        blind = ~visible_rows(case, seg)
        assert blind.any(), "the case should include queries that see no key"
        for name, g in (("out", got[0]), ("dq", got[1])):
            rows = np.asarray(g.astype(jnp.float32))[blind]
            assert np.all(rows == 0), f"{name}: queries that see no key must give exact zeros"
    return got

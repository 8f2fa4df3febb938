"""Grouped attention (FlatFormer): reference and xla against a float64 oracle written here
independently (per group, per head, with numpy-free jnp math under x64), forward and gradients;
the public function's dispatch and input checks; attention over a real window grouping."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.flat_window_attention import (IMPLEMENTATIONS, PREFERENCE, common, group_tokens,
                                                  grouped_attention, make_group_plan,
                                                  ungroup_tokens, window_order)

# max|got - want| / max|want| for the output and each gradient. bf16/f16 inputs are exact in
# float64, so this bounds the implementation's own rounding (probabilities and dS rounded to the
# input dtype before their products).
TOLERANCE = {jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.float16): 4e-3,
             jnp.dtype(jnp.bfloat16): 2e-2}


def _oracle_attention(q, k, v, sm_scale):
    """softmax(q kᵀ scale) v for each group and head, written without the reference's code."""
    def one(qh, kh, vh):                  # [n, d] each
        s = qh @ kh.T * sm_scale
        w = jnp.exp(s - jax.scipy.special.logsumexp(s, axis=1, keepdims=True))
        return w @ vh
    per_head = jax.vmap(one, in_axes=(1, 1, 1), out_axes=1)  # over heads
    return jax.vmap(per_head)(q, k, v)                      # over groups


def _forward_and_grads(fn, q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(do.astype(out.dtype))


@functools.partial(jax.jit, static_argnums=0)
def _oracle_f64(sm_scale, q, k, v, do):
    return _forward_and_grads(lambda q, k, v: _oracle_attention(q, k, v, sm_scale), q, k, v, do)


def oracle(q, k, v, do, sm_scale):
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        return [np.asarray(w) for w in _oracle_f64(float(sm_scale), *map(f64, (q, k, v, do)))]


def inputs(shape, dtype, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal(shape, np.float32) for _ in range(4))
    q = q * spread  # larger logits: peaked softmax rows
    return [jnp.asarray(x).astype(dtype) for x in (q, k, v, do)]


_JITTED = {}


def run(implementation, q, k, v, do, sm_scale):
    key = (implementation, sm_scale)
    if key not in _JITTED:
        fn = lambda q, k, v: grouped_attention(q, k, v, sm_scale=sm_scale, implementation=implementation)
        _JITTED[key] = jax.jit(lambda *a: _forward_and_grads(fn, *a))
    return _JITTED[key](q, k, v, do)


def check(got, want, dtype, label):
    dtype = jnp.dtype(dtype)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.shape == w.shape and g.dtype == dtype, (label, name, g.shape, g.dtype)
        g = np.asarray(g.astype(jnp.float32), np.float64)
        assert np.all(np.isfinite(g)), f"{label} {name}: non-finite values"
        err = float(np.max(np.abs(g - w))) / max(float(np.max(np.abs(w))), 1e-30)
        assert err <= TOLERANCE[dtype], f"{label} {name}: error {err:.2e} > {TOLERANCE[dtype]:.0e}"


# (num_groups, group_size, heads, head_dim): group sizes 32..256, head_dim 16..64, odd sizes.
SHAPES = [(3, 32, 2, 16), (2, 144, 2, 16), (2, 64, 3, 32), (1, 256, 1, 64), (4, 37, 2, 24)]


# (implementation, shape, dtype): the reference (the Pallas kernels' oracle) at two shapes, xla
# at all of them; each dtype at several group sizes and head dims (one compile per case).
CASES = [("reference", SHAPES[1], "float32"), ("reference", SHAPES[2], "bfloat16"),
         ("xla", SHAPES[0], "bfloat16"), ("xla", SHAPES[1], "float32"), ("xla", SHAPES[2], "float32"),
         ("xla", SHAPES[3], "bfloat16"), ("xla", SHAPES[4], "float32"), ("xla", SHAPES[4], "bfloat16")]


@pytest.mark.parametrize("implementation, shape, dtype", CASES,
                         ids=[f"{i}-{'x'.join(map(str, s))}-{d}" for i, s, d in CASES])
def test_matches_float64_oracle_forward_and_backward(implementation, dtype, shape):
    q, k, v, do = inputs(shape, dtype, seed=sum(shape), spread=2.0)
    got = run(implementation, q, k, v, do, None)
    check(got, oracle(q, k, v, do, shape[-1] ** -0.5), dtype, f"{implementation} {shape}")


def test_float16_and_explicit_scale():
    shape = (2, 48, 2, 16)
    for dtype, scale in (("float16", 0.3), ("float32", 1.7)):
        q, k, v, do = inputs(shape, dtype, seed=11)
        check(run("xla", q, k, v, do, scale), oracle(q, k, v, do, scale), dtype, f"xla {dtype} {scale}")


def test_groups_do_not_mix():
    """Changing one group's keys and values changes only that group's output."""
    q, k, v, _ = inputs((4, 32, 2, 16), "float32", seed=3)
    base = grouped_attention(q, k, v, implementation="xla")
    k2, v2 = k.at[2].set(-k[2]), v.at[2].set(v[2] + 1)
    moved = grouped_attention(q, k2, v2, implementation="xla")
    diff = np.abs(np.asarray(moved - base)).max(axis=(1, 2, 3))
    assert diff[2] > 1e-2 and np.all(diff[[0, 1, 3]] == 0)


def test_default_implementation_on_this_platform_is_its_preference():
    assert set(PREFERENCE) == {"cpu", "gpu", "tpu"} and all(p[-1] == "xla" for p in PREFERENCE.values())
    assert set(IMPLEMENTATIONS) >= {name for p in PREFERENCE.values() for name in p}
    q, k, v, _ = inputs((2, 32, 2, 16), "float32", seed=4)
    got = grouped_attention(q, k, v)
    want = grouped_attention(q, k, v, implementation=PREFERENCE[jax.default_backend()][0])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_attention_over_window_groups_equals_attention_within_each_group_of_real_tokens():
    """End to end on a batch with an empty and a one-point sample: each real token's output is
    attention over the tokens of its group (with the group's repeated copies weighing in)."""
    rng = np.random.default_rng(5)
    counts, gs, heads, d = [0, 1, 40, 17], 16, 2, 8
    sid = np.concatenate([np.full(c, s) for s, c in enumerate(counts)] + [np.full(3, -1)])
    sid = jnp.asarray(rng.permutation(sid), jnp.int32)
    coords = jnp.asarray(rng.integers(0, 30, (sid.shape[0], 2)), jnp.int32)
    x = jnp.asarray(rng.standard_normal((sid.shape[0], heads, d)), jnp.float32)

    @jax.jit
    def pipeline(coords, sid, x):
        order = window_order(coords, sid, grid_shape=(30, 30), window_shape=(7, 7), axis="y", shift=True)
        plan = make_group_plan(order, sid, num_samples=len(counts), group_size=gs)
        return plan, ungroup_tokens(grouped_attention(*(group_tokens(x, plan),) * 3, implementation="xla"), plan)
    plan, out = pipeline(coords, sid, x)
    out = np.asarray(out)
    gather = np.asarray(plan.gather_index).reshape(plan.num_groups, gs)
    scatter = np.asarray(plan.scatter_index)
    xn = np.asarray(x, np.float64)
    for slot in np.flatnonzero(np.asarray(sid) >= 0):
        members = xn[gather[scatter[slot] // gs]]                # [gs, heads, d], copies included
        s = np.einsum("hd,khd->hk", xn[slot], members) * d ** -0.5
        w = np.exp(s - s.max(1, keepdims=True)); w /= w.sum(1, keepdims=True)
        np.testing.assert_allclose(out[slot], np.einsum("hk,khd->hd", w, members),
                                   rtol=1e-4, atol=1e-5)
    assert np.all(out[np.asarray(sid) < 0] == 0)
    # The one-point sample attends to copies of itself only: its output is its own value.
    one = int(np.flatnonzero(np.asarray(sid) == 1)[0])
    np.testing.assert_allclose(out[one], xn[one], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(q=jnp.zeros((2, 8, 16))), r"q as \[num_groups, group_size, heads, head_dim\]"),
    (dict(k=jnp.zeros((2, 8, 2, 32))), "must have the same shape"),
    (dict(v=jnp.zeros((2, 8, 2, 16), jnp.bfloat16)), "must share a dtype"),
    (dict(q=jnp.zeros((1, 1025, 1, 8)), k=jnp.zeros((1, 1025, 1, 8)), v=jnp.zeros((1, 1025, 1, 8))),
     r"group_size \(axis 1\) must be in 1..1024"),
    (dict(q=jnp.zeros((1, 4, 1, 512)), k=jnp.zeros((1, 4, 1, 512)), v=jnp.zeros((1, 4, 1, 512))),
     r"head_dim \(axis 3\) must be in 1..256"),
    (dict(q=jnp.zeros((1, 4, 1, 8), jnp.int32), k=jnp.zeros((1, 4, 1, 8), jnp.int32),
          v=jnp.zeros((1, 4, 1, 8), jnp.int32)), "dtype int32 is not supported"),
    (dict(sm_scale="big"), "sm_scale must be a Python number"),
    (dict(groups_per_block=0), "groups_per_block must be a positive int"),
    (dict(implementation="flash"), "unknown implementation 'flash'"),
])
def test_bad_inputs_name_the_problem(kwargs, message):
    args = dict(q=jnp.zeros((2, 8, 2, 16)), k=jnp.zeros((2, 8, 2, 16)), v=jnp.zeros((2, 8, 2, 16)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        grouped_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)
    assert common.MAX_GROUP_SIZE == 1024 and common.MAX_HEAD_DIM == 256

"""The public function: input checks that name the problem, dispatch and fallthrough, and the
reference itself against an independent per-head loop in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels_pallas.blockwise_attention as ba
from kernels_pallas import _dispatch
from kernels_pallas.blockwise_attention import BlockSizes, blockwise_attention


def _qkv(b=2, lq=9, lk=11, hq=4, hkv=2, d=8, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(ks[0], (b, lq, hq, d), dtype), jax.random.normal(ks[1], (b, lk, hkv, d), dtype),
            jax.random.normal(ks[2], (b, lk, hkv, d), dtype))


def test_reference_matches_a_per_head_loop():
    q, k, v = _qkv()
    qs = np.array([[0] * 4 + [1] * 5, [0] * 9])
    ks = np.array([[0] * 5 + [1] * 6, [1] * 11])  # batch 1: no query shares a segment with a key
    out = np.asarray(blockwise_attention(q, k, v, causal=True, segment_ids=(jnp.asarray(qs), jnp.asarray(ks)),
                                         implementation="reference"))
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    for b in range(2):
        for h in range(4):
            for i in range(9):
                keys = [j for j in range(11) if j <= i + 2 and qs[b, i] == ks[b, j]]
                want = np.zeros(8)
                if keys:
                    s = q[b, i, h] @ k[b, keys, h // 2].T / np.sqrt(8)
                    w = np.exp(s - s.max())
                    want = (w / w.sum()) @ v[b, keys, h // 2]
                np.testing.assert_allclose(out[b, i, h], want, atol=1e-5)


def test_cpu_default_is_the_xla_implementation(monkeypatch):
    called = []
    xla = _dispatch.module(ba.__name__, "xla")
    real = xla.attention
    monkeypatch.setattr(xla, "attention", lambda *a, **kw: called.append(1) or real(*a, **kw))
    blockwise_attention(*_qkv())
    assert called == [1] and ba.PREFERENCE["cpu"] == ("xla",)


def test_unsupported_inputs_fall_through_to_xla(monkeypatch):
    """implementation=None: a kernel's NotImplementedError sends the call on to xla; a named
    implementation raises instead of being silently replaced."""
    def refuse(*a, **kw):
        raise NotImplementedError("not these shapes")
    monkeypatch.setattr(_dispatch.module(ba.__name__, "pallas_gpu"), "attention", refuse)
    monkeypatch.setitem(ba.PREFERENCE, jax.default_backend(), ("pallas_gpu", "xla"))
    q, k, v = _qkv()
    np.testing.assert_allclose(blockwise_attention(q, k, v), blockwise_attention(q, k, v, implementation="reference"),
                               atol=1e-5)
    with pytest.raises(NotImplementedError, match="not these shapes"):
        blockwise_attention(q, k, v, implementation="pallas_gpu")


@pytest.mark.parametrize("args, kwargs, message", [
    ((jnp.zeros((2, 9, 8)),), {}, r"q as \[batch, length, heads, head_dim\]"),
    ((None, jnp.zeros((2, 11, 3, 8)), jnp.zeros((2, 11, 3, 8))), {}, r"multiple of key/value heads \(3\)"),
    ((None, None, jnp.zeros((2, 12, 2, 8))), {}, "must have the same shape"),
    ((None, jnp.zeros((2, 11, 2, 4)), jnp.zeros((2, 11, 2, 4))), {}, "agree on batch and head_dim"),
    ((jnp.zeros((2, 9, 4, 512)), jnp.zeros((2, 11, 2, 512)), jnp.zeros((2, 11, 2, 512))), {}, "head_dim 512"),
    ((None, jnp.zeros((2, 11, 2, 8), jnp.bfloat16), None), {}, "share a dtype"),
    ((jnp.zeros((2, 9, 4, 8), jnp.int32),) * 1 + (jnp.zeros((2, 11, 2, 8), jnp.int32),) * 2, {}, "not supported"),
    ((), dict(segment_ids=jnp.zeros((2, 9), jnp.int32)), "must be None or a pair"),
    ((), dict(segment_ids=(jnp.zeros((2, 9), jnp.int32), jnp.zeros((2, 9), jnp.int32))), r"\[batch, kv_len\]"),
    ((), dict(segment_ids=(jnp.zeros((2, 9)), jnp.zeros((2, 11)))), "must be integers"),
    ((), dict(implementation="flash"), r"unknown implementation 'flash'"),
    ((), dict(block_sizes=(128, 128)), "must be a BlockSizes"),
])
def test_bad_inputs_name_the_problem(args, kwargs, message):
    default = _qkv()
    args = tuple(a if a is not None else d for a, d in zip(args + (None,) * 3, default))
    with pytest.raises(ValueError, match=message):
        blockwise_attention(*args, **kwargs)


def test_block_sizes_are_validated_and_resolved():
    with pytest.raises(ValueError, match="block_q must be a positive int"):
        BlockSizes(block_q=0)
    bs = BlockSizes(block_kv=64).resolve(128, 256, q_len=7, kv_len=1000, multiple=8)
    assert bs == BlockSizes(8, 64, 8, 64)  # short q: one tile of the length rounded up to 8

"""fintrans.ops.dot_product_attention against a float64 numpy oracle, and its dispatch."""
import chex
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.ops import attention as attn_lib
from fintrans.ops import dispatch
from fintrans.ops import dot_product_attention


def oracle(q, k, v, *, bias=None, mask=None, causal=False, segment_ids=None, scale=None):
    """Per-head loops in float64; rows with no visible key give zeros."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = np.zeros((b, lq, hq, v.shape[-1]))
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hkv)
            logits = q[bi, :, h] @ k[bi, :, kh].T * scale
            if bias is not None:
                logits = logits + np.broadcast_to(bias, (b, hq, lq, lk))[bi, h]
            keep = np.ones((lq, lk), bool)
            if causal:
                keep &= np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
            if segment_ids is not None:
                keep &= segment_ids[bi][:, None] == segment_ids[bi][None, :]
            if mask is not None:
                keep &= np.broadcast_to(mask, (b, hq, lq, lk))[bi, h]
            for i in range(lq):
                if keep[i].any():
                    w = np.exp(logits[i][keep[i]] - logits[i][keep[i]].max())
                    out[bi, i, h] = (w / w.sum()) @ v[bi, :, kh][keep[i]]
    return out


def _qkv(key, b=2, lq=7, lk=7, hq=4, hkv=2, d=8, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(key), 3)
    return (jax.random.normal(kq, (b, lq, hq, d), dtype), jax.random.normal(kk, (b, lk, hkv, d), dtype),
            jax.random.normal(kv, (b, lk, hkv, d), dtype))


@pytest.mark.parametrize("hkv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_oracle(hkv, causal):
    q, k, v = _qkv(0, hkv=hkv)
    out = dot_product_attention(q, k, v, causal=causal)
    np.testing.assert_allclose(out, oracle(q, k, v, causal=causal), atol=2e-5, rtol=2e-5)


def test_causal_with_fewer_queries_than_keys_aligns_to_the_end():
    q, k, v = _qkv(1, lq=3, lk=9)
    out = dot_product_attention(q, k, v, causal=True)
    np.testing.assert_allclose(out, oracle(q, k, v, causal=True), atol=2e-5)
    # The last query sees every key: the same as unmasked attention for that row.
    full = dot_product_attention(q, k, v)
    np.testing.assert_allclose(out[:, -1], full[:, -1], atol=1e-6)


def test_padding_mask_bias_segments_and_scale():
    q, k, v = _qkv(2, lq=6, lk=6)
    valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    mask = valid[:, None, :, None] & valid[:, None, None, :]
    bias = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (1, 4, 6, 6)))
    segments = np.array([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 1, 1]])
    kwargs = dict(mask=mask, bias=bias, segment_ids=segments, causal=True, scale=0.3)
    out = dot_product_attention(q, k, v, **{k_: jnp.asarray(x) if isinstance(x, np.ndarray) else x
                                           for k_, x in kwargs.items()})
    np.testing.assert_allclose(out, oracle(q, k, v, **kwargs), atol=2e-5)
    chex.assert_trees_all_equal(out[0, 4:], jnp.zeros_like(out[0, 4:]))  # padding queries: zeros, not NaN


def test_bfloat16_inputs_compute_in_float32():
    q, k, v = _qkv(4, dtype=jnp.bfloat16)
    out = dot_product_attention(q, k, v, causal=True)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), oracle(q, k, v, causal=True), atol=3e-2)


def test_gradients_match_the_repeated_heads_formulation():
    q, k, v = _qkv(5, hkv=2)

    def plain(q, k, v):  # GQA written as ordinary multi-head attention over repeated kv heads
        k, v = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
        logits = jnp.where(jnp.tril(jnp.ones((7, 7), bool)), logits, -1e30)
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits), v)

    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
    ours = jax.grad(loss(lambda *a: dot_product_attention(*a, causal=True)), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(ours, ref, atol=1e-5)


def test_shape_errors_name_the_problem():
    q, k, v = _qkv(6)
    with pytest.raises(ValueError, match=r"\[batch, length, heads, head_dim\]"):
        dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of key/value heads \(3\)"):
        dot_product_attention(q, jnp.zeros((2, 7, 3, 8)), jnp.zeros((2, 7, 3, 8)))
    with pytest.raises(ValueError, match="segment_ids must be"):
        dot_product_attention(q, k, v, segment_ids=jnp.zeros((2, 5), jnp.int32))


def test_dispatch_falls_through_to_xla_and_names_unknown_implementations(monkeypatch):
    calls = []

    def unsupported(*args, **kwargs):
        calls.append(1)
        raise NotImplementedError("not for these shapes")

    op = attn_lib.ATTENTION
    monkeypatch.setitem(op.implementations._entries, "cudnn",
                        dispatch.Implementation(unsupported, (jax.default_backend(),)))
    monkeypatch.setattr(op, "_preferred", ["cudnn"])
    assert op.preference() == ("cudnn", "xla")
    q, k, v = _qkv(7)
    out = dot_product_attention(q, k, v)
    assert calls == [1]
    np.testing.assert_allclose(out, oracle(q, k, v), atol=2e-5)
    with pytest.raises(NotImplementedError):  # a named implementation is never silently replaced
        dot_product_attention(q, k, v, implementation="cudnn")
    with pytest.raises(ValueError, match=r"'flash' is not an implementation of the attention op.*'xla'"):
        dot_product_attention(q, k, v, implementation="flash")


def test_values_may_have_their_own_head_dim():
    q, k, _ = _qkv(8)
    v = jax.random.normal(jax.random.PRNGKey(9), (2, 7, 2, 5))
    out = dot_product_attention(q, k, v, causal=True)
    chex.assert_shape(out, (2, 7, 4, 5))
    np.testing.assert_allclose(out, oracle(q, k, v, causal=True), atol=2e-5)


@pytest.mark.parametrize("segments", [False, True])
def test_blockwise_takes_key_padding_masks_as_segments(segments):
    q, k, v = _qkv(10, lq=9, lk=11)
    valid = np.ones((2, 11), bool)
    valid[0, 7:] = False
    mask = jnp.asarray(valid[:, None, None, :])
    seg = None
    if segments:  # q and kv lengths differ, so segments come as a pair
        seg = (jnp.asarray([[0] * 5 + [1] * 4] * 2), jnp.asarray([[0] * 6 + [1] * 5] * 2))
    out = dot_product_attention(q, k, v, mask=mask, segment_ids=seg, causal=True,
                                implementation="xla_blockwise")
    dense = dot_product_attention(q, k, v, mask=mask, segment_ids=seg, causal=True,
                                  implementation="xla_dense")
    np.testing.assert_allclose(out, dense, atol=2e-6)
    if not segments:
        np.testing.assert_allclose(out, oracle(q, k, v, mask=valid[:, None, None, :], causal=True), atol=2e-5)


def test_blockwise_gradients_match_dense():
    q, k, v = _qkv(11, lq=13, lk=13, hkv=1)
    loss = lambda impl: lambda *a: jnp.sum(jnp.sin(dot_product_attention(*a, causal=True, implementation=impl)))
    chex.assert_trees_all_close(jax.grad(loss("xla_blockwise"), argnums=(0, 1, 2))(q, k, v),
                                jax.grad(loss("xla_dense"), argnums=(0, 1, 2))(q, k, v), atol=1e-5)


def test_what_blockwise_cannot_take_falls_back_to_dense():
    q, k, v = _qkv(12)
    bias = jax.random.normal(jax.random.PRNGKey(13), (1, 4, 7, 7))
    per_query = jnp.tril(jnp.ones((7, 7), bool))[None, None]
    for kwargs, why in ((dict(bias=bias), "bias"), (dict(mask=per_query), "key-padding masks")):
        with pytest.raises(NotImplementedError, match=why):  # named: never silently replaced
            dot_product_attention(q, k, v, implementation="xla_blockwise", **kwargs)
        np.testing.assert_allclose(dot_product_attention(q, k, v, **kwargs),
                                   dot_product_attention(q, k, v, implementation="xla_dense", **kwargs))


def test_long_sequences_on_cpu_go_blockwise_and_stay_small():
    """implementation=None at 4096 tokens: no [q_len, kv_len] score matrix is ever allocated."""
    length = 4096
    assert length * length >= attn_lib.BLOCKWISE_MIN_SCORES
    x = jax.ShapeDtypeStruct((1, length, 1, 32), jnp.float32)
    scores_bytes = length * length * 4
    for impl, small in ((None, True), ("xla_dense", False)):
        grad = jax.jit(jax.grad(lambda q, k, v: dot_product_attention(
            q, k, v, causal=True, implementation=impl).sum(), argnums=(0, 1, 2)))
        temp = grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes
        assert (temp < scores_bytes / 4) == small, (impl, temp, scores_bytes)


def test_decode_attention_lean_and_dense_agree_on_ragged_caches():
    from fintrans.ops import decode_attention
    keys = jax.random.split(jax.random.PRNGKey(14), 3)
    q = jax.random.normal(keys[0], (3, 4, 8))
    k, v = (jax.random.normal(kk, (3, 40, 2, 8)) for kk in keys[1:])
    lengths = jnp.asarray([40, 1, 0])
    # Jitted: eagerly, the lean schedule's loop runs op by op (about 20 s on 2 cores).
    lean = jax.jit(decode_attention)(q, k, v, lengths)
    dense = jax.jit(functools.partial(decode_attention, implementation="xla_dense"))(q, k, v, lengths)
    np.testing.assert_allclose(lean, dense, atol=2e-6)
    # Against the general op: the last token of a causal sequence sees its whole prefix.
    full = dot_product_attention(q[:1, None], k[:1], v[:1], causal=True)[:, 0]
    np.testing.assert_allclose(lean[:1], full, atol=2e-6)
    chex.assert_trees_all_equal(lean[2], jnp.zeros_like(lean[2]))

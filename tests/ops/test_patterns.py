"""Local (sliding window / span) and top-k attention against float64 oracles, and
MultiHeadAttention routing each pattern to its op."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.layers.attention import MultiHeadAttention
from fintrans.ops import patterns
from fintrans.ops.patterns import AttentionPattern, local_attention, topk_attention


def oracle(q, k, v, keep, top_k=None):
    """float64 loops: keep [batch, q_len, kv_len] says which keys each query may see; with top_k
    only the top_k largest visible scores stay (rows with no visible key give zeros)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, lq, hq, d = q.shape
    hkv = k.shape[2]
    out = np.zeros((b, lq, hq, v.shape[-1]))
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(lq):
                idx = np.flatnonzero(keep[bi, i])
                if not idx.size:
                    continue
                s = k[bi, idx, kh] @ q[bi, i, h] * d ** -0.5
                if top_k is not None and top_k < idx.size:
                    chosen = np.argsort(-s)[:top_k]
                    idx, s = idx[chosen], s[chosen]
                w = np.exp(s - s.max())
                out[bi, i, h] = (w / w.sum()) @ v[bi, idx, kh]
    return out


def band(lq, lk, left, right):
    pos = np.arange(lq)[:, None] + lk - lq
    j = np.arange(lk)[None]
    return (j >= pos - left) & (j <= pos + right)


def _qkv(seed, b=2, lq=19, lk=19, hq=4, hkv=2, d=8):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(kq, (b, lq, hq, d)), jax.random.normal(kk, (b, lk, hkv, d)),
            jax.random.normal(kv, (b, lk, hkv, d)))


@pytest.mark.parametrize("window,lq", [((3, 0), 19), ((2, 3), 19), ((4, 0), 7)],
                         ids=["causal_window", "span", "fewer_queries"])
def test_local_matches_the_oracle_banded_and_dense(monkeypatch, window, lq):
    monkeypatch.setattr(patterns, "LOCAL_BLOCK", 4)  # several tiles at these lengths: the banded path
    q, k, v = _qkv(0, lq=lq)
    valid = np.ones((2, 19), bool)
    valid[1, 15:] = False
    mask = jnp.asarray(valid[:, None, None, :])
    keep = band(lq, 19, *window)[None] & valid[:, None, :]
    want = oracle(q, k, v, keep)
    patterns._local_banded(q, k, v, window=window, mask=mask)  # the banded path takes these inputs
    for impl in ("xla", "xla_dense", None):
        got = local_attention(q, k, v, window=window, mask=mask, implementation=impl)
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=str(impl))


def test_local_banded_gradients_match_dense(monkeypatch):
    monkeypatch.setattr(patterns, "LOCAL_BLOCK", 4)
    q, k, v = _qkv(1, lq=13, lk=13)
    loss = lambda impl: lambda *a: jnp.sum(jnp.sin(local_attention(*a, window=(3, 1), implementation=impl)))
    chex.assert_trees_all_close(jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v),
                                jax.grad(loss("xla_dense"), argnums=(0, 1, 2))(q, k, v), atol=1e-5)


def test_local_banded_refuses_what_it_cannot_take_and_xla_still_answers():
    q, k, v = _qkv(2, lq=9, lk=9)
    per_query = jnp.asarray(np.tril(np.ones((9, 9), bool))[None, None])
    with pytest.raises(NotImplementedError, match="key-padding"):
        patterns._local_banded(q, k, v, window=(1, 1), mask=per_query, block=2)
    got = local_attention(q, k, v, window=(1, 1), mask=per_query)
    np.testing.assert_allclose(got, oracle(q, k, v, np.broadcast_to(band(9, 9, 1, 1) & np.tril(np.ones((9, 9), bool)),
                                                                  (2, 9, 9))), atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_topk_matches_the_oracle(causal):
    q, k, v = _qkv(3, lq=11, lk=11)
    keep = np.broadcast_to(np.tril(np.ones((11, 11), bool)) if causal else np.ones((11, 11), bool), (2, 11, 11))
    got = topk_attention(q, k, v, top_k=3, causal=causal)
    np.testing.assert_allclose(got, oracle(q, k, v, keep, top_k=3), atol=2e-5)
    # k at least the number of keys: ordinary attention.
    full = topk_attention(q, k, v, top_k=11, causal=causal)
    np.testing.assert_allclose(full, oracle(q, k, v, keep), atol=2e-5)
    grads = jax.grad(lambda q: jnp.sum(topk_attention(q, k, v, top_k=3, causal=causal)))(q)
    chex.assert_tree_all_finite(grads)


def test_patterns_name_their_bad_parameters():
    with pytest.raises(ValueError, match="window=\\(left, right\\)"):
        AttentionPattern("local", window=(3,))
    with pytest.raises(ValueError, match="top_k"):
        AttentionPattern("topk", top_k=0)
    with pytest.raises(ValueError, match="'sparse' is not one of"):
        AttentionPattern("sparse")
    with pytest.raises(ValueError, match="window is for the local pattern"):
        AttentionPattern("topk", top_k=2, window=(1, 1))
    q, k, v = _qkv(4)
    with pytest.raises(ValueError, match="not an implementation of the topk_attention op"):
        topk_attention(q, k, v, top_k=2, implementation="pallas_gpu")


def _mha(pattern, **kw):
    return MultiHeadAttention(num_heads=2, head_dim=4, num_kv_heads=1, pattern=pattern, **kw)


def test_mha_routes_each_pattern_to_its_op():
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 10, 8))
    full = _mha(AttentionPattern())
    params = full.init(jax.random.PRNGKey(0), x)
    window = jnp.asarray(band(10, 10, 2, 0))[None, None]
    local = _mha(AttentionPattern("local", window=(2, 0))).apply(params, x)
    np.testing.assert_allclose(local, full.apply(params, x, mask=window), atol=1e-5)
    top = _mha(AttentionPattern("topk", top_k=10)).apply(params, x, causal=True)
    np.testing.assert_allclose(top, full.apply(params, x, causal=True), atol=1e-5)
    top3 = _mha(AttentionPattern("topk", top_k=3)).apply(params, x, causal=True)
    assert not np.allclose(top3, top, atol=1e-4)
    with pytest.raises(ValueError, match="needs groups="):
        _mha(AttentionPattern("grouped")).apply(params, x)
    with pytest.raises(ValueError, match="groups= is for the grouped pattern"):
        full.apply(params, x, groups=object())


def test_mha_local_pattern_decodes_token_by_token_like_the_whole_sequence():
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 8, 8))
    pattern = AttentionPattern("local", window=(2, 0))
    whole = _mha(pattern)
    params = whole.init(jax.random.PRNGKey(0), x)
    want = whole.apply(params, x)
    dec = _mha(pattern, decode=True)
    cache = dec.init(jax.random.PRNGKey(0), x)["cache"]
    step = jax.jit(lambda cache, t: dec.apply({**params, "cache": cache}, t, mutable=["cache"]))
    outs = []
    for i in range(8):
        y, new = step(cache, x[:, i:i + 1])
        cache = new["cache"]
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)


def test_mha_grouped_pattern_attends_within_groups_with_the_offset_on_queries_and_keys_only():
    from fintrans.ops import flat_window
    rng = np.random.default_rng(0)
    b, n, c = 2, 10, 8
    coords = jnp.asarray(rng.integers(0, 6, (b * n, 2)), jnp.int32)
    sample_ids = jnp.asarray(np.repeat(np.arange(b), n).astype(np.int32))
    order = flat_window.window_order(coords, sample_ids, grid_shape=(6, 6), window_shape=(3, 3), axis="x")
    plan = flat_window.make_group_plan(order, sample_ids, num_samples=b, group_size=4)
    x, pe = (jnp.asarray(rng.standard_normal((b, n, c)), jnp.float32) for _ in range(2))
    mha = MultiHeadAttention(num_heads=2, head_dim=4, pattern=AttentionPattern("grouped"))
    params = mha.init(jax.random.PRNGKey(0), x, qk_offset=pe, groups=plan)
    got = mha.apply(params, x, qk_offset=pe, groups=plan)

    p = jax.tree.map(np.asarray, __import__("flax").linen.unbox(params))["params"]
    proj = lambda inp, name: np.einsum("bnc,chd->bnhd", inp, p[name]["kernel"]) + p[name]["bias"]
    q, k, v = proj(x + pe, "query"), proj(x + pe, "key"), proj(x, "value")
    grouped = [flat_window.group_tokens(jnp.asarray(t.reshape(b * n, 2, 4)), plan) for t in (q, k, v)]
    att = flat_window.ungroup_tokens(flat_window.grouped_attention(*grouped, implementation="reference"), plan)
    want = np.einsum("bnhd,hdc->bnc", np.asarray(att).reshape(b, n, 2, 4), p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    without = mha.apply(params, x, groups=plan)  # the offset changes the result
    assert not np.allclose(without, got, atol=1e-3)

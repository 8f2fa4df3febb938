"""ShapeFormer and its data-side shapelet discovery: PIP selection, best-match distances, information
gain and the model's shapelet filter against brute-force numpy; the encoder layer (the authors' attention)
against a numpy transcription of their PyTorch code; where the position enters; padding invariance."""
from __future__ import annotations

import functools

import flax.linen
import jax
import numpy as np
import pytest

from fintrans.data import shapelets as sh
from fintrans.models.shapeformer import ShapeFormer, ShapeFormerLayer, initial_shapelet_weights, shapelet_filter
from model_cases import built, config_of, jit


def _pips_brute(ts, num):
    """The authors' loop, literally: every remaining point against the line through its neighbours."""
    n = len(ts)
    xz = (np.arange(n) - np.arange(n).mean()) / np.arange(n).std()
    pips, order = [0, n - 1], [0, n - 1]
    while len(order) < num:
        best, best_d = -1, -1.0
        for j in range(1, n - 1):
            if j in pips:
                continue
            right = min(p for p in pips if p > j)
            left = max(p for p in pips if p < j)
            a = (ts[right] - ts[left]) / (xz[right] - xz[left])
            c = ts[right] - xz[right] * a
            d = abs(-ts[j] + a * xz[j] + c) / (a * a + 1) ** 0.5
            if d > best_d:
                best, best_d = j, d
        pips = sorted(pips + [best])
        order.append(best)
    return order


def test_pip_order_matches_brute_force():
    rng = np.random.default_rng(0)
    for n in (5, 9, 17, 30):
        ts = rng.normal(size=n).cumsum()
        num = min(n, 7)
        assert sh.pip_order(ts, num) == _pips_brute(ts, num)
    # Candidates: each new PIP's spans to its neighbours (and the neighbours' spans across it).
    ts = rng.normal(size=20)
    order = sh.pip_order(ts, 5)
    cands = sh.pip_candidates(ts, 0.2)
    first = sorted(order[:3])
    assert cands[0] == (first[0], first[2])
    assert all(0 <= a < b <= 19 and a in order and b in order for a, b in cands)


def test_best_match_and_info_gain_match_brute_force():
    rng = np.random.default_rng(1)
    s, z = rng.normal(size=4), rng.normal(size=15)
    ci = lambda v: np.sqrt(np.sum(np.diff(v) ** 2) + 1e-3)
    brute = [(np.linalg.norm(s - z[p:p + 4]) * max(ci(s), ci(z[p:p + 4])) / min(ci(s), ci(z[p:p + 4])), p)
             for p in range(3, 9 - 4 + 1)]
    d, p = sh.best_match(s, z, 3, 9)
    assert p == min(brute)[1] and np.isclose(d, min(brute)[0])
    assert sh.best_match(s, z, 5, 8) == (np.inf, -1)
    dist, y = rng.normal(size=12), rng.random(12) < 0.4

    def h(v):
        p = v.mean() if len(v) else 0.0
        return 0.0 if p in (0.0, 1.0) else -(p * np.log2(p) + (1 - p) * np.log2(1 - p))

    gains = [h(y) - (np.sum(dist <= t) * h(y[dist <= t]) + np.sum(dist > t) * h(y[dist > t])) / 12
             for t in np.sort(dist)[:-1]]
    assert np.isclose(sh.info_gain(dist, y), max(gains))


def test_discover_finds_the_class_specific_bump():
    """Class 1 alone has a bump on channel 1: its best shapelet lies there and separates perfectly."""
    rng = np.random.default_rng(2)
    series, labels = [], []
    for i in range(12):
        x = rng.normal(scale=0.1, size=(24, 2))
        if i % 2:
            x[10:15, 1] += np.array([0.0, 2.0, 4.0, 2.0, 0.0])
        series.append(x)
        labels.append(i % 2)
    found = sh.discover(series, np.array(labels), per_class=1, window=3)
    again = sh.discover(series, np.array(labels), per_class=1, window=3)
    np.testing.assert_array_equal(found.values, again.values)
    k = int(np.flatnonzero(found.classes == 1)[0])
    assert found.channels[k] == 1 and 6 <= found.starts[k] <= 14 and np.isclose(found.gains[k], 1.0)
    for v, n, c, st in zip(found.values, found.lengths, found.channels, found.starts):  # real subsequences
        assert any(np.allclose(s[st:st + n, c], v[:n]) for s in series)
    cfg = found.as_config()
    assert len(cfg["shapelets"]) == len(found.lengths) == len(cfg["shapelet_channels"])


@functools.lru_cache(maxsize=None)
def _filter_fn(window, max_ci, lengths, channels, starts):
    return jit(lambda x, n, v: shapelet_filter(x, n, v, np.array(lengths), np.array(channels), np.array(starts),
                                               window=window, max_ci=max_ci))


def test_shapelet_filter_matches_numpy():
    rng = np.random.default_rng(3)
    lengths, channels, starts = (3, 5, 4), (0, 2, 1), (1, 6, 0)
    window, max_ci, t = 2, 3.0, 12
    values = np.zeros((3, 5), np.float32)
    for i, n in enumerate(lengths):
        values[i, :n] = rng.normal(size=n)
    valid_len = np.array([12, 7, 3])
    x = rng.normal(size=(3, t, 3)).astype(np.float32) * (np.arange(t)[None, :, None] < valid_len[:, None, None])
    best, dist, pos = _filter_fn(window, max_ci, lengths, channels, starts)(x, valid_len, values)
    ci = lambda v: np.sqrt(np.sum(np.diff(v) ** 2) + 1e-3)
    for b in range(3):
        for s, (n, c, st) in enumerate(zip(lengths, channels, starts)):
            v = values[s, :n].astype(np.float64)
            cands = []
            for p in range(max(0, st - window), st + window + 1):
                if p + n > valid_len[b]:
                    continue
                w = x[b, p:p + n, c].astype(np.float64)
                cands.append((np.mean((w - v) ** 2) * min(max_ci, max(ci(w), ci(v)) / min(ci(w), ci(v))), p))
            if cands:
                d, p = min(cands)
                assert int(pos[b, s]) == p and np.isclose(float(dist[b, s]), d, rtol=1e-4)
            else:  # series too short: the clipped start, padding read as zeros
                p = min(st, max(valid_len[b] - n, 0))
                assert int(pos[b, s]) == p
            np.testing.assert_allclose(best[b, s, :n], x[b, p:p + n, c], atol=1e-6)
            np.testing.assert_array_equal(np.asarray(best[b, s, n:]), 0)


def test_padded_steps_do_not_change_outputs():
    b = built("shapeformer")
    batch = b.case.make_batch(np.random.default_rng(6))
    mask = batch["mask"]
    assert not mask.all()
    logits = b.forward(b.params, batch)
    noisy = dict(batch, inputs=np.where(mask[..., None], batch["inputs"],
                                        np.random.default_rng(7).normal(size=batch["inputs"].shape) * 50)
                 .astype(np.float32))
    np.testing.assert_allclose(b.forward(b.params, noisy), logits, atol=1e-5)
    row = int(np.argmin(mask.sum(1)))
    n = int(mask[row].sum())
    alone = jax.jit(b.model.apply)(b.params, {"inputs": batch["inputs"][row:row + 1, :n]})
    np.testing.assert_allclose(alone[0], logits[row], atol=1e-5)


def test_authors_batchnorm_option_keeps_running_statistics_and_ignores_padding():
    cfg = config_of("shapeformer", generic_norm="batchnorm")
    model = ShapeFormer(cfg)
    batch = built("shapeformer").case.make_batch(np.random.default_rng(8))
    mask = batch["mask"]
    variables = flax.linen.unbox(model.init(jax.random.PRNGKey(0), batch))
    assert set(variables["batch_stats"]) == {"time_norm", "channel_norm"}
    train = jax.jit(lambda v, b: model.apply(v, b, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                                             mutable=["batch_stats"]))
    logits, updates = train(variables, batch)
    moved = updates["batch_stats"]["channel_norm"]["mean"] - variables["batch_stats"]["channel_norm"]["mean"]
    assert np.abs(moved).max() > 0  # the running mean moved towards the batch's
    # Padded steps enter neither the batch statistics nor the outputs.
    noisy = dict(batch, inputs=np.where(mask[..., None], batch["inputs"], 50.0).astype(np.float32))
    logits2, updates2 = train(variables, noisy)
    np.testing.assert_allclose(logits2, logits, atol=1e-4)
    for a, b in zip(jax.tree.leaves(updates2), jax.tree.leaves(updates)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Evaluation normalises with the running statistics: a series' logits do not depend on its batch.
    state = {**variables, **updates}
    evaluate = jax.jit(model.apply)
    full = evaluate(state, batch)
    n = int(mask[0].sum())
    alone = evaluate(state, {"inputs": batch["inputs"][:1, :n]})
    np.testing.assert_allclose(alone[0], full[0], atol=1e-5)


def test_config_without_shapelets_is_the_generic_branch_alone():
    import jax
    import flax.linen as nn
    from fintrans.models.shapeformer import ShapeFormer
    b = built("shapeformer")
    cfg = b.config.replace(shapelets=(), shapelet_channels=(), shapelet_starts=(), shapelet_weights=())
    variables = jax.eval_shape(ShapeFormer(cfg).init, jax.random.PRNGKey(0), b.batch)
    names = set(nn.unbox(variables)["params"])
    assert "shapelet_block" not in names and "shapelet_offsets" not in names and "generic_block" in names
    assert nn.unbox(variables)["params"]["head"]["kernel"].shape == (cfg.generic_embed_dim, cfg.num_classes)
    with pytest.raises(ValueError, match="shapelet_weights"):
        b.config.replace(shapelet_weights=(0.5,))


def _layer_norm(x, gamma, beta, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _authors_attention(x, p, num_heads):
    """Models/Attention.py Attention.forward, line by line (torch's Linear is x @ W.T; W.T is our kernel)."""
    emb_size = x.shape[-1]
    scale = emb_size ** -0.5
    batch_size, seq_len, _ = x.shape
    kernel = lambda name: p[name]["kernel"].reshape(emb_size, emb_size)
    k = (x @ kernel("key")).reshape(batch_size, seq_len, num_heads, -1).transpose(0, 2, 3, 1)
    v = (x @ kernel("value")).reshape(batch_size, seq_len, num_heads, -1).transpose(0, 2, 1, 3)
    q = (x @ kernel("query")).reshape(batch_size, seq_len, num_heads, -1).transpose(0, 2, 1, 3)
    attn = np.matmul(q, k) * scale
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn = attn / attn.sum(-1, keepdims=True)
    out = np.matmul(attn, v)
    out = out.transpose(0, 2, 1, 3)
    out = out.reshape(batch_size, seq_len, -1)
    return _layer_norm(out, p["out_norm"]["scale"], p["out_norm"]["bias"])  # self.to_out = nn.LayerNorm(emb_size)


def _authors_layer(x, attn_in, p, num_heads, sw):
    """Models/shapeformer.py Shapeformer.forward, the global (shapelet) branch's lines; sw = 1 gives the
    local branch's (local_att = local_x + attention(x_src_pos) ... local_ln2)."""
    relu = lambda z: np.maximum(z, 0)
    ff = lambda z: relu(z @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"]) @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]
    global_att = x + _authors_attention(attn_in, p["attention"], num_heads)
    global_att = global_att * sw[None, :, None]
    global_att = _layer_norm(global_att, p["attention_norm"]["scale"], p["attention_norm"]["bias"])
    global_out = global_att + ff(global_att)
    global_out = _layer_norm(global_out, p["mlp_norm"]["scale"], p["mlp_norm"]["bias"])
    return global_out * sw[None, :, None]


@pytest.mark.parametrize("batch,length,dim,heads", [(2, 5, 8, 2), (3, 7, 12, 3), (1, 4, 16, 4)])
def test_layer_matches_the_authors_pytorch(batch, length, dim, heads):
    rng = np.random.default_rng(dim)
    cfg = built("shapeformer").config.replace(num_heads=heads, shape_embed_dim=dim, generic_embed_dim=dim,
                                               mlp_dim=2 * dim)
    layer = ShapeFormerLayer(cfg, dim)
    x, attn_in = (rng.normal(size=(batch, length, dim)).astype(np.float32) for _ in range(2))
    sw = rng.uniform(0.2, 2.0, size=length).astype(np.float32)
    shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x, attn_in, weights=sw)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.5,
                          flax.linen.unbox(shapes))  # random norms' scales and biases too
    got = jit(lambda p, x, a, w: layer.apply(p, x, a, weights=w))(params, x, attn_in, sw)
    want = _authors_layer(x.astype(np.float64), attn_in.astype(np.float64),
                          jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"]), heads, sw)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    no_weights = jit(lambda p, x, a: layer.apply(p, x, a))(params, x, attn_in)
    np.testing.assert_allclose(no_weights, _authors_layer(x, attn_in, params["params"], heads, np.ones(length)),
                               rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("in_residual", [False, True])
def test_generic_position_enters_the_attention_input_only(in_residual):
    """The authors: local_att = local_x + attention(local_x + pe); position_in_residual=True adds pe to both."""
    b = built("shapeformer")
    cfg = b.config.replace(position_in_residual=in_residual)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ShapeFormerLayer) and context.module.name == "generic_block":
            seen.append((np.asarray(args[0]), np.asarray(args[1])))
        return next_fun(*args, **kwargs)

    params = jax.tree.map(np.asarray, b.params)
    for shift in (0.0, 1.0):  # the same model with its positions moved by `shift`
        p = {"params": {**params["params"], "positions": params["params"]["positions"] + shift}}
        with flax.linen.intercept_methods(record):
            ShapeFormer(cfg).apply(p, b.batch)
    (x0, a0), (x1, a1) = seen
    pos = params["params"]["positions"][None, :b.batch["inputs"].shape[1]] - 0.02
    np.testing.assert_allclose(a1 - a0, 1.0, atol=1e-5)  # the attention input carries the positions
    if in_residual:
        np.testing.assert_array_equal(x0, a0)
        np.testing.assert_allclose(x1 - x0, 1.0, atol=1e-5)
    else:
        np.testing.assert_allclose(a0 - x0, np.broadcast_to(pos, x0.shape), atol=1e-5)
        np.testing.assert_array_equal(x0, x1)  # the residual stream never sees the positions


def test_initial_shapelet_weights_and_dropped_branches():
    g = np.array([0.1, 0.3, 0.2])
    w = initial_shapelet_weights(g, 20.0)
    np.testing.assert_allclose(w, 3 * np.exp(20 * g) / np.exp(20 * g).sum(), rtol=1e-6)
    np.testing.assert_allclose(initial_shapelet_weights(g, None), g, rtol=1e-6)
    b = built("shapeformer")
    for flags, present, absent, width in ((dict(use_class_specific=False), "generic_block", "shapelet_block",
                                           b.config.generic_embed_dim),
                                          (dict(use_generic=False), "shapelet_block", "generic_block",
                                           b.config.shape_embed_dim)):
        names = set(flax.linen.unbox(jax.eval_shape(ShapeFormer(b.config.replace(**flags)).init,
                                                    jax.random.PRNGKey(0), b.batch))["params"])
        assert present in names and absent not in names
    standard = flax.linen.unbox(jax.eval_shape(ShapeFormer(b.config.replace(attention="standard")).init,
                                               jax.random.PRNGKey(0), b.batch))["params"]
    assert "out" in standard["generic_block"]["attention"] and "out_norm" not in standard["generic_block"]["attention"]
    assert "bias" in standard["shapelet_block"]["attention"]["query"]
    with pytest.raises(ValueError, match="no branch"):
        b.config.replace(use_generic=False, use_class_specific=False)
    no_shapelets = b.config.replace(use_generic=False, shapelets=(), shapelet_channels=(), shapelet_starts=(),
                                    shapelet_weights=())
    with pytest.raises(ValueError, match="needs shapelets"):
        jax.eval_shape(ShapeFormer(no_shapelets).init, jax.random.PRNGKey(0), b.batch)
    with pytest.raises(ValueError, match="shapelet_weight_softmax"):
        b.config.replace(shapelet_weight_softmax=-1.0)

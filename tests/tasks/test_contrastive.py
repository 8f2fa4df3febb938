"""NT-Xent against a hand-written numpy version; positives, padding, scale invariance, two model calls."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.models.config import ConfigError
from fintrans.tasks import contrastive
from fintrans.tasks.base import BatchError
from task_cases import FakeRun


def _numpy_nt_xent(z_a, z_b, temperature):
    """SimCLR's loss written out: anchors i and their positives, cosine similarities, 2B - 1 candidates."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z_a)
    losses, correct = [], []
    for i in range(n):
        j = (i + b) % n
        sims = {k: z[i] @ z[k] / temperature for k in range(n) if k != i}
        losses.append(-(sims[j] - np.log(sum(np.exp(v) for v in sims.values()))))
        correct.append(max(sims, key=sims.get) == j)
    return np.mean(losses), np.mean(correct)


def _terms(z_a, z_b, w=None, temperature=0.5, normalize=True):
    w = np.ones(len(z_a), np.float32) if w is None else w
    out = contrastive.nt_xent(jnp.asarray(z_a), jnp.asarray(z_b), jnp.asarray(w), temperature=temperature,
                              normalize=normalize)
    return {k: np.asarray(v) for k, v in out.items()}


def test_nt_xent_matches_numpy():
    rng = np.random.default_rng(0)
    z_a, z_b = rng.normal(size=(2, 5, 3)).astype(np.float32)
    for temperature in (0.1, 1.0):
        loss, accuracy = _numpy_nt_xent(z_a, z_b, temperature)
        terms = _terms(z_a, z_b, temperature=temperature)
        assert terms["loss"].mean() == pytest.approx(loss, rel=1e-5)
        assert terms["correct"].mean() == pytest.approx(accuracy)


def test_scale_invariance_when_normalised():
    rng = np.random.default_rng(1)
    z_a, z_b = rng.normal(size=(2, 6, 4)).astype(np.float32)
    scales = rng.uniform(0.1, 10, (6, 1)).astype(np.float32)
    np.testing.assert_allclose(_terms(z_a * scales, z_b * 3.0)["loss"], _terms(z_a, z_b)["loss"], rtol=1e-5)
    # Without normalisation the dot products change with the scale.
    assert not np.allclose(_terms(z_a * 3, z_b, normalize=False)["loss"], _terms(z_a, z_b, normalize=False)["loss"])


def test_positives_are_the_other_view():
    rng = np.random.default_rng(2)
    z_a = np.eye(6, dtype=np.float32)[:5] * 4 + rng.normal(0, 0.01, (5, 6)).astype(np.float32)
    z_b = z_a + rng.normal(0, 0.01, z_a.shape).astype(np.float32)
    terms = _terms(z_a, z_b, temperature=0.1)
    assert terms["correct"].tolist() == [1.0] * 10
    np.testing.assert_allclose(terms["positive_cosine"], 1.0, atol=1e-3)
    np.testing.assert_allclose(terms["negative_cosine"], 0.0, atol=1e-2)
    shuffled = _terms(z_a, z_b[[1, 2, 3, 4, 0]], temperature=0.1)  # views no longer paired
    assert shuffled["correct"].sum() == 0 and shuffled["loss"].mean() > terms["loss"].mean() + 5


def test_padding_rows_are_neither_anchors_nor_negatives():
    rng = np.random.default_rng(3)
    z_a, z_b = rng.normal(size=(2, 6, 3)).astype(np.float32)
    w = np.array([1, 1, 1, 1, 0, 0], np.float32)
    padded, real = _terms(z_a, z_b, w), _terms(z_a[:4], z_b[:4])
    for k in real:
        np.testing.assert_allclose(padded[k][[0, 1, 2, 3, 6, 7, 8, 9]], real[k], rtol=1e-5, atol=1e-6)
    assert np.all(padded["loss"][[4, 5, 10, 11]] == 0)


def test_task_calls_the_model_twice_with_two_views_and_rngs():
    calls = []

    def apply_fn(params, batch, rng=None):
        calls.append((batch["inputs"], rng))
        return batch["inputs"].reshape(batch["inputs"].shape[0], -1) @ params

    x = np.random.default_rng(4).normal(size=(4, 5, 2)).astype(np.float32)
    params = jnp.asarray(np.random.default_rng(5).normal(size=(10, 3)).astype(np.float32))
    task = contrastive.Contrastive(augment=("jitter", "scaling", "masking"), temperature=0.2)
    batch = {"inputs": x, "valid": np.array([1, 1, 1, 0], bool)}
    task.check_batch(batch)
    loss, metrics = task.loss_and_metrics(apply_fn, params, batch, jax.random.PRNGKey(0), train=True)
    (view_a, rng_a), (view_b, rng_b) = calls
    assert view_a.shape == x.shape and not np.allclose(view_a, view_b) and not np.allclose(view_a, x)
    assert not np.array_equal(jax.random.key_data(rng_a), jax.random.key_data(rng_b))
    expected, _ = _numpy_nt_xent(np.asarray(view_a[:3]).reshape(3, -1) @ np.asarray(params),
                                 np.asarray(view_b[:3]).reshape(3, -1) @ np.asarray(params), 0.2)
    assert float(loss) == pytest.approx(expected, rel=1e-4) and float(metrics["loss"][1]) == 6.0
    # Evaluation without an rng is reproducible; given views are used as they are.
    first = task.loss_and_metrics(apply_fn, params, batch, None, train=False)[0]
    assert float(task.loss_and_metrics(apply_fn, params, batch, None, train=False)[0]) == float(first)
    calls.clear()
    task.loss_and_metrics(apply_fn, params, {"view_a": x, "view_b": x * 2}, None, train=False)
    assert np.array_equal(calls[0][0], x) and np.array_equal(calls[1][0], x * 2) and calls[0][1] is None


def test_augmentations():
    x = jnp.ones((64, 50, 3))
    key = jax.random.PRNGKey(1)
    opts = dict(jitter_std=0.1, scaling_std=0.2, mask_rate=0.25)
    jittered = np.asarray(contrastive.augment(x, key, kinds=("jitter",), **opts))
    assert np.std(jittered - 1) == pytest.approx(0.1, rel=0.05)
    scaled = np.asarray(contrastive.augment(x, key, kinds=("scaling",), **opts))
    assert np.allclose(scaled, scaled[:, :1]) and np.std(scaled[:, 0]) == pytest.approx(0.2, rel=0.25)
    masked = np.asarray(contrastive.augment(x, key, kinds=("masking",), **opts))
    assert set(np.unique(masked)) == {0.0, 1.0} and np.mean(masked == 0) == pytest.approx(0.25, abs=0.02)


def test_options_and_batch_errors():
    with pytest.raises(ConfigError, match="unknown augmentations"):
        contrastive.Contrastive(augment=("crop",))
    with pytest.raises(ConfigError, match="temperature"):
        contrastive.Contrastive(temperature=0)
    task = contrastive.Contrastive()
    with pytest.raises(BatchError, match="view_b"):
        task.check_batch({"view_a": np.zeros((2, 3))})
    with pytest.raises(BatchError, match="same shape"):
        task.check_batch({"view_a": np.zeros((2, 3)), "view_b": np.zeros((2, 4))})
    with pytest.raises(BatchError, match="inputs"):
        task.check_batch({"label": np.zeros(2)})


def test_sample_reports_retrieval_and_rank():
    x = np.random.default_rng(6).normal(size=(16, 8)).astype(np.float32)
    lines = []
    run = FakeRun(lambda p, b: b["inputs"], {"inputs": x})  # identity encoder: views stay nearest each other
    out = contrastive.Contrastive(augment=("jitter",), jitter_std=0.01).sample(run, None, lines.append)
    assert out["accuracy"] == 1.0 and out["positive_cosine"] > 0.99 and 4 < out["effective_rank"] <= 8
    assert run.predict_calls == 2 and "accuracy 1.0000" in lines[-1]
    collapsed = FakeRun(lambda p, b: np.ones_like(b["inputs"]) + 1e-3 * b["inputs"], {"inputs": x})
    assert contrastive.Contrastive().sample(collapsed, None, lines.append)["negative_cosine"] > 0.99


def test_gradients_are_finite_with_padding_rows():
    x = np.random.default_rng(9).normal(size=(6, 4)).astype(np.float32)
    batch = {"inputs": x, "valid": np.array([1, 1, 1, 1, 0, 0], bool)}
    task = contrastive.Contrastive(augment=("jitter",))
    loss_fn = lambda w: task.loss_and_metrics(lambda p, b, rng=None: b["inputs"] @ p, w, batch,
                                              jax.random.PRNGKey(0), train=True)[0]
    loss, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.eye(4))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)

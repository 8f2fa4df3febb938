"""Diffusion: schedules, exact parameterisation identities, DDIM with oracle denoisers, and a tiny
MLP denoiser whose loss falls when trained with optax."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fintrans.models.config import ConfigError
from fintrans.tasks import diffusion
from fintrans.tasks.base import BatchError, accumulate, summarize
from task_cases import FakeRun


@pytest.mark.parametrize("kind", diffusion.SCHEDULES)
def test_schedule_properties(kind):
    for steps in (50, 1000):
        s = diffusion.noise_schedule(kind, steps)
        ab = s.alphas_cumprod
        assert len(ab) == steps and np.all(np.diff(ab) < 0)  # strictly more noise at every step
        assert np.all((s.betas > 0) & (s.betas < 1))
        assert ab[0] > 0.99 and ab[-1] < 1e-3  # nearly clean at t = 0, nearly pure noise at T - 1
        np.testing.assert_allclose(ab, np.cumprod(1 - s.betas))
    linear = diffusion.noise_schedule("linear", 1000)
    assert linear.betas[0] == pytest.approx(1e-4) and linear.betas[-1] == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="schedule must be one of"):
        diffusion.noise_schedule("quadratic", 10)


@pytest.mark.parametrize("kind", diffusion.PREDICTIONS)
def test_x0_and_eps_recovered_exactly(kind):
    rng = np.random.default_rng(0)
    x0, eps = (jnp.asarray(rng.normal(size=(5, 3, 2))) for _ in range(2))
    ab = jnp.asarray(diffusion.noise_schedule("cosine", 100).alphas_cumprod[[0, 10, 50, 90, 99]])
    x_t = diffusion.q_sample(x0, eps, ab)
    got_x0, got_eps = diffusion.x0_and_eps(kind, diffusion.prediction_target(kind, x0, eps, ab), x_t, ab)
    # Exact up to float32 rounding, which the inversions amplify where they divide by a small number:
    # x0 from eps by sqrt(ab) (small at t = T - 1), eps from x0 by sqrt(1 - ab) (small at t = 0).
    np.testing.assert_allclose(got_x0, x0, atol=1e-3 if kind == "epsilon" else 1e-5)
    np.testing.assert_allclose(got_eps, eps, atol=1e-3 if kind == "x0" else 1e-5)


def test_min_snr_weight_is_the_same_in_x0_space():
    ab = jnp.asarray(diffusion.noise_schedule("linear", 100).alphas_cumprod)
    snr = ab / (1 - ab)
    # Squared errors in eps and v are snr and snr + 1 times the squared error of the implied x0, so
    # eps-weight * snr == v-weight * (snr + 1) == x0-weight == min(snr, gamma).
    expected = jnp.minimum(snr, 5.0)
    np.testing.assert_allclose(diffusion.min_snr_weight("epsilon", ab, 5.0) * snr, expected, rtol=1e-5)
    np.testing.assert_allclose(diffusion.min_snr_weight("v", ab, 5.0) * (snr + 1), expected, rtol=1e-5)
    np.testing.assert_allclose(diffusion.min_snr_weight("x0", ab, 5.0), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v"])
def test_ddim_with_the_true_noise_recovers_x0(kind):
    schedule = diffusion.noise_schedule("cosine", 200)
    x0 = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)) * 2, jnp.float32)

    def oracle(x_t, t):  # the exact prediction for these x0
        ab = schedule.ab(t)
        _, eps = diffusion.x0_and_eps("x0", x0, x_t, ab)
        return diffusion.prediction_target(kind, x0, eps, ab)

    x_T = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
    np.testing.assert_allclose(diffusion.ddim_sample(oracle, schedule, x_T, 20, kind), x0, atol=1e-4)


def test_ddim_with_the_optimal_gaussian_denoiser():
    # Data N(mu, sigma^2): E[x0 | x_t] is linear in x_t, so each DDIM step maps x_t - sqrt(ab_t) mu to
    # c (x_t - sqrt(ab_t) mu) with c = (sqrt(ab_s ab_t) sigma^2 + sqrt((1 - ab_s)(1 - ab_t))) / v_t,
    # v_t = ab_t sigma^2 + 1 - ab_t (ab_s = 1 after the last step). Every sample must follow that map, and
    # the samples' spread approaches sigma from below as the steps shrink (Cauchy-Schwarz: c^2 v_t <= v_s).
    mu, sigma = np.array([2.0, -1.0]), np.array([0.5, 1.5])
    schedule = diffusion.noise_schedule("linear", 1000)

    def optimal_eps(x_t, t):
        ab = schedule.ab(t)[:, None]
        x0 = mu + jnp.sqrt(ab) * sigma ** 2 / (ab * sigma ** 2 + 1 - ab) * (x_t - jnp.sqrt(ab) * mu)
        return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

    x_T = jax.random.normal(jax.random.PRNGKey(1), (4096, 2))
    for steps, spread in ((50, 0.08), (500, 0.01)):
        ts = diffusion.ddim_timesteps(1000, steps)
        ab = np.r_[schedule.alphas_cumprod[ts], 1.0]
        c = np.prod([(np.sqrt(ab[i + 1] * ab[i]) * sigma ** 2 + np.sqrt((1 - ab[i + 1]) * (1 - ab[i])))
                     / (ab[i] * sigma ** 2 + 1 - ab[i]) for i in range(len(ts))], axis=0)
        x = diffusion.ddim_sample(jax.jit(optimal_eps), schedule, x_T, steps)
        np.testing.assert_allclose(x, mu + c * (np.asarray(x_T) - np.sqrt(ab[0]) * mu), atol=2e-4)
        assert np.all(c <= sigma) and np.all(c > (1 - spread) * sigma)
        np.testing.assert_allclose(np.mean(x, 0), mu, atol=0.06)


def test_ddim_timesteps():
    assert diffusion.ddim_timesteps(1000, 5).tolist() == [999, 749, 500, 250, 0]
    assert diffusion.ddim_timesteps(3, 10).tolist() == [2, 1, 0]


def _mlp_init(key, width=64):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w1": jax.random.normal(k1, (2 + 16, width)) / np.sqrt(18), "b1": jnp.zeros(width),
            "w2": jax.random.normal(k2, (width, width)) / np.sqrt(width), "b2": jnp.zeros(width),
            "w3": jax.random.normal(k3, (width, 2)) * 0.01, "b3": jnp.zeros(2)}


def _mlp_apply(params, batch, rng=None, num_timesteps=100):
    t = batch["timesteps"].astype(jnp.float32)[:, None] / num_timesteps
    freqs = 2.0 ** jnp.arange(8)
    h = jnp.concatenate([batch["inputs"], jnp.sin(freqs * t), jnp.cos(freqs * t)], -1)
    h = jax.nn.silu(h @ params["w1"] + params["b1"])
    h = jax.nn.silu(h @ params["w2"] + params["b2"])
    return h @ params["w3"] + params["b3"]


def _mixture(key, n):
    centres = jnp.asarray([[-2.0, -2.0], [2.0, 2.0], [2.0, -2.0]])
    k1, k2 = jax.random.split(key)
    return centres[jax.random.randint(k1, (n,), 0, 3)] + 0.3 * jax.random.normal(k2, (n, 2))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_training_a_tiny_denoiser_lowers_the_loss(prediction):
    task = diffusion.Diffusion(schedule="cosine", num_timesteps=100, prediction=prediction, min_snr_gamma=5.0)
    params = _mlp_init(jax.random.PRNGKey(0))
    optimizer = optax.adam(3e-3)
    held_out = {"inputs": _mixture(jax.random.PRNGKey(99), 512)}

    def evaluate(params):  # fixed noise (rng None): the same t and eps every time
        return task.loss_and_metrics(_mlp_apply, params, held_out, None, train=False)

    @jax.jit
    def train(params):
        def step(carry, key):
            params, opt_state = carry
            batch = {"inputs": _mixture(jax.random.fold_in(key, 1), 256)}
            loss, grads = jax.value_and_grad(
                lambda p: task.loss_and_metrics(_mlp_apply, p, batch, key, train=True)[0])(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss
        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)),
                                           jax.random.split(jax.random.PRNGKey(1), 300))
        return params, losses

    before, before_metrics = jax.jit(evaluate)(params)
    trained, losses = train(params)
    after, after_metrics = jax.jit(evaluate)(trained)
    assert float(after) < 0.6 * float(before), (float(before), float(after))
    assert float(np.mean(losses[-50:])) < 0.6 * float(np.mean(losses[:10]))
    # per-bucket losses partition the examples: their sums add up to the loss's
    names = task.bucket_names
    assert names == ["loss_t0-24", "loss_t25-49", "loss_t50-74", "loss_t75-99"]
    sums = sum(float(after_metrics[n][0]) for n in names)
    assert sums == pytest.approx(float(after_metrics["loss"][0]), rel=1e-5)
    assert sum(float(after_metrics[n][1]) for n in names) == 512
    summary = summarize(accumulate(None, jax.device_get(after_metrics)))
    assert summary["loss"] == pytest.approx(float(after), rel=1e-6)


def test_model_call_and_errors():
    seen = {}

    def apply_fn(params, batch, rng=None):
        seen.update(batch, rng=rng)
        return jnp.zeros_like(batch["inputs"])

    task = diffusion.Diffusion(num_timesteps=10, num_buckets=2)
    x0 = np.ones((4, 3, 2), np.float32)
    batch = {"inputs": x0, "cond": np.arange(4)}
    task.check_batch(batch)
    loss, metrics = task.loss_and_metrics(apply_fn, None, batch, jax.random.PRNGKey(0), train=True)
    assert seen["timesteps"].shape == (4,) and seen["timesteps"].dtype == jnp.int32
    assert 0 <= int(seen["timesteps"].min()) and int(seen["timesteps"].max()) < 10
    assert not np.allclose(seen["inputs"], x0) and seen["cond"] is batch["cond"] and seen["rng"] is not None
    assert float(loss) == pytest.approx(float(metrics["mse"][0]) / 4)  # zero prediction: loss = E[eps^2]
    with pytest.raises(ValueError, match="must have the data's shape"):
        task.loss_and_metrics(lambda p, b, rng=None: b["inputs"][:, 0], None, batch, None, train=False)
    with pytest.raises(BatchError, match="inputs"):
        task.check_batch({"label": np.zeros((2, 3))})
    with pytest.raises(BatchError, match="timesteps"):
        task.check_batch({**batch, "timesteps": np.zeros(4, np.int32)})
    with pytest.raises(ConfigError, match="prediction must be one of"):
        diffusion.Diffusion(prediction="score")


def test_sample_draws_ddim_samples_with_the_model():
    # The model is the optimal denoiser for N(mu, sigma^2) data; its DDIM samples match the data's stats.
    mu, sigma = np.array([1.0, -2.0]), np.array([0.5, 1.0])
    task = diffusion.Diffusion(schedule="linear", num_timesteps=200, sample_steps=25)

    def model(params, batch):
        ab = task.schedule.ab(batch["timesteps"])[:, None]
        x_t = batch["inputs"]
        x0 = mu + jnp.sqrt(ab) * sigma ** 2 / (ab * sigma ** 2 + 1 - ab) * (x_t - jnp.sqrt(ab) * mu)
        return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

    data = (mu + sigma * np.random.default_rng(7).normal(size=(2000, 2))).astype(np.float32)
    run = FakeRun(model, {"inputs": data})
    lines = []
    stats = task.sample(run, None, lines.append)
    assert run.predict_calls == 25 and len(lines) == 3
    np.testing.assert_allclose(stats["samples"]["channel_mean"], stats["data"]["channel_mean"], atol=0.08)
    np.testing.assert_allclose(stats["samples"]["channel_std"], stats["data"]["channel_std"], rtol=0.1)

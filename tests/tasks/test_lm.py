"""The lm task: token cross-entropy and accuracy against numpy (padding rows and per-token weights
left out), perplexity, and the sample reaching generation through the model registry."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import models, tasks


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_and_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    batch = {"inputs": rng.integers(0, 7, (3, 5)), "targets": rng.integers(0, 7, (3, 5)),
             "valid": np.array([True, True, False]), "weights": (rng.random((3, 5)) > 0.3).astype(np.float32)}
    task = tasks.build("lm")
    task.check_batch(batch)
    loss, metrics = jax.jit(task.loss_from_outputs)(logits, batch)
    w = batch["weights"] * batch["valid"][:, None]
    ce = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), batch["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, (ce * w).sum() / w.sum(), rtol=1e-5)
    summary = tasks.summarize(jax.device_get(metrics))
    np.testing.assert_allclose(summary["accuracy"], ((logits.argmax(-1) == batch["targets"]) * w).sum() / w.sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(task.derived(summary)["perplexity"], np.exp(summary["loss"]), rtol=1e-9)


def test_mismatched_targets_are_rejected():
    with pytest.raises(ValueError, match="inputs .* and targets .* differ"):
        tasks.build("lm").check_batch({"inputs": np.zeros((2, 4), np.int32), "targets": np.zeros((2, 5), np.int32)})


def _run(generate):
    dataset = types.SimpleNamespace(decode=lambda ids: "".join(chr(ord("a") + int(i)) for i in ids))
    config = types.SimpleNamespace(sample=types.SimpleNamespace(prompt_len=2, num_tokens=3, temperature=0.5, top_k=0),
                                   model=types.SimpleNamespace(name="m"))
    return types.SimpleNamespace(config=config, model_config=types.SimpleNamespace(max_len=16), dataset=dataset,
                                 first_batch=lambda split: {"inputs": np.array([[1, 2, 3], [4, 5, 6]])},
                                 model_spec=types.SimpleNamespace(generate=generate))


def test_sample_generates_through_the_model_registry_hook():
    assert models.get("decoder_lm").generate is not None  # decoder_lm registers its generate
    calls = []

    def generate(model_config, params, prompt, num_tokens, rng, *, temperature, top_k):
        calls.append((prompt.shape, num_tokens, temperature, top_k))  # traced: the task jits it
        return jnp.concatenate([prompt, jnp.full((1, num_tokens), 9, prompt.dtype)], axis=1)

    printed = []
    out = tasks.build("lm").sample(_run(generate), params={}, print_fn=printed.append)
    assert calls == [((1, 2), 3, 0.5, None)]
    assert out == {"prompt": "bc", "generated": "jjj"} and "jjj" in printed[0]


def test_sample_without_a_generate_hook_says_so():
    printed = []
    assert tasks.build("lm").sample(_run(None), params={}, print_fn=printed.append) == {}
    assert "no generate hook" in printed[0]

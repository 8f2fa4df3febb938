"""Shapley token attributions: known games, a bag-of-words model with known answers, a tiny BERT."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from fintrans.interpret import exact_shapley, permutation_shapley, token_attributions
from fintrans.models.bert import BertClassifier, BertClassifierConfig


def _game(weights, pair, bonus):
    """v(S) = sum of the members' weights + `bonus` when both of `pair` are in S."""
    w = np.asarray(weights, np.float64)
    return lambda c: c @ w + bonus * (c[:, pair[0]] & c[:, pair[1]])


def test_exact_shapley_of_a_known_game():
    w = [0.5, -1.0, 0.0, 2.0, 0.25]  # player 2 is a dummy
    phi = exact_shapley(_game(w, (1, 3), 3.0), 5)
    # Additive parts go to their own player; the interaction is split evenly between its pair.
    np.testing.assert_allclose(phi, [0.5, -1.0 + 1.5, 0.0, 2.0 + 1.5, 0.25], atol=1e-12)
    estimate = permutation_shapley(_game(w, (1, 3), 3.0), 5, num_permutations=64, seed=3)
    assert abs(estimate.sum() - (sum(w) + 3.0)) < 1e-12  # efficiency holds for every ordering
    assert estimate[2] == 0.0 and np.all(np.abs(estimate - phi) < 0.6)
    with pytest.raises(ValueError, match="limit is 14 players"):
        exact_shapley(_game([0.0] * 20, (0, 1), 0.0), 20)


def test_bag_of_words_model_gets_its_weights_and_an_ignored_token_zero():
    vocab_logit = np.linspace(-2, 2, 30)
    vocab_logit[7] = 0.0  # the model ignores token 7

    def logits_fn(batch):  # logit of class 1 = sum of its tokens' weights (special tokens weigh nothing)
        x, m = batch["inputs"], batch["mask"]
        score = np.where(m & (x > 2), vocab_logit[x], 0.0).sum(1)
        return np.stack([np.zeros_like(score), score], 1)

    inputs = np.array([1, 12, 7, 25, 4, 2, 0, 0])
    att = token_attributions(logits_fn, inputs, inputs != 0)
    np.testing.assert_array_equal(att.positions, [1, 2, 3, 4])
    np.testing.assert_allclose(att.values, vocab_logit[[12, 7, 25, 4]], atol=1e-12)
    assert att.exact and att.values[1] == 0.0 and att.gap < 1e-12


def test_tiny_bert_attributions_are_efficient_and_sampling_agrees_with_exact():
    cfg = BertClassifierConfig(vocab_size=40, max_len=16, embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
                               dropout_rate=0.0)
    model = BertClassifier(cfg)
    inputs = np.array([1, 5, 9, 17, 23, 30, 11, 2, 0, 0, 0, 0])
    mask = inputs != 0
    params = model.init(jax.random.PRNGKey(0), {"inputs": inputs[None], "mask": mask[None]})
    apply = jax.jit(lambda b: model.apply(nn.unbox(params), b))
    exact = token_attributions(apply, inputs, mask)
    assert exact.exact and len(exact.values) == 6 and exact.gap < 1e-4  # float32 logits
    sampled = token_attributions(apply, inputs, mask, max_exact=0, num_permutations=400)
    assert not sampled.exact and sampled.gap < 1e-4
    np.testing.assert_allclose(sampled.values, exact.values, atol=0.1 * np.abs(exact.values).max() + 1e-3)
    with pytest.raises(ValueError, match="no word tokens"):
        token_attributions(apply, np.array([1, 2, 0, 0]), np.array([True, True, False, False]))

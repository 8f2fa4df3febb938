"""Shapley values of a sentence's tokens for a classifier's log-odds (FinAI-BERT's SHAP analysis).

A game is `value_fn(coalitions) -> values`: coalitions bool[M, n] (True = the player is present) to
float[M]. `exact_shapley` enumerates all 2^n coalitions (n <= MAX_EXACT_PLAYERS) and weights each
marginal contribution by |S|! (n - |S| - 1)! / n!. `permutation_shapley` averages marginal
contributions along random orderings (each with its reverse, antithetic sampling); every ordering's
contributions sum to v(all) - v(none), so the estimate keeps efficiency exactly.

For a text classifier (`token_attributions`) the players are the sentence's word tokens ([CLS],
[SEP] and padding excluded) and a token leaves the coalition by leaving the attention mask: no query
sees it, and as the classifier reads only [CLS]'s output, the prediction is the model's on the
sentence without that word (the other words keep their positions). The value is the log-odds of
the target class, logit[target] - logsumexp(other logits), so attributions sum to
log-odds(sentence) - log-odds([CLS] [SEP]).

Differences from the paper's SHAP analysis: the `shap` package's text explainer replaces absent
tokens by the tokenizer's [MASK] token and estimates the values by its partition explainer; here an
absent token is masked out of attention (the synthetic vocab has no [MASK]), and the values are
exact for short sentences (sampled, with efficiency kept, for longer ones).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

MAX_EXACT_PLAYERS = 14  # 2^14 = 16,384 coalitions: a few seconds of a small BERT on CPU
Game = Callable[[np.ndarray], np.ndarray]


def _values(value_fn: Game, coalitions: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(value_fn(coalitions[i:i + batch_size]), np.float64).reshape(-1)
           for i in range(0, len(coalitions), batch_size)]
    values = np.concatenate(out)
    if values.shape != (len(coalitions),):
        raise ValueError(f"value_fn must return one value per coalition: {len(coalitions)}, got {values.shape}")
    return values


def _check_players(num_players: int) -> None:
    if isinstance(num_players, bool) or not isinstance(num_players, (int, np.integer)) or num_players < 1:
        raise ValueError(f"num_players must be a positive integer, got {num_players!r}")


def exact_shapley(value_fn: Game, num_players: int, *, batch_size: int = 1024) -> np.ndarray:
    """The exact Shapley values float64[num_players] of the game (all 2^n coalitions evaluated)."""
    _check_players(num_players)
    n = int(num_players)
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(f"exact Shapley values of {n} players need 2^{n} evaluations; the limit is "
                         f"{MAX_EXACT_PLAYERS} players (use permutation_shapley or shapley_values)")
    codes = np.arange(2 ** n)
    coalitions = (codes[:, None] >> np.arange(n)) & 1 == 1  # coalition c holds player i iff bit i of c is set
    v = _values(value_fn, coalitions, batch_size)
    size = coalitions.sum(1)
    # weight of a coalition S without i: |S|! (n - |S| - 1)! / n!
    weight = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) if s < n else 0.0
                       for s in range(n + 1)])
    phi = np.zeros(n)
    for i in range(n):
        without = codes[~coalitions[:, i]]
        phi[i] = np.sum(weight[size[without]] * (v[without | (1 << i)] - v[without]))
    return phi


def permutation_shapley(value_fn: Game, num_players: int, *, num_permutations: int = 256, seed: int = 0,
                        batch_size: int = 1024) -> np.ndarray:
    """Shapley values estimated from `num_permutations` random orderings (half of them the reverses of the
    others); the estimate's sum is exactly v(all) - v(none)."""
    _check_players(num_players)
    if num_permutations < 2 or num_permutations % 2:
        raise ValueError(f"num_permutations must be an even number >= 2 (orderings come with their reverses), "
                         f"got {num_permutations}")
    n = int(num_players)
    rng = np.random.default_rng(seed)
    half = np.stack([rng.permutation(n) for _ in range(num_permutations // 2)])
    orders = np.concatenate([half, half[:, ::-1]])
    # coalition k of an ordering holds its first k players (k = 0..n)
    rank = np.argsort(orders, axis=1)  # rank[p, i]: where player i comes in ordering p
    coalitions = rank[:, None, :] < np.arange(n + 1)[None, :, None]  # [P, n + 1, n]
    v = _values(value_fn, coalitions.reshape(-1, n), batch_size).reshape(len(orders), n + 1)
    marginal = np.diff(v, axis=1)  # marginal[p, k]: what the (k+1)-th player of ordering p adds
    phi = np.zeros(n)
    np.add.at(phi, orders.reshape(-1), marginal.reshape(-1))
    return phi / len(orders)


def shapley_values(value_fn: Game, num_players: int, *, max_exact: int = 12, num_permutations: int = 256,
                   seed: int = 0, batch_size: int = 1024) -> tuple[np.ndarray, bool]:
    """(values, exact): exact for at most `max_exact` players, else estimated by permutations."""
    if num_players <= min(max_exact, MAX_EXACT_PLAYERS):
        return exact_shapley(value_fn, num_players, batch_size=batch_size), True
    return permutation_shapley(value_fn, num_players, num_permutations=num_permutations, seed=seed,
                               batch_size=batch_size), False


@dataclasses.dataclass(frozen=True)
class TokenAttribution:
    """Shapley values of one sentence's word tokens for the target class's log-odds."""
    positions: np.ndarray  # int[n]: the players' positions in the input
    token_ids: np.ndarray  # int[n]
    values: np.ndarray  # float64[n]: Shapley value of each token (log-odds units)
    full: float  # log-odds of the sentence
    empty: float  # log-odds of [CLS] [SEP] alone (every word masked out)
    exact: bool  # False: estimated by permutation sampling

    @property
    def gap(self) -> float:
        """|sum(values) - (full - empty)|: 0 up to rounding (efficiency)."""
        return abs(float(self.values.sum()) - (self.full - self.empty))


def log_odds(logits: np.ndarray, target: int) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    others = np.delete(logits, target, axis=-1)
    top = others.max(-1, keepdims=True)
    return logits[..., target] - (top[..., 0] + np.log(np.exp(others - top).sum(-1)))


def token_attributions(logits_fn: Callable[[dict], np.ndarray], inputs: np.ndarray, mask: np.ndarray, *,
                       target: int = 1, special_ids: Sequence[int] = (0, 1, 2), max_exact: int = 12,
                       num_permutations: int = 256, seed: int = 0, batch_size: int = 1024) -> TokenAttribution:
    """Shapley values of the word tokens of one sentence (inputs, mask: [L]) for log-odds of `target`.

    `logits_fn({'inputs': int[M, L], 'mask': bool[M, L]}) -> float[M, classes]` is the classifier (e.g.
    a jitted `model.apply` with trained parameters); tokens in `special_ids` ([PAD], [CLS], [SEP]) and
    masked positions are never players."""
    inputs, mask = np.asarray(inputs), np.asarray(mask, bool)
    if inputs.ndim != 1 or mask.shape != inputs.shape:
        raise ValueError(f"token_attributions explains one sentence: inputs and mask of shape [length], got "
                         f"{inputs.shape} and {mask.shape}")
    positions = np.flatnonzero(mask & ~np.isin(inputs, list(special_ids)))
    if positions.size == 0:
        raise ValueError("the sentence has no word tokens to attribute (only special tokens or padding)")

    def game(coalitions: np.ndarray) -> np.ndarray:
        rows = 1 << max(len(coalitions) - 1, 0).bit_length()  # padded to a power of two: few jit shapes
        m = np.repeat(mask[None], rows, 0)
        m[:len(coalitions), positions] = coalitions
        logits = logits_fn({"inputs": np.repeat(inputs[None], rows, 0), "mask": m})
        return log_odds(np.asarray(logits)[:len(coalitions)], target)

    n = len(positions)
    values, exact = shapley_values(game, n, max_exact=max_exact, num_permutations=num_permutations, seed=seed,
                                   batch_size=batch_size)
    ends = game(np.array([np.ones(n, bool), np.zeros(n, bool)]))
    return TokenAttribution(positions=positions, token_ids=inputs[positions], values=values, full=float(ends[0]),
                            empty=float(ends[1]), exact=exact)

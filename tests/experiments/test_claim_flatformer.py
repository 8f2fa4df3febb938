"""The FlatFormer claim script's numbers and verdict logic (no training: made-up confusions and
intervals; the training path is the script's --quick run)."""
import numpy as np

from experiments.claims import flatformer as claim


def test_verdict_follows_the_interval_against_the_margin():
    m = claim.MARGIN
    assert claim.verdict(-m / 2, 0.05) == "holds"
    assert claim.verdict(-3 * m, -2 * m) == "does not hold"
    assert claim.verdict(-2 * m, 0.01) == "inconclusive"


def test_miou_and_paired_bootstrap_from_confusions():
    conf = np.array([[8, 2, 0], [1, 4, 0], [0, 0, 0]])          # class 2 absent: left out
    miou, acc = claim.miou_accuracy(conf)
    assert np.isclose(miou, np.mean([8 / 11, 4 / 7])) and np.isclose(acc, 12 / 15)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 20, (3, 10, 3, 3)) + np.eye(3, dtype=int) * 30    # better diagonal
    b = rng.integers(0, 20, (3, 10, 3, 3))
    d = claim.paired_scene_bootstrap(a, b, num_resamples=200)
    for mean, lo, hi in d.values():
        assert lo <= mean <= hi and lo > 0
    same = claim.paired_scene_bootstrap(a, a, num_resamples=50)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())

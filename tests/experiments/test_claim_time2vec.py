"""experiments/claims/time2vec.py: the verdict follows the paired intervals."""
from experiments.claims import time2vec as claim


def test_comparisons_and_verdict_follow_the_intervals():
    assert claim.compare((-0.2, -0.3, -0.1)) == "better"
    assert claim.compare((0.2, 0.1, 0.3)) == "worse"
    assert claim.compare((0.0, -0.1, 0.1)) == "tie"
    assert claim.verdict({"a mse": "better", "b mae": "better"}) == "holds"
    assert claim.verdict({"a mse": "better", "b mae": "worse"}) == "does not hold"
    assert claim.verdict({"a mse": "better", "b mae": "tie"}) == "inconclusive"

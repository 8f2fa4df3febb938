"""experiments/claims/lmuformer.py: the verdicts follow the numbers."""
from experiments.claims import lmuformer as claim


def test_accuracy_and_streaming_verdicts_follow_the_numbers():
    assert claim.accuracy_verdict((0.0, -0.01, 0.01)) == "holds"  # within the non-inferiority margin
    assert claim.accuracy_verdict((-0.05, -0.08, -0.02)) == "does not hold"
    assert claim.accuracy_verdict((-0.01, -0.05, 0.03)) == "inconclusive"
    flat, growing = {16: 100.0, 1024: 100.0}, {16: 100.0, 1024: 400.0}
    assert claim.streaming_verdict(flat, growing, 1.0, 1e-5) == "holds"
    assert claim.streaming_verdict(growing, growing, 1.0, 1e-5) == "does not hold"
    assert claim.streaming_verdict(flat, flat, 1.0, 1e-5) == "does not hold"
    assert claim.streaming_verdict(flat, growing, 0.9, 1e-5) == "does not hold"

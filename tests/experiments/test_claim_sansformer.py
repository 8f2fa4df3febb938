"""experiments/claims/sansformer.py: its verdicts follow the intervals, and its report is well formed (on
made-up errors, no training: the script's --quick run trains five models, too slow for the suite)."""
import numpy as np

from experiments.claims import sansformer as cs
from experiments.claims.common import VERDICTS


def test_verdicts_follow_the_intervals():
    assert cs.size_verdict(0.5, 2.0) == "GSP better"
    assert cs.size_verdict(-2.0, -0.1) == "scratch better"
    assert cs.size_verdict(-0.5, 1.0) == "no difference"
    assert cs.overall_verdict((0.5, 2.0), (0.1, 1.0)) == "holds"
    assert cs.overall_verdict((0.5, 2.0), (-0.3, 1.0)) == "inconclusive"  # better, but not more so
    assert cs.overall_verdict((-0.5, 2.0), (0.1, 1.0)) == "inconclusive"
    assert cs.overall_verdict((-2.0, -0.5), (0.1, 1.0)) == "does not hold"


def test_report_on_made_up_errors():
    rng = np.random.default_rng(0)
    p = dict(sizes=(10, 100), seeds=(0, 1, 2))
    y = rng.poisson(10, 50).astype(float)
    # Fine-tuning is 3 better at 10 labels and equal at 100: the claim holds.
    e = {("scratch", 10): rng.uniform(4, 6, (3, 50)) + 3, ("finetuned", 10): rng.uniform(4, 6, (3, 50)),
         ("scratch", 100): np.full((3, 50), 4.0), ("finetuned", 100): np.full((3, 50), 4.0)}
    base = {(k, n): (np.full(50, 5.0), np.full(50, 25.0))
            for k in ("hist_gradient_boosting", "poisson_regression", "train_mean") for n in p["sizes"]}
    claim, raw = cs.report(p, e, {k: v ** 2 for k, v in e.items()}, base, y, 1.0, quick=True)
    assert claim.verdict == raw["verdict"] == "holds" and claim.verdict in VERDICTS
    assert raw["per_size"]["10"]["verdict"] == "GSP better" and raw["per_size"]["100"]["verdict"] == "no difference"
    lo, hi = raw["smallest_size_gain"][1:]
    assert 2.5 < lo < 3 < hi < 3.5
    assert claim.results.count("\n|") >= 3 and "train-mean MAE" in claim.results
    # Reversed, scratch is better at the smallest size: it does not hold.
    flipped = {("scratch", n) if a == "finetuned" else ("finetuned", n): v for (a, n), v in e.items()}
    assert cs.report(p, flipped, {k: v ** 2 for k, v in flipped.items()}, base, y, 1.0, quick=True)[0].verdict \
        == "does not hold"


def test_bag_of_visits_features():
    x = np.zeros((2, 16, 34), np.float32)
    x[0, :, 0] = 1  # diagnosis 0 at every visit
    x[:, 1:, 33] = np.log1p(30.0) / 4  # 30-day gaps
    f = cs.bag_of_visits(x)
    assert f.shape == (2, 32 + 5) and f[0, 0] == 16 and f[1, 0] == 0
    np.testing.assert_allclose(f[:, -1], np.log1p(15 * 30.0), rtol=1e-4)  # the history's span in days

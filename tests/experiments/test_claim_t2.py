"""experiments/claims/t2.py: the verdict follows the intervals, and a --quick run writes a well-formed claim
(its verdict recomputed from its own numbers) without touching experiments/results."""
import json

import numpy as np
import pytest

from experiments.claims import t2
from experiments.claims.common import VERDICTS


def test_verdict_follows_the_intervals():
    chance = 0.125
    assert t2.verdict((0.2, 0.3), chance, (-0.03, 0.01)) == ("holds", "holds", "holds")
    assert t2.verdict((0.05, 0.1), chance, (-0.03, 0.01))[:2] == ("does not hold", "does not hold")
    assert t2.verdict((0.2, 0.3), chance, (-0.2, -0.1)) == ("does not hold", "holds", "does not hold")
    assert t2.verdict((0.1, 0.2), chance, (-0.03, 0.01)) == ("inconclusive", "inconclusive", "holds")
    assert t2.verdict((0.2, 0.3), chance, (-0.07, -0.02)) == ("inconclusive", "holds", "inconclusive")
    # hits: a peak counts only inside [start, start + len)
    np.testing.assert_array_equal(t2.hits(np.array([3, 10, 12, 2]), np.array([3, 3, 4, 3]), 8), [1, 1, 0, 0])


@pytest.mark.slow
def test_quick_run_writes_a_consistent_claim(tmp_path):
    out = t2.main(["--quick", "--seeds=0", f"--workdir={tmp_path}"])
    assert out["path"].parent == tmp_path / "quick"
    record = json.loads(out["path"].read_text())
    raw = record["raw"]
    assert record["key"] == "t2" and record["verdict"] in VERDICTS and raw["quick"]
    n = len(raw["label"])
    assert len(raw["t2_correct"]) == len(raw["minirocket_correct"]) == 1 and len(raw["t2_correct"][0]) == n
    assert all(0 <= p < 64 for p in raw["t2_cam_peak_true"][0])
    hits = t2.hits(np.array(raw["t2_cam_peak_true"][0]), np.array(raw["event_start"]), 8)
    assert raw["cam_hit_rate_per_seed"][0] == pytest.approx(hits.mean())
    assert raw["t2_accuracy_per_seed"][0] == pytest.approx(np.mean(raw["t2_correct"][0]))
    assert record["verdict"] == t2.verdict(raw["cam_hit_ci"][1:], raw["chance"], raw["difference_ci"][1:])[0]
    assert "## t2" in (tmp_path / "quick" / "claims.md").read_text()

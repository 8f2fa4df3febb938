"""experiments/claims/shapeformer.py: its verdicts follow the intervals, and its claim section is well formed
(made-up per-series results; no training, so it is fast)."""
import json

import numpy as np

from experiments.claims import shapeformer as sf
from experiments.claims.common import paired_bootstrap_ci


def test_verdicts_follow_the_intervals():
    assert sf.interval_verdict(0.01, 0.2) == "holds"
    assert sf.interval_verdict(-0.2, -0.01) == "does not hold"
    assert sf.interval_verdict(-0.05, 0.1) == "inconclusive"
    assert sf.overall_verdict(["holds", "holds"]) == "holds"
    assert sf.overall_verdict(["holds", "inconclusive"]) == "inconclusive"
    assert sf.overall_verdict(["does not hold", "inconclusive"]) == "does not hold"
    assert sf.overall_verdict(["holds", "does not hold"]) == "inconclusive"


def test_claim_section_is_well_formed(tmp_path):
    rng = np.random.default_rng(0)
    raw = {"seeds": [0, 1, 2], "datasets": {}}
    for ds, p_both in (("japanese_vowels", 0.95), ("arrow_head", 0.8)):
        correct = {v: (rng.random((3, 120)) < p).astype(float).tolist()
                   for v, p in (("both", p_both), ("generic", 0.5), ("shapelet", 0.6))}
        c = {v: np.asarray(x) for v, x in correct.items()}
        diff = paired_bootstrap_ci(c["both"], c["generic"])
        raw["datasets"][ds] = {
            "num_shapelets": 3, "shapelet_lengths": [4, 5, 6], "params": {"both": 100, "generic": 98, "shapelet": 60},
            "generic_dim": 40, "correct": correct, "accuracy": {v: c[v].mean(1).tolist() for v in c},
            "both_minus_generic": diff, "shapelet_minus_generic": paired_bootstrap_ci(c["shapelet"], c["generic"]),
            "verdict": sf.interval_verdict(*diff[1:])}
    claim = sf.make_claim(raw, quick=False)
    assert claim.verdict == "holds"  # both clearly above generic on both sets
    assert "japanese_vowels" in claim.results and "arrow_head" in claim.results and "±" in claim.results
    from experiments.claims.common import write_claim
    path = write_claim(claim, raw, claims_dir=tmp_path / "claims", report=tmp_path / "claims.md")
    record = json.loads(path.read_text())
    assert record["key"] == "shapeformer" and record["verdict"] == "holds"
    assert "ShapeFormer" in (tmp_path / "claims.md").read_text()

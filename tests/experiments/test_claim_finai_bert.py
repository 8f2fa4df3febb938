"""experiments/claims/finai_bert.py: the verdict follows the paired intervals; --quick writes a well-formed claim."""
import json

import numpy as np
import pytest

from experiments.claims import finai_bert


def test_verdict_follows_the_paired_intervals():
    assert finai_bert.verdict({"lr": (0.05, 0.01, 0.09), "nb": (0.1, 0.02, 0.2)}) == "holds"
    assert finai_bert.verdict({"lr": (0.05, 0.01, 0.09), "nb": (-0.1, -0.2, -0.02)}) == "does not hold"
    assert finai_bert.verdict({"lr": (0.05, 0.01, 0.09), "nb": (0.0, -0.03, 0.04)}) == "inconclusive"
    y = np.array([1, 1, 0, 0])
    assert finai_bert.f1(y, np.array([1, 0, 0, 1])) == pytest.approx(0.5)


@pytest.mark.slow
def test_quick_run_writes_a_well_formed_claim(monkeypatch, tmp_path):
    monkeypatch.setattr(finai_bert, "WORKDIR", tmp_path)
    finai_bert.main(["--quick"])
    record = json.loads((tmp_path / "quick" / "finai_bert.json").read_text())
    raw = record["raw"]
    assert record["key"] == "finai_bert" and record["verdict"] == finai_bert.verdict(raw["accuracy_diff"])
    assert raw["n_test"] == 318 and raw["train_labels_flipped"] == 33
    for name, (mean, lo, hi) in raw["accuracy_bootstrap"].items():
        assert lo <= mean <= hi and mean == pytest.approx(np.mean(raw["accuracy_per_seed"][name]))
    assert "## FinAI-BERT" in (tmp_path / "quick" / "claims.md").read_text()

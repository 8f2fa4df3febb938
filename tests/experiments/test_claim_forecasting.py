"""experiments/claims/forecasting.py on made-up runs (no training): the verdict rule follows the intervals,
the sides of each comparison are chosen on validation, and the three claims written are well formed and
their verdicts follow the per-window errors they were given."""
import json

import numpy as np

from experiments.claims import forecasting as claim
from experiments.forecasting_table import summarize


def test_verdict_follows_the_intervals():
    below, above, spans = (-0.2, -0.3, -0.1), (0.2, 0.1, 0.3), (0.0, -0.1, 0.1)
    assert claim.verdict([below, below, spans, spans]) == "holds"
    assert claim.verdict([below, spans, spans, spans]) == "inconclusive"  # support in fewer than half
    assert claim.verdict([below, below, below, above]) == "inconclusive"  # contradicted somewhere
    assert claim.verdict([above, above, spans, spans]) == "does not hold"
    assert claim.verdict([spans] * 4) == "inconclusive"


def _fake_grid(tmp_path, level):
    """Runs whose per-window test MSE is level[model] + noise; validation MSE favours the 'window' setting."""
    rng = np.random.default_rng(0)
    grid = dict(datasets=["stocks"], horizons=[4, 8], models=list(level), norms=["none", "window"], seeds=[0, 1, 2])
    finals, n = {}, 60
    (tmp_path / "errors").mkdir()
    for h in grid["horizons"]:
        for m in grid["models"]:
            for norm in grid["norms"]:
                rows = []
                for s in grid["seeds"]:
                    base = level[m] + (0.0 if norm == "window" else 0.5)
                    e = np.abs(base + 0.05 * rng.normal(size=n))
                    path = f"errors/{m}_{norm}_{h}_{s}.npz"
                    np.savez(tmp_path / path, test_mse=e.astype(np.float32), test_mae=np.sqrt(e))
                    rows.append({"data": "stocks", "horizon": h, "model": m, "norm": norm, "seed": s, "lr": 1e-3,
                                 "window_norm": "none", "best_step": 10, "stopped_at": 20, "stopped_early": True,
                                 "seconds": 1.0, "validation/mse": base, "test/mse": float(e.mean()),
                                 "test/mae": float(np.sqrt(e).mean()), "errors": path})
                finals[("stocks", h, m, norm)] = rows
    floors = {("stocks", h): {"naive_mse": np.full(n, 2.0), "naive_mae": np.full(n, 1.0),
                              "ets_mse": np.full(n, 1.9), "ets_mae": np.full(n, 1.0),
                              "outside_train_range": np.float64(0.1)} for h in grid["horizons"]}
    return grid, finals, summarize(tmp_path, finals, floors, num_resamples=100)


def test_claims_follow_the_errors(tmp_path):
    level = {"dlinear": 0.5, "transformer_forecaster": 1.0, "autoformer": 1.5, "itransformer": 1.0}
    grid, finals, summary = _fake_grid(tmp_path, level)
    out = claim.claims(tmp_path, grid, summary, finals, num_resamples=200)
    assert set(out) == {"ltsf_linear", "autoformer", "itransformer"}
    assert out["ltsf_linear"][0]["verdict"] == "holds"  # 0.5 vs 1.0: below 0 in both cells
    assert out["autoformer"][0]["verdict"] == "does not hold"  # 1.5 vs 1.0
    assert out["itransformer"][0]["verdict"] == "inconclusive"  # same level: intervals span 0
    cell = out["ltsf_linear"][1]["cells"]["stocks_h4"]
    assert cell["a"][3] == cell["b"][3] == "window"  # chosen on validation
    assert cell["b"][2] in ("transformer_forecaster", "itransformer")

    from experiments.claims.common import Claim, write_claim
    for key, (fields, raw) in out.items():
        path = write_claim(Claim(key=key, command="x", **fields), raw, claims_dir=tmp_path / "claims",
                           report=tmp_path / "claims.md")
        record = json.loads(path.read_text())
        assert record["verdict"] == fields["verdict"] and "| data | horizon |" in record["results"]
    assert "Autoformer (Wu et al., NeurIPS 2021)" in (tmp_path / "claims.md").read_text()

"""experiments/claims/common.py: the intervals cover what they should, the block bootstrap widens for
autocorrelated errors, pairing removes shared test-set noise, and the report is built from the JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.claims import common


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 5000)
    m, lo, hi = common.bootstrap_ci(small, num_resamples=500)
    assert lo < m < hi and lo < 1.0 < hi
    _, lo2, hi2 = common.bootstrap_ci(large, num_resamples=500)
    assert hi2 - lo2 < (hi - lo) / 4  # width ~ 1/sqrt(n): 10x fewer examples, ~10x wider


def test_block_bootstrap_is_wider_than_iid_on_autocorrelated_errors():
    rng = np.random.default_rng(1)
    # A random walk's increments summed over 20 steps: neighbouring windows share most of their noise.
    noise = rng.normal(size=2020)
    errors = np.convolve(noise, np.ones(20), "valid")[:2000] / 20
    _, lo_iid, hi_iid = common.bootstrap_ci(errors, num_resamples=500)
    _, lo_blk, hi_blk = common.block_bootstrap_ci(errors[None], block=40, num_resamples=500)
    assert hi_blk - lo_blk > 2 * (hi_iid - lo_iid)


def test_block_bootstrap_draws_every_window_equally_often():
    # Circular blocks: the first and last windows are as likely as the middle ones (a moving-block bootstrap
    # draws window 0 only from the block starting there, ~1/block as often as a middle window).
    n, block = 50, 10
    idx = common._block_indices(np.random.default_rng(0), n, block, 4000)
    assert idx.shape == (4000, n) and idx.min() == 0 and idx.max() == n - 1
    counts = np.bincount(idx.ravel(), minlength=n) / idx.size
    np.testing.assert_allclose(counts, 1 / n, rtol=0.05)
    # Each block is `block` consecutive windows (mod n).
    steps = np.diff(idx.reshape(4000, -1, block), axis=-1) % n
    assert np.all(steps == 1)


def test_paired_interval_sees_a_small_shift_that_unpaired_noise_hides():
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 1.0, (3, 400))         # the test set's own difficulty, the same for both models
    a, b = shared + 0.1, shared + rng.normal(0, 0.01, (3, 400))
    d, lo, hi = common.paired_block_bootstrap_ci(a, b, block=10, num_resamples=500)
    assert 0 < lo < d < hi
    _, lo_a, hi_a = common.block_bootstrap_ci(a, block=10, num_resamples=500)
    _, lo_b, hi_b = common.block_bootstrap_ci(b, block=10, num_resamples=500)
    assert lo_a < hi_b and lo_b < hi_a  # the separate intervals overlap
    with pytest.raises(ValueError, match="same test windows"):
        common.paired_block_bootstrap_ci(a, b[:, :300], block=10)


def _claim(key, verdict="holds"):
    return common.Claim(key=key, paper=f"Paper {key}", claim=f"{key} beats the baseline.", paper_figure="+1%",
                        protocol="- tiny", results=common.markdown_table(["model", "acc"], [["a", "0.9"]]),
                        verdict=verdict, reason="because", command=f"python -m experiments.claims.{key}")


def test_write_claim_writes_json_and_a_report_in_the_papers_order(tmp_path):
    report = tmp_path / "claims.md"
    common.write_claim(_claim("lmuformer", "does not hold"), {"acc": [0.5]}, claims_dir=tmp_path / "c", report=report)
    path = common.write_claim(_claim("ltsf_linear"), {"mse": 0.1}, claims_dir=tmp_path / "c", report=report)
    assert json.loads(path.read_text())["raw"] == {"mse": 0.1}
    text = report.read_text()
    assert text.index("## Paper ltsf_linear") < text.index("## Paper lmuformer")  # ORDER, not file order
    assert "**Verdict: does not hold.**" in text and "| Paper lmuformer | lmuformer beats the baseline. |" in text


def test_claim_rejects_unknown_verdicts_and_ragged_tables():
    with pytest.raises(ValueError, match="verdict"):
        _claim("x", verdict="mostly")
    with pytest.raises(ValueError, match="2 headers"):
        common.markdown_table(["a", "b"], [["1"]])

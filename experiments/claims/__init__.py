"""One script per paper's central claim; each writes experiments/results/claims/KEY.json and the
shared report, experiments/results/claims.md (see common.py)."""

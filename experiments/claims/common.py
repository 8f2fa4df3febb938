r"""What every claim script shares: uncertainty estimates and the claims report.

A claim script trains what its claim compares, then calls `write_claim(Claim(...), raw)`, which
writes experiments/results/claims/KEY.json (the section's text plus every number behind it) and
regenerates experiments/results/claims.md from all such files, so the report is always the sum of
the last run of every script. `python -m experiments.claims.common` regenerates it alone.

Uncertainty: `seed_mean_std` over training seeds; `bootstrap_ci` resamples test examples;
`block_bootstrap_ci` resamples seeds *and* contiguous blocks of test windows (forecasting windows
overlap and errors are autocorrelated, so resampling single windows would understate the spread);
`paired_*` variants resample the same indices for two models, so their difference's interval
reflects that both were scored on the same test set.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
CLAIMS_DIR = RESULTS / "claims"
REPORT = RESULTS / "claims.md"
VERDICTS = ("holds", "does not hold", "inconclusive")
# Report order: the papers as the issue lists them; unknown keys follow alphabetically.
ORDER = ("ltsf_linear", "autoformer", "itransformer", "time2vec", "shapeformer", "t2", "sansformer",
         "lmuformer", "flatformer", "finai_bert")


@dataclasses.dataclass(frozen=True)
class Claim:
    key: str            # file stem, e.g. "lmuformer"
    paper: str          # "LMUFormer (Liu et al., ICLR 2024)"
    claim: str          # the claim, one sentence
    paper_figure: str   # the paper's own number(s) for it
    protocol: str       # markdown: data, splits, models, training, uncertainty
    results: str        # markdown: table(s) of our numbers with uncertainty
    verdict: str        # one of VERDICTS
    reason: str         # why that verdict, from the numbers
    command: str        # the exact command that reruns it

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        if not self.key.isidentifier():
            raise ValueError(f"claim key {self.key!r} must be an identifier (it names a file)")


def seed_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one value) over seeds."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(per_example: np.ndarray, *, num_resamples: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile interval of the mean of per-example scores [..., examples] (leading
    axes, e.g. seeds, are averaged; examples are resampled with replacement)."""
    x = np.asarray(per_example, np.float64)
    n = x.shape[-1]
    idx = np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))
    stats = x.reshape(-1, n).mean(0)[idx].mean(-1)
    return (float(x.mean()), *_interval(stats, alpha))


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, **kw) -> tuple[float, float, float]:
    """(mean, lo, hi) of mean(a) - mean(b), resampling the same examples for both."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bootstrap_ci(a.reshape(-1, a.shape[-1]).mean(0) - b.reshape(-1, b.shape[-1]).mean(0), **kw)


def _block_indices(rng, n: int, block: int, num_resamples: int) -> np.ndarray:
    """Circular block bootstrap (Politis and Romano, 1992): ceil(n / block) blocks of `block` consecutive
    windows, each starting anywhere and wrapping from the last window to the first, so every window is drawn
    equally often (a moving-block bootstrap, whose blocks stop at the end, draws the first and last
    block - 1 windows less often than the middle ones)."""
    block = max(1, min(block, n))
    starts = rng.integers(0, n, size=(num_resamples, -(-n // block)))
    return ((starts[..., None] + np.arange(block)) % n).reshape(num_resamples, -1)[:, :n]


def block_bootstrap_ci(errors: np.ndarray, *, block: int, num_resamples: int = 2000, alpha: float = 0.05,
                       seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of the mean error over errors [seeds, windows]: each resample draws seeds with
    replacement and circular blocks of `block` consecutive test windows."""
    e = np.asarray(errors, np.float64)
    if e.ndim == 1:
        e = e[None]
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, e.shape[0], size=(num_resamples, e.shape[0]))
    w_idx = _block_indices(rng, e.shape[1], block, num_resamples)
    stats = np.stack([e[s_idx[r]][:, w_idx[r]].mean() for r in range(num_resamples)])
    return (float(e.mean()), *_interval(stats, alpha))


def paired_block_bootstrap_ci(a: np.ndarray, b: np.ndarray, *, block: int, num_resamples: int = 2000,
                              alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of mean(a) - mean(b) for errors [seeds, windows] on the same test windows: the
    same window blocks for both, seeds drawn independently per model (they were trained apart)."""
    a, b = (np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1]) for x in (a, b))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired errors need the same test windows, got {a.shape[1]} and {b.shape[1]}")
    rng = np.random.default_rng(seed)
    sa = rng.integers(0, a.shape[0], size=(num_resamples, a.shape[0]))
    sb = rng.integers(0, b.shape[0], size=(num_resamples, b.shape[0]))
    w = _block_indices(rng, a.shape[1], block, num_resamples)
    stats = np.stack([a[sa[r]][:, w[r]].mean() - b[sb[r]][:, w[r]].mean() for r in range(num_resamples)])
    return (float(a.mean() - b.mean()), *_interval(stats, alpha))


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_mean_std(values: Sequence[float], digits: int = 3) -> str:
    m, s = seed_mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(headers)} headers")
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)


def write_claim(claim: Claim, raw: dict, *, claims_dir: Path = CLAIMS_DIR, report: Path = REPORT) -> Path:
    """Writes claims_dir/KEY.json (the section and `raw`, every number behind it) and regenerates the
    report from every JSON there. Returns the JSON's path."""
    claims_dir.mkdir(parents=True, exist_ok=True)
    path = claims_dir / f"{claim.key}.json"
    record = {**dataclasses.asdict(claim), "date": datetime.date.today().isoformat(), "raw": raw}
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    write_report(claims_dir=claims_dir, report=report)
    return path


def _order(key: str) -> tuple[int, str]:
    return (ORDER.index(key) if key in ORDER else len(ORDER), key)


def write_report(*, claims_dir: Path = CLAIMS_DIR, report: Path = REPORT) -> str:
    records = [json.loads(p.read_text()) for p in claims_dir.glob("*.json")]
    records.sort(key=lambda r: _order(r["key"]))
    summary = markdown_table(
        ["paper", "claim", "verdict"],
        [[r["paper"], r["claim"], f"**{r['verdict']}**"] for r in records])
    parts = [
        "# Do the papers' central claims hold here?",
        "",
        "Generated from experiments/results/claims/*.json by the claim scripts in experiments/claims/ "
        "(`python -m experiments.claims.common` regenerates this file alone). Each section: the claim and "
        "the paper's own figure, our protocol (small scale, CPU), our numbers with uncertainty, the verdict "
        "and the command that reruns it. A verdict is about this small-scale test, not the paper's setting.",
        "",
        summary,
    ]
    for r in records:
        parts += ["", f"## {r['paper']}", "", f"**Claim.** {r['claim']}", "",
                  f"**The paper's figure.** {r['paper_figure']}", "", "**Protocol.**", "", r["protocol"], "",
                  "**Results.**", "", r["results"], "", f"**Verdict: {r['verdict']}.** {r['reason']}", "",
                  f"Rerun ({r['date']}): `{r['command']}`"]
    text = "\n".join(parts) + "\n"
    report.write_text(text)
    return text


if __name__ == "__main__":
    write_report()

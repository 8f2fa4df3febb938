"""Metric sinks: WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard event files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping


class MetricWriter:
    """Appends {'step': N, name: value, ...} lines; writes only on process 0 (`enabled`)."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All lines of WORKDIR/metrics.jsonl (for notebooks and tests)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(workdir: str | os.PathLike, step: int) -> None:
    """Drops lines logged after `step`: on resume those steps are run (and logged) again."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)

"""What every benchmark shares: timing, numerics checks, memory probes and the JSON report.

    report = Report("decode", json_path=args.json, mode="cpu", config={...})
    seconds, batch_seconds, out = timed_batches(jax.jit(f), (q, k, v), reps=10, batches=3, warmup=1)
    report.add(dict(impl="xla", ms=1e3 * seconds))      # appended, saved, printed

A report is rewritten to disk (atomically) after every row, so a run cut short still leaves its
figures. Its header records what a figure depends on: platform, device kind and count, jax and
jaxlib versions, host, CPU count, memory and load average at the start. Results go to
experiments/bench/results/<benchmark>_<device-kind>_<date>.json unless a path is given. Imports only
jax, numpy and the standard library (the GPU machine has no flax or tfds).
"""
from __future__ import annotations

import datetime
import json
import os
import platform as _platform
import re
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "experiments" / "bench" / "results"
GIB = 1 << 30


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unknown"


def error_text(e: BaseException) -> str:
    """An exception as one bounded line for a report row (one failing entry never stops a run)."""
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 600 else text[:300] + " ... " + text[-300:]


def fmt(x, spec: str, empty: str = "-") -> str:
    return empty if x is None else format(x, spec)


# -- numerics -----------------------------------------------------------------------------------
def _as_float(x):
    import numpy as np
    if hasattr(x, "dtype") and not isinstance(x, np.ndarray):  # a jax array, possibly bf16
        import jax.numpy as jnp
        x = jnp.asarray(x).astype(jnp.float32)
    return np.asarray(x, np.float64)


def max_abs(got, want) -> float:
    import numpy as np
    return float(np.max(np.abs(_as_float(got) - _as_float(want))))


def rel_diff(got, want) -> float:
    """max|got - want| / max|want|."""
    import numpy as np
    want = _as_float(want)
    return max_abs(got, want) / (float(np.max(np.abs(want))) or 1.0)


def max_rel_diff(got: Sequence, want: Sequence) -> float:
    """rel_diff over paired outputs (e.g. an output and its gradients): the worst of them."""
    return max(rel_diff(g, w) for g, w in zip(got, want))


# -- timing -------------------------------------------------------------------------------------
def timed_batches(fn: Callable, args: tuple, reps: int, batches: int, warmup: int):
    """The anchors' timing: median over `batches` of `reps` back-to-back calls awaited at the end.

    Returns (median seconds per call, per-batch seconds per call, the last output)."""
    import jax
    out = None
    for _ in range(warmup):
        out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / reps)
    return statistics.median(times), times, out


def copy_bandwidth(nbytes: int, dtype) -> float:
    """GB/s of x -> x + 1 over nbytes (one read and one write): the memory roofline rows are judged by."""
    import jax
    import jax.numpy as jnp
    x = jnp.zeros((nbytes // jnp.dtype(dtype).itemsize,), dtype)
    seconds, _, _ = timed_batches(jax.jit(lambda x: x + 1), (x,), reps=5, batches=3, warmup=1)
    return 2 * nbytes / seconds / 1e9


# -- memory -------------------------------------------------------------------------------------
def proc_status(pid="self") -> dict:
    """VmRSS, VmHWM, ... of a process in bytes ({} if unreadable)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key.startswith("Vm"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mem_available() -> int | None:
    return _meminfo("MemAvailable")


def mem_total() -> int | None:
    return _meminfo("MemTotal")


# -- the report ---------------------------------------------------------------------------------
class Report:
    """The JSON document of one benchmark run: a header, `rows`, and whatever lists the script adds."""

    def __init__(self, benchmark: str, *, json_path: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None, time_budget: float | None = None,
                 argv: Sequence[str] | None = None, **fields: Any):
        import jax
        import jaxlib
        device = jax.devices()[0]
        self.doc: dict[str, Any] = dict(
            benchmark=benchmark, platform=jax.default_backend(), device_kind=str(device.device_kind),
            device_count=jax.device_count(), jax_version=jax.__version__,
            jaxlib_version=getattr(jaxlib, "__version__", None), python=_platform.python_version(),
            date=datetime.date.today().isoformat(), started=datetime.datetime.now().isoformat(timespec="seconds"),
            host=socket.gethostname(), cpu_count=os.cpu_count(), mem_total_bytes=mem_total(),
            loadavg_at_start=list(os.getloadavg()), argv=list(sys.argv[1:] if argv is None else argv),
            **fields)
        self.doc.setdefault("rows", [])
        name = f"{benchmark}_{slug(self.doc['device_kind'])}_{self.doc['date']}.json"
        self.path = Path(json_path) if json_path else Path(out_dir or RESULTS_DIR) / name
        self.t0 = time.time()
        self.time_budget = time_budget

    @property
    def rows(self) -> list:
        return self.doc["rows"]

    def over_budget(self) -> bool:
        return self.time_budget is not None and time.time() - self.t0 > self.time_budget

    def save(self) -> None:
        self.doc["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        self.doc["wall_s"] = round(time.time() - self.t0, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)

    def add(self, row: dict, *, hide: Sequence[str] = ()) -> dict:
        """Appends `row`, saves, and prints it as one JSON line (without the keys in `hide`)."""
        self.rows.append(row)
        self.save()
        print(json.dumps({k: v for k, v in row.items() if k not in hide}, default=str), flush=True)
        return row

"""What every benchmark shares: timing, numerics checks, memory probes and the JSON report.

    report = Report("decode", json_path=args.json, mode="cpu", config={...})
    seconds, batch_seconds, out = timed_batches(jax.jit(f), (q, k, v), reps=10, batches=3, warmup=1)
    report.add(dict(impl="xla", ms=1e3 * seconds))      # appended, saved, printed

Target-shape runs (`experiments.bench.targets`) build every row with `row(...)` (the fields a dispatch
table keys on: op, pass, implementation, dtype, head_dim, batch, q_len, kv_len, heads, causal), time it
with `measure(...)` (compile, median of batches, rel_err against an oracle, ok), judge it with
`target(...)` (PASS / FAIL / n/a with the ratio) and share one deadline per section (`Deadline`).

A report is rewritten to disk (atomically) after every row, so a run cut short still leaves its
figures. Its header records what a figure depends on: platform, device kind and count, jax and
jaxlib versions, host, CPU count, memory and load average at the start. Results go to
experiments/bench/results/<benchmark>_<device-kind>_<date>[_<tag>].json unless a path is given. Imports only
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
    if not str(e) and e.__traceback__ is not None:  # a bare assert: say where it failed
        import traceback
        frame = traceback.extract_tb(e.__traceback__)[-1]
        text += f"(at {Path(frame.filename).name}:{frame.lineno}: {frame.line})"
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
                 argv: Sequence[str] | None = None, tag: str | None = None, **fields: Any):
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
        name = f"{benchmark}_{slug(self.doc['device_kind'])}_{self.doc['date']}{'_' + tag if tag else ''}.json"
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


# -- target-shape runs --------------------------------------------------------------------------
class Deadline:
    """A wall-clock deadline (time.time() seconds; None: none) that entries check before they start."""

    def __init__(self, at: float | None = None):
        self.at = at

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        return cls(None if seconds is None else time.time() + seconds)

    def passed(self) -> bool:
        return self.at is not None and time.time() > self.at


def row(op: str, pass_name: str, impl: str, implementation: str | None, *, source: str, dtype, head_dim: int,
        batch: int, q_len: int, kv_len: int, q_heads: int, kv_heads: int, causal: bool, **extra) -> dict:
    """A row with the fields a dispatch table keys on. `impl` names what ran (ours_pallas_gpu,
    jax_cudnn, ...); `implementation` is the kernels_pallas implementation name it measures
    (jax_cudnn: 'cudnn', which is what our cudnn implementation calls; None for ours_default and for
    stock anchors that are no implementation of ours); `source` is 'ours' or 'anchor'."""
    import jax.numpy as jnp
    return {"op": op, "pass": pass_name, "impl": impl, "implementation": implementation, "source": source,
            "dtype": jnp.dtype(dtype).name, "head_dim": head_dim, "batch": batch, "q_len": q_len,
            "kv_len": kv_len, "q_heads": q_heads, "kv_heads": kv_heads, "causal": causal, "ms": None, **extra}


def rel_err(got, want) -> float:
    """max|got - want| / max|want| (the worst over paired arrays), on the device in float32: target
    rows compare outputs of millions of elements, which a host copy in float64 would make slow."""
    import jax.numpy as jnp
    got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
    want = tuple(want) if isinstance(want, (tuple, list)) else (want,)
    if len(got) != len(want):
        raise ValueError(f"rel_err: {len(got)} outputs against {len(want)} references")
    worst = 0.0
    for g, w in zip(got, want):
        g, w = jnp.asarray(g).astype(jnp.float32), jnp.asarray(w).astype(jnp.float32)
        if g.shape != w.shape:
            raise ValueError(f"rel_err: output shape {g.shape} against reference shape {w.shape}")
        worst = max(worst, float(jnp.max(jnp.abs(g - w))) / (float(jnp.max(jnp.abs(w))) or 1.0))
    return worst


def measure(report: Report, r: dict, fn: Callable, args: tuple, *, reps: int, batches: int, warmup: int,
            deadline: Deadline | None = None, check: Callable | None = None, tol: float | None = None,
            hide: Sequence[str] = ("batch_ms",)):
    """Times jax.jit(fn)(*args) into row `r` (first_call_s: compile and one run; ms: median of
    `batches` of `reps` calls), then rel_err = check(output) against `tol` (ok: finite and within
    it), and adds the row. Returns the output, or None when the entry failed or was skipped; a
    failure is recorded in the row and never raised."""
    import jax
    import jax.numpy as jnp
    if deadline is not None and deadline.passed():
        r["error"] = "skipped: time budget spent"
        report.add(r, hide=hide)
        return None
    out = None
    try:
        f = jax.jit(fn)
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        r["first_call_s"] = round(time.perf_counter() - t0, 3)
        seconds, per_batch, out = timed_batches(f, args, reps=reps, batches=batches, warmup=warmup)
        r["ms"] = 1e3 * seconds
        r["batch_ms"] = [1e3 * t for t in per_batch]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        r["finite"] = all(bool(jnp.all(jnp.isfinite(x))) for x in outs)
    except Exception as e:  # one failing entry never stops a run
        r["ms"] = None
        r["error"] = error_text(e)
        report.add(r, hide=hide)
        return None
    if check is not None:
        try:
            r["rel_err"] = check(out)
            r["tolerance"] = tol
            r["ok"] = bool(r["finite"] and r["rel_err"] <= tol)
        except Exception as e:
            r["ok"] = False
            r["check_error"] = error_text(e)
    report.add(r, hide=hide)
    return out


def attention_oracle(q, k, v, *, causal: bool = False, sm_scale: float | None = None):
    """Dense attention in float32 at the highest matmul precision, [batch, length, heads, head_dim]
    with grouped-query heads and end-aligned causal masks (the kernels' conventions); the oracle of
    the target rows, applied to a slice of the inputs where the full problem would be slow."""
    import jax
    import jax.numpy as jnp
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if sm_scale is None else sm_scale
    f32 = lambda x: jnp.asarray(x).astype(jnp.float32)
    with jax.default_matmul_precision("highest"):
        s = jnp.einsum("bqhgd,bkhd->bhgqk", f32(q).reshape(b, lq, hkv, hq // hkv, d), f32(k)) * scale
        if causal:
            keep = jnp.arange(lk)[None, :] <= jnp.arange(lq)[:, None] + (lk - lq)
            s = jnp.where(keep, s, -jnp.inf)
        out = jnp.einsum("bhgqk,bkhd->bqhgd", jax.nn.softmax(s, axis=-1), f32(v))
    return out.reshape(b, lq, hq, d)


def target(name: str, *, ratio: float | None, threshold: float, strict: bool = False, ok: bool | None = True,
           why: str | None = None, **fields) -> dict:
    """A target judged: PASS when ratio >= threshold (> when strict) and the row's numerics are ok,
    FAIL otherwise, n/a when a figure is missing (`why` says which)."""
    t = dict(target=name, ratio=ratio, threshold=threshold, comparison=">" if strict else ">=", **fields)
    if ratio is None:
        t.update(status="n/a", why=why or "a figure is missing")
    else:
        met = ratio > threshold if strict else ratio >= threshold
        t["status"] = "PASS" if met and ok else "FAIL"
        if met and not ok:
            t["why"] = "fast enough, but its numerics are not ok"
    return t


def print_targets(targets: Sequence[dict]) -> None:
    for t in targets:
        ratio = "" if t["ratio"] is None else f" ratio {t['ratio']:.3f} (needs {t['comparison']} {t['threshold']})"
        why = t.get("why") or ""
        print(f"  [{t['status']:4s}] {t['target']}{ratio}{' - ' + why[:160] if why else ''}", flush=True)


def import_tokamax():
    """(tokamax, None) when it imports here, else (None, why). tokamax reads absl flags, parsing
    sys.argv on first use, which would reject a benchmark's own options: parse only the program name."""
    try:
        import tokamax
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS(sys.argv[:1])
        return tokamax, None
    except Exception as e:
        return None, error_text(e)


def dispatch_choice(package: str, *args, **kwargs):
    """(name, text): which implementation kernels_pallas's dispatcher says it would pick for these
    inputs, from the package's `explain` where it has one (name None when it has none or its answer
    names no implementation; text: its answer, bounded)."""
    import importlib
    explain = getattr(importlib.import_module(package), "explain", None)
    if explain is None:
        return None, None
    try:
        res = explain(*args, **kwargs)
    except Exception as e:
        return None, "explain failed: " + error_text(e)
    name = res.get("implementation") if isinstance(res, dict) else getattr(res, "implementation", None)
    text = str(res)
    return (name if isinstance(name, str) else None), (text if len(text) <= 600 else text[:600] + " ...")

"""The attention benchmark runs end to end on tiny lengths and writes the JSON it promises.

Smoke tests only (conventions: benchmarks are scripts, never timed tests): the CPU path with its
per-measurement subprocesses, numerics check and targets; and the GPU path's bookkeeping run on the
CPU, where the GPU-only entries must fail one by one, be recorded, and not stop the run.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path, *flags):
    path = tmp_path / "attention.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "experiments.bench.attention", *flags, "--json", str(path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(path.read_text()), proc.stdout


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _has_run_metadata(doc):
    for field in ("device_kind", "platform", "jax_version", "jaxlib_version", "date", "host", "args", "argv"):
        assert doc.get(field) not in (None, ""), field


def test_cpu_benchmark_small(tmp_path):
    doc, stdout = _run(tmp_path, "--mode", "cpu", "--max-len", "256", "--quick", "--reps", "1")
    _has_run_metadata(doc)
    assert doc["mode"] == "cpu" and doc["platform"] == "cpu"
    # Numerics were checked before timing: blockwise xla agrees with dense.
    (check,) = [c for c in doc["checks"] if c["impl"] == "xla"]
    assert check["ok"] and check["out_max_abs_diff"] < 1e-4, check
    rows = {(r["impl"], r["L"]): r for r in doc["rows"]}
    assert set(rows) == {(i, n) for i in ("xla", "dense") for n in (256,)}, sorted(rows)
    for key, r in rows.items():
        assert not r.get("error") and not r.get("skipped"), (key, r)
        assert (r["op"], r["pass"], r["q_len"], r["implementation"]) == (
            "attention", "fwd_bwd", 256, None if r["impl"] == "dense" else "xla"), r
        assert r["finite"], key
        for field in ("ms", "gflops", "compile_s", "peak_bytes", "xla_temp_size_in_bytes", "baseline_rss_bytes",
                      "child_ru_maxrss_bytes"):
            assert _positive(r.get(field)), (key, field, r.get(field))
    assert [t["status"] for t in doc["targets"]] == ["n/a"] * 3  # none of the target lengths ran
    assert "Targets" in stdout and "xla" in stdout


def test_gpu_path_records_failures_and_keeps_going(tmp_path):
    # On a CPU, cuDNN and the Triton kernels fail; each failure is a recorded row, the XLA rows still run.
    doc, stdout = _run(tmp_path, "--mode", "gpu", "--lengths", "128", "--head-dims", "64", "--heads", "2",
                       "--tokens", "256", "--reps", "1", "--causal", "causal",
                       "--impls", "jax_cudnn,jax_xla,ours_pallas_gpu,ours_xla")
    _has_run_metadata(doc)
    rows = doc["rows"]
    assert len(rows) == 2 * 4  # fwd and fwd+bwd x implementations
    for r in rows:
        if r["impl"] in ("jax_cudnn", "ours_pallas_gpu"):
            assert r["ms"] is None and r["error"], r
        else:
            assert not r.get("error") and _positive(r["ms"]) and _positive(r["tflops"]), r
    ours = [r for r in rows if r["impl"] == "ours_xla"]
    assert all(r["diff_vs"] == "jax_xla" and r["numerics_ok"] for r in ours), ours
    assert all(_positive(r["speedup_vs"]["xla"]) and r["speedup_vs"]["cudnn"] is None for r in ours)
    assert "jax_cudnn" in stdout and "xxla" in stdout

"""The decode benchmark runs end to end on tiny shapes and writes the JSON it promises (a smoke
test: benchmarks are scripts, never timed tests)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_decode_benchmark_smoke(tmp_path):
    path = tmp_path / "decode.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "experiments.bench.decode", "--smoke", "--json", str(path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "decode" and doc["platform"] == "cpu" and doc["copy_gb_per_s"] > 0
    kernels = [r for r in doc["rows"] if r["kind"] != "generate"]
    assert {r["impl"] for r in kernels} == {"lean_xla", "xla_dense"}
    for r in kernels:
        assert "error" not in r, r
        assert math.isfinite(r["ms"]) and r["ms"] > 0 and r["gb_per_s"] > 0
        assert r["max_abs_diff_vs_first"] < 1e-5  # lean agrees with dense on the same inputs
    gen = [r for r in doc["rows"] if r["kind"] == "generate"]
    assert [r["impl"] for r in gen] == ["lean", "xla_dense"] and all(r["tokens_per_s"] > 0 for r in gen)
    assert gen[1]["same_tokens_as_lean"] is True  # greedy: both attention paths pick the same tokens

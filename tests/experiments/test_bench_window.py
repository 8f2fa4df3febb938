"""The flattened-window benchmark runs end to end on tiny shapes and writes the JSON it promises
(a smoke test: benchmarks are scripts, never timed tests)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_window_benchmark_smoke(tmp_path):
    path = tmp_path / "window.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "experiments.bench.window", "--smoke", "--json", str(path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "window" and doc["platform"] == "cpu" and doc["copy_gb_per_s"] > 0
    for key in ("device_kind", "jax_version", "date"):
        assert doc[key]
    attn = [r for r in doc["rows"] if r["kind"] == "attention"]
    assert {r["impl"] for r in attn} == {"jax_xla", "ours_default", "ours_xla"}
    assert {r["impl"] for r in attn if r["pass_"] == "fwd_bwd"} == {"jax_xla", "ours_default"}
    for r in attn:
        assert "error" not in r, r
        assert math.isfinite(r["ms"]) and r["ms"] > 0 and 0 < r["fraction_of_floor"]
        # the dispatch-table fields: the groups are the batch
        assert (r["op"], r["batch"], r["q_len"], r["kv_len"]) == ("grouped", r["num_groups"], 32, 32), r
        if r["impl"] != "jax_xla":  # ours agrees with the anchor on the same inputs
            assert r["ok"] and r["rel_diff_vs_jax_xla"] < 1e-4, r
    layers = {r["impl"]: r for r in doc["rows"] if r["kind"] in ("layer", "plans")}
    for impl in ("flatformer_4_orderings", "flatformer", "padded_windows"):
        assert "error" not in layers[impl] and layers[impl]["ms"] > 0, layers[impl]
    part = doc["layer_partition"]
    assert part["padded_tokens"] == part["windows"] * part["max_points_per_window"]
    tokens = layers["flatformer"]["tokens"]
    assert tokens <= part["grouped_tokens"] and tokens <= part["padded_tokens"]
    assert [t["pass_"] for t in doc["targets"] if t["target"].startswith("cpu")] == ["fwd"]

"""The target-shape run (experiments.bench.targets) and gpu_check.sh work end to end on the CPU:
smoke shapes in one process, three reports with the fields a dispatch table keys on, each figure
checked against the float32 oracle, entries that need a GPU recorded without stopping the run, and
every target judged (n/a with the reason where cuDNN cannot run). Benchmarks are scripts, never
timed tests: nothing here asserts a speed."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("op", "pass", "impl", "implementation", "source", "dtype", "head_dim", "batch", "q_len", "kv_len",
          "q_heads", "kv_heads", "causal", "ms")


def test_targets_smoke(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "experiments.bench.targets", "--smoke", "--out-dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs = {p.name.split("_")[0]: json.loads(p.read_text()) for p in tmp_path.glob("*_targets.json")}
    assert sorted(docs) == ["attention", "decode", "window"], sorted(docs)
    for name, doc in docs.items():
        assert doc["benchmark"] == name and doc["device_kind"] and doc["mode"] == "smoke" and doc["copy_gb_per_s"] > 0
        for r in doc["rows"]:
            assert all(f in r for f in FIELDS), (name, r)
            if r["ms"]:  # every figure is checked against the oracle
                assert r["ok"] and r["rel_err"] < 1e-4, r
            else:  # and every entry that did not run says why
                assert r["error"], r
    ran = lambda name: {(r["impl"], r["pass"], r["causal"]) for r in docs[name]["rows"] if r["ms"]}
    # jax's Triton mha and split-K run in interpret mode here, so their call conventions are checked too.
    assert ran("attention") == {(i, p, c) for i in ("ours_default", "jax_triton")
                                for p in ("fwd", "fwd_bwd") for c in (False, True)}
    assert {i for i, _, _ in ran("decode")} == {"ours_default", "ours_xla", "jax_xla", "xla_dense", "jax_splitk"}
    assert {(i, p) for i, p, _ in ran("window")} == {(i, p) for i in ("jax_xla", "ours_default", "ours_xla")
                                                   for p in ("fwd", "fwd_bwd")}
    cudnn = [r for d in docs.values() for r in d["rows"] if r["impl"] == "jax_cudnn"]
    assert cudnn and all(r["implementation"] == "cudnn" and r["error"] for r in cudnn)
    # Targets: cuDNN cannot run on a CPU, so its comparisons are n/a and say so; the floor one is judged.
    att, dec, win = (docs[n]["targets"] for n in ("attention", "decode", "window"))
    assert len(att) == 2 * 2 * 3 and len(dec) == 2 * 3, (len(att), len(dec))
    assert all(t["status"] == "n/a" and "jax_cudnn" in t["why"] for t in att + dec)
    floor = {(t["impl"], t["pass"]): t for t in win}
    assert {("ours_default", "fwd"), ("ours_default", "fwd_bwd")} <= set(floor)
    for t in (floor[("ours_default", "fwd")], floor[("ours_default", "fwd_bwd")]):
        assert t["status"] in ("PASS", "FAIL") and t["ratio"] > 0 and t["threshold"] == 0.5, t
    assert "Targets" in proc.stdout and "x cuDNN" in proc.stdout


def test_gpu_check_without_a_gpu_ends_at_once(tmp_path):
    # Without a GPU it reports so after the versions and stops (the timeout: one jax start, no compiles).
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", str(REPO / "experiments/bench/gpu_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "jax sees no GPU (backend cpu)" in proc.stdout and "gpu_only tests" not in proc.stdout
    assert "backend cpu" in (tmp_path / "versions.txt").read_text()
    bad = subprocess.run(["bash", str(REPO / "experiments/bench/gpu_check.sh"), "--bogus"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stdout

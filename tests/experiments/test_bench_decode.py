"""The decode benchmark runs end to end on tiny shapes and writes the JSON it promises (a smoke
test: benchmarks are scripts, never timed tests); jax's split-K anchor is called correctly."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_jax_splitk_matches_the_oracle_in_interpret_mode():
    # Our cache layout [batch, seq, kv_heads, d], ragged valid lengths through kv_seq_len, GQA heads:
    # the anchor must compute the same attention as the dense oracle, or its timings mean nothing.
    from experiments.bench.decode import jax_splitk
    from kernels_pallas.lean_decode_attention import reference
    b, seq, hq, hkv, d = 3, 256, 4, 2, 16
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, hq, d))
    k, v = (jax.random.normal(kk, (b, seq, hkv, d)) for kk in keys[1:])
    lengths = jnp.array([256, 7, 100], jnp.int32)  # full, inside the first split, across splits
    got = jax_splitk(q, k, v, lengths, k_splits=4, block_k=32, interpret=True)
    want = reference.attention(q, k, v, lengths, sm_scale=d ** -0.5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=2e-6)
    # The lengths matter: without them the anchor would attend to the whole cache.
    full = reference.attention(q, k, v, jnp.full((b,), seq, jnp.int32), sm_scale=d ** -0.5)
    assert np.max(np.abs(np.asarray(got)[1:] - np.asarray(full)[1:])) > 1e-2


def test_decode_benchmark_smoke(tmp_path):
    path = tmp_path / "decode.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "experiments.bench.decode", "--smoke", "--json", str(path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "decode" and doc["platform"] == "cpu" and doc["copy_gb_per_s"] > 0
    kernels = [r for r in doc["rows"] if r["kind"] != "generate"]
    ran = {r["impl"] for r in kernels if r.get("ms")}
    assert ran == {"ours_default", "ours_xla", "jax_xla", "xla_dense", "jax_splitk"}, ran
    for r in kernels:
        assert r["op"] == "decode" and r["q_len"] == 1 and r["kv_len"] == max(r["lengths"]), r
        if r["impl"] in ran:
            assert "error" not in r and math.isfinite(r["ms"]) and r["ms"] > 0 and r["gb_per_s"] > 0, r
            assert r["ok"] and r["rel_err"] < 1e-5, r  # every implementation agrees with the float32 oracle
        else:  # cuDNN and the Triton/Mosaic kernels need a GPU: recorded, and the run went on
            assert r["ms"] is None and r["error"], r
    gen = [r for r in doc["rows"] if r["kind"] == "generate"]
    assert [r["impl"] for r in gen] == ["lean", "xla_dense"] and all(r["tokens_per_s"] > 0 for r in gen)
    assert gen[1]["same_tokens_as_lean"] is True  # greedy: both attention paths pick the same tokens

#!/usr/bin/env bash
# GPU check, in one call on a lent GPU machine (repo root as the working directory):
#   1. versions and nvidia-smi;
#   2. the kernels' gpu_only tests:  JAX_PLATFORMS= python -m pytest -m gpu_only -q tests/kernels_pallas
#      (only tests/kernels_pallas: the machine has jax/flax/optax/orbax/chex but no tfds or grain);
#   3. the attention benchmark (python -m experiments.bench.attention, GPU mode) with a time budget;
#   4. the decode benchmark (python -m experiments.bench.decode --quick) in the time left but WINDOW_S;
#   5. the flattened-window benchmark (python -m experiments.bench.window --quick), WINDOW_S (90 s).
# Everything ends within TOTAL_S (default 470 s, under 8 minutes). Logs and the benchmark JSON go to
# $OUT (what comes back); the JSON is also written under experiments/bench/results/.
#
#   bash experiments/bench/gpu_check.sh            # full matrix, as much as the budget allows
#   BENCH_ARGS=--quick bash experiments/bench/gpu_check.sh
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT" experiments/bench/results
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-470}
TEST_S=${TEST_S:-180}
BENCH_ARGS=${BENCH_ARGS:-}
WINDOW_S=${WINDOW_S:-90}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
MARK=$(mktemp)

{
  echo "== versions ($(date -Is), $(hostname))"
  $PY - <<'EOF'
import sys, platform
print("python", sys.version.split()[0], platform.platform())
try:
    import jax, jaxlib
    print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "backend", jax.default_backend(), jax.devices())
except Exception as e:
    print("jax: cannot start:", type(e).__name__, e)
for name in ("flax", "optax", "orbax.checkpoint", "chex", "pytest", "numpy"):
    try:
        m = __import__(name, fromlist=["_"])
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "missing:", type(e).__name__)
EOF
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || echo "nvidia-smi failed"
  git log --oneline -1 2>/dev/null || true
} 2>&1 | tee "$OUT/versions.txt"

echo "== gpu_only tests (limit ${TEST_S}s)"
# libtpu (not on the GPU machine) loads only in the TPU compile tests' fixture, which -m gpu_only deselects.
JAX_PLATFORMS= timeout -k 10 "$TEST_S" $PY -m pytest -m gpu_only -q -rs tests/kernels_pallas -p no:cacheprovider 2>&1 \
  | tee "$OUT/tests.log"
TEST_RC=${PIPESTATUS[0]}
echo "tests exit code: $TEST_RC (5: none selected; 124: timed out) after $(elapsed)s"

LEFT=$(( TOTAL_S - $(elapsed) ))
# The benchmark stops starting entries at its budget; leave room for the last entry and the table.
BUDGET=$(( LEFT - 60 - WINDOW_S ))
if [ "$BUDGET" -gt 200 ]; then BUDGET=200; fi  # the decode benchmark runs after it
if ! grep -q "backend gpu" "$OUT/versions.txt"; then
  echo "== benchmark skipped: jax does not see a GPU (see versions.txt)"
  BENCH_RC=skipped
elif [ "$BUDGET" -lt 30 ]; then
  echo "== benchmark skipped: only ${LEFT}s left"
  BENCH_RC=skipped
else
  echo "== attention benchmark (budget ${BUDGET}s, hard limit $(( LEFT - 5 - WINDOW_S ))s) $BENCH_ARGS"
  JAX_PLATFORMS= timeout -k 10 $(( LEFT - 5 - WINDOW_S )) $PY -m experiments.bench.attention --mode gpu --time-budget "$BUDGET" $BENCH_ARGS 2>&1 \
    | tee "$OUT/bench.log"
  BENCH_RC=${PIPESTATUS[0]}
fi
LEFT=$(( TOTAL_S - $(elapsed) - WINDOW_S ))
if grep -q "backend gpu" "$OUT/versions.txt" && [ "$LEFT" -gt 40 ]; then
  echo "== decode benchmark (hard limit $(( LEFT - 5 ))s)"
  JAX_PLATFORMS= timeout -k 10 $(( LEFT - 5 )) $PY -m experiments.bench.decode --quick 2>&1 | tee "$OUT/decode.log"
  DECODE_RC=${PIPESTATUS[0]}
else
  DECODE_RC=skipped
fi
LEFT=$(( TOTAL_S - $(elapsed) ))
if grep -q "backend gpu" "$OUT/versions.txt" && [ "$LEFT" -gt 40 ]; then
  echo "== window benchmark (budget $(( LEFT - 35 ))s, hard limit $(( LEFT - 5 ))s)"
  JAX_PLATFORMS= timeout -k 10 $(( LEFT - 5 )) $PY -m experiments.bench.window --quick --time-budget $(( LEFT - 35 )) 2>&1 | tee "$OUT/window.log"
  WINDOW_RC=${PIPESTATUS[0]}
else
  WINDOW_RC=skipped
fi
# The JSON is rewritten after every entry, so a run cut short still leaves what it measured.
find experiments/bench/results \( -name 'attention_*.json' -o -name 'decode_*.json' -o -name 'window_*.json' \) -newer "$MARK" -exec cp {} "$OUT/" \;
rm -f "$MARK"
echo "== done in $(elapsed)s: tests exit $TEST_RC, benchmark exit $BENCH_RC, decode exit $DECODE_RC, window exit $WINDOW_RC; in \$OUT: $(ls "$OUT" | tr '\n' ' ')"

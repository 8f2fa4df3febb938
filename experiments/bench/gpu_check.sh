#!/usr/bin/env bash
# GPU check, in one call on a lent GPU machine (repo root as the working directory), under 4 minutes
# (TOTAL_S, default 225 s, jax start-ups included; a lent session has 15 minutes of device time, so
# this leaves room to fix something and run it again):
#   1. versions (python, jax, jaxlib, backend, devices, tokamax) and nvidia-smi; when jax sees no GPU
#      the script says so and stops here, exit status 0;
#   2. the kernels' gpu_only tests (tests/kernels_pallas only: the machine has jax/flax/optax/orbax/chex
#      but no tfds or grain), within TEST_S (default 50 s), on 4 pytest-xdist workers when xdist is
#      installed; lean decode's b1_32k case is left out (the benchmark checks B1 128k against the oracle);
#   3. python -m experiments.bench.targets: exactly the target shapes with all their anchors, in one
#      process (blockwise L8k D128 bf16 fwd and fwd+bwd, causal and not; decode B1 128k and the ragged
#      batch; grouped window 262k tokens in groups of 128), each figure checked against a float32
#      oracle, every target printed PASS/FAIL with its ratio; a hard limit of what is left but
#      DISPATCH_S, and a time budget inside it so the JSON and the table are written before the limit;
#   4. python -m experiments.bench.dispatch_table --from <the new attention and decode JSON>, when
#      that module exists (within DISPATCH_S, default 15 s; its failure does not fail the script).
# Logs and the new JSON go to $OUT (what comes back; files the run changed under kernels_pallas/ and
# experiments/bench/results/ also go to $OUT/repo/); the JSON is also written under experiments/bench/results/.
#
#   bash experiments/bench/gpu_check.sh            # the targets (default): under 4 minutes
#   bash experiments/bench/gpu_check.sh --full     # step 3 runs the full matrices instead (TOTAL_S 470)
#
# Compiled programs are cached in .pytest_cache/jax (git-ignored, so it survives on a warm machine):
# a rerun on the same machine skips most compiles.
#
# tokamax (optional anchor): used only when `import tokamax` works there. The machine cannot reach
# PyPI, so carry the wheels: here, `pip download --no-deps -d .whl --python-version 3.X
# --only-binary=:all: tokamax einshape jaxtyping wadler-lindig immutabledict typeguard==2.13.3 qwix
# pydantic pydantic-core annotated-types typing-inspection tensorboardx tqdm absl-py` (3.X: the
# device's python, printed in step 1; tokamax >= 0.0.13 needs python 3.12, 0.0.12 runs on 3.11), then
# call the device tool with carry [".whl"] (do not commit wheels). This script installs them with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# and prints in step 1 whether tokamax imports (a missing dependency shows there).
set -u
cd "$(dirname "$0")/../.."
MODE=targets
for arg in "$@"; do
  case "$arg" in
    --full) MODE=full ;;
    --targets) MODE=targets ;;
    *) echo "unknown argument $arg (use --full or --targets)"; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT" experiments/bench/results
PY=${PYTHON:-python3}
if [ "$MODE" = full ]; then TOTAL_S=${TOTAL_S:-470}; else TOTAL_S=${TOTAL_S:-225}; fi
TEST_S=${TEST_S:-50}
DISPATCH_S=${DISPATCH_S:-15}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/.pytest_cache/jax}
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
MARK=$(mktemp)

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -3 \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  echo "== versions ($(date -Is), $(hostname), mode $MODE, limit ${TOTAL_S}s)"
  JAX_PLATFORMS= timeout -k 5 60 $PY - <<'EOF'
import sys, platform
print("python", sys.version.split()[0], platform.platform())
try:
    import jax, jaxlib
    print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "backend", jax.default_backend(), jax.devices())
except Exception as e:
    print("jax: cannot start:", type(e).__name__, e)
for name in ("flax", "optax", "orbax.checkpoint", "chex", "pytest", "xdist", "numpy", "tokamax"):
    try:
        m = __import__(name, fromlist=["_"])
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "missing:", type(e).__name__, str(e)[:200])
EOF
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
  git log --oneline -1 2>/dev/null || true
} 2>&1 | tee "$OUT/versions.txt"

if ! grep -q "backend gpu" "$OUT/versions.txt"; then
  echo "== jax sees no GPU ($(grep -o 'backend [a-z]*' "$OUT/versions.txt" || echo 'jax did not start')): no tests, no benchmarks; done in $(elapsed)s"
  rm -f "$MARK"
  exit 0
fi

echo "== gpu_only tests (limit ${TEST_S}s)"
XDIST=""
if grep -q "^xdist [0-9]" "$OUT/versions.txt"; then XDIST="-n 4"; fi
# Workers share the GPU: no preallocation. libtpu (absent there) loads only in the TPU compile tests'
# fixture, which -m gpu_only deselects. -v lists each test as it ends, so a run cut short shows its results.
JAX_PLATFORMS= XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 5 "$TEST_S" $PY -m pytest -m gpu_only -v -rs $XDIST \
  -p no:cacheprovider tests/kernels_pallas \
  --deselect "tests/kernels_pallas/test_lean_decode_pallas_gpu.py::test_gpu_compiled_matches_oracle[b1_32k]" 2>&1 \
  | tee "$OUT/tests.log"
TEST_RC=${PIPESTATUS[0]}
echo "tests exit code: $TEST_RC (5: none selected; 124: timed out) after $(elapsed)s"

BENCH_RC=skipped
if [ "$MODE" = targets ]; then
  HARD=$(( TOTAL_S - $(elapsed) - DISPATCH_S - 5 ))
  BUDGET=$(( HARD - 20 ))  # the last entry running past it, the table and the JSON
  if [ "$BUDGET" -lt 40 ]; then
    echo "== targets skipped: only ${HARD}s left"
  else
    echo "== targets (budget ${BUDGET}s, hard limit ${HARD}s)"
    JAX_PLATFORMS= timeout -k 5 "$HARD" $PY -m experiments.bench.targets --time-budget "$BUDGET" 2>&1 \
      | tee "$OUT/targets.log"
    BENCH_RC=${PIPESTATUS[0]}
  fi
else
  WINDOW_S=${WINDOW_S:-90}
  LEFT=$(( TOTAL_S - $(elapsed) - DISPATCH_S ))
  BUDGET=$(( LEFT - 60 - WINDOW_S )); if [ "$BUDGET" -gt 200 ]; then BUDGET=200; fi
  if [ "$BUDGET" -ge 30 ]; then
    echo "== attention matrix (budget ${BUDGET}s)"
    JAX_PLATFORMS= timeout -k 10 $(( LEFT - 5 - WINDOW_S )) $PY -m experiments.bench.attention --mode gpu \
      --time-budget "$BUDGET" 2>&1 | tee "$OUT/bench.log"
    BENCH_RC=${PIPESTATUS[0]}
  fi
  LEFT=$(( TOTAL_S - $(elapsed) - DISPATCH_S - WINDOW_S ))
  if [ "$LEFT" -gt 40 ]; then
    echo "== decode matrix --quick (hard limit $(( LEFT - 5 ))s)"
    JAX_PLATFORMS= timeout -k 10 $(( LEFT - 5 )) $PY -m experiments.bench.decode --quick 2>&1 | tee "$OUT/decode.log"
  fi
  LEFT=$(( TOTAL_S - $(elapsed) - DISPATCH_S ))
  if [ "$LEFT" -gt 40 ]; then
    echo "== window matrix --quick (budget $(( LEFT - 35 ))s)"
    JAX_PLATFORMS= timeout -k 10 $(( LEFT - 5 )) $PY -m experiments.bench.window --quick --time-budget $(( LEFT - 35 )) \
      2>&1 | tee "$OUT/window.log"
  fi
fi

# The JSON is rewritten after every entry, so a run cut short still leaves what it measured.
NEW=$(find experiments/bench/results \( -name 'attention_*.json' -o -name 'decode_*.json' -o -name 'window_*.json' \) \
      -newer "$MARK" | sort)
for f in $NEW; do cp "$f" "$OUT/"; done
TABLE_RC=skipped
TABLE_IN=$(echo "$NEW" | grep -E '/(attention|decode)_' | tr '\n' ' ')
if [ -f experiments/bench/dispatch_table.py ] && [ -n "$TABLE_IN" ]; then
  echo "== dispatch table from $TABLE_IN(limit ${DISPATCH_S}s)"
  JAX_PLATFORMS= timeout -k 5 "$DISPATCH_S" $PY -m experiments.bench.dispatch_table --from $TABLE_IN 2>&1 \
    | tee "$OUT/dispatch_table.log"
  TABLE_RC=${PIPESTATUS[0]}
fi
# Whatever the run changed in the repo (the results, a regenerated dispatch table) comes back too.
git status --porcelain --untracked-files=all -- kernels_pallas experiments/bench/results 2>/dev/null \
  | awk '{print $NF}' | while read -r f; do
    [ -f "$f" ] && mkdir -p "$OUT/repo/$(dirname "$f")" && cp "$f" "$OUT/repo/$f"
  done
rm -f "$MARK"
echo "== done in $(elapsed)s (limit ${TOTAL_S}s): tests exit $TEST_RC, benchmark exit $BENCH_RC, dispatch table exit $TABLE_RC; in \$OUT: $(ls "$OUT" | tr '\n' ' ')"

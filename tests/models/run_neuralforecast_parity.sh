#!/usr/bin/env bash
# Optional parity group: autoformer and itransformer against neuralforecast's Autoformer and
# iTransformer (the authors' thuml modules). neuralforecast needs pytorch-lightning, ray and optuna
# (about 300 MB), so they go into their own directory, not the project's venv; torch, numpy and
# pandas come from the venv (the `parity` extra). Usage, from the repository root:
#   bash tests/models/run_neuralforecast_parity.sh            # installs once, then runs the tests
#   NF_TARGET=/some/dir bash tests/models/run_neuralforecast_parity.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
NF_TARGET=${NF_TARGET:-${TMPDIR:-/tmp}/fintrans-neuralforecast}
if [ ! -f "$NF_TARGET/.installed" ]; then
  # Exact versions: neuralforecast and exactly the packages it adds to the parity extra's environment
  # (--no-deps keeps pip from reinstalling torch/numpy/pandas into the target).
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$NF_TARGET" \
    neuralforecast==3.3.0 pytorch-lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0 \
    coreforecast==0.0.20 utilsforecast==0.2.17 ray==2.60.0 optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 \
    colorlog==6.12.0 Mako==1.4.3 aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 aiohappyeyeballs==2.7.1 \
    aiosignal==1.4.0 frozenlist==1.8.0 propcache==0.5.4
  touch "$NF_TARGET/.installed"
fi
JAX_PLATFORMS=cpu PYTHONPATH="$NF_TARGET${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m pytest -q -p no:cacheprovider tests/models/test_neuralforecast_parity.py "$@"

#!/usr/bin/env bash
# Launch an experiment on every worker of a Cloud TPU VM pod slice (one process per host).
#
#   experiments/launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
#   experiments/launch/tpu_pod.sh my-v5p-128 us-east5-a experiments/configs/lm_chars.py /mnt/shared/lm_chars \
#       --config.mesh.fsdp=16 --config.mesh.tensor=4
#
# Multi-slice: add --config.mesh.dcn.data=NUM_SLICES and launch on each slice's TPU name (or a queued
# resource); the plain mesh sizes are per slice.
# WORKDIR must be a filesystem every host mounts (e.g. Filestore/NFS): checkpoints are written by all
# hosts, metrics by host 0. Set REPO_URL / BRANCH to what the workers should run.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,12p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_URL=${REPO_URL:?set REPO_URL to the fintrans repository the workers should clone}
BRANCH=${BRANCH:-main}
EXTRA=$(printf ' %q' "$@")

# Same code and same pinned packages on every worker; the datasets build into each host's local cache.
SETUP="set -e; [ -d fintrans ] || git clone --quiet $REPO_URL fintrans; cd fintrans; git fetch --quiet origin;
  git checkout --quiet $BRANCH; git reset --quiet --hard origin/$BRANCH;
  [ -d .venv ] || python3 -m venv .venv; .venv/bin/pip install --quiet -c constraints.txt -e '.[tpu]'"
RUN="cd fintrans && .venv/bin/python -m experiments.main --config=$CONFIG --workdir=$WORKDIR --config.multihost=True$EXTRA"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$SETUP"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$RUN"

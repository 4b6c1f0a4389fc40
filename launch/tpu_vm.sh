#!/usr/bin/env bash
# Training on a Cloud TPU VM slice: the same command runs on every worker, and
# jax.distributed.initialize() discovers the slice by itself. Resuming is automatic.
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_vm.sh configs/ade20k.py gs://bucket/runs/ade20k
#
# Prerequisites: the repository checked out at ~/deepgin-jax on every worker (the first
# command below does it from REPO_URL), and WORKDIR on storage every worker can write
# (a GCS bucket path works with Orbax).
set -euo pipefail
config=${1:?usage: TPU_NAME=... ZONE=... launch/tpu_vm.sh CONFIG WORKDIR [--config.k=v ...]}
workdir=${2:?usage: TPU_NAME=... ZONE=... launch/tpu_vm.sh CONFIG WORKDIR [--config.k=v ...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
repo_url=${REPO_URL:-}
extra_args=$(printf ' %q' "$@")

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

if [ -n "$repo_url" ]; then
  ssh_all "test -d ~/deepgin-jax || git clone $repo_url ~/deepgin-jax"
fi
ssh_all "cd ~/deepgin-jax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
  'jax[tpu]' && .venv/bin/pip install -q --no-deps -e ."
ssh_all "cd ~/deepgin-jax && .venv/bin/python -m deepgin_jax.train --distributed=on \
  --config=$config --workdir=$workdir$extra_args"

#!/usr/bin/env bash
# Train on this machine (all its GPUs, or the CPU), resuming from WORKDIR if it holds checkpoints.
#
#   launch/local.sh configs/ade20k.py runs/ade20k [--config.data.folder=/data/photos ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
mkdir -p "$workdir"
exec "$python" -m deepgin_jax.train --config="$config" --workdir="$workdir" "$@" \
  2> >(tee -a "$workdir/stderr.log" >&2)

#!/usr/bin/env bash
# The full-size DeepGIN's speed measurements on one GPU host without network, in one call:
# installs the carried wheels (benchmarks/gpu_wheels.sh made them, in .gpu-wheels/), checks the
# imports, then runs benchmarks.gpu_suite's parts (each in its own process, each under 4
# minutes, the whole under DEADLINE_S); each part writes OUT/suite/<part>.json.
#
#   benchmarks/gpu_suite.sh                                  # every part, results in $OUT
#   PARTS=train_step_bf16_xla,inference_fullsize benchmarks/gpu_suite.sh
#   TINY=1 OUT=/tmp/check benchmarks/gpu_suite.sh            # the same parts, tiny, on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-benchmarks/results}
wheels=${WHEELS:-.gpu-wheels}
site=${SITE:-/tmp/deepgin-site}

# The image's python3 is a virtual environment's: --user installs are refused there, and a
# venv made from it with --system-site-packages would not see its packages; so the wheels go
# to a folder of their own on PYTHONPATH.
if compgen -G "$wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Every import the parts need, before any part starts (no accelerator is touched here).
"$python" -c "import benchmarks.train_step, deepgin_jax.inference, deepgin_jax.shipped"

args=(--out="$out" --deadline_s="${DEADLINE_S:-560}" --part_timeout_s="${PART_TIMEOUT_S:-240}")
[[ -n "${PARTS:-}" ]] && args+=(--parts="$PARTS")
[[ -n "${TINY:-}" ]] && args+=(--tiny)
"$python" -m benchmarks.gpu_suite "${args[@]}"

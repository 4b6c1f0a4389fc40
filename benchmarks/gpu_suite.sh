#!/usr/bin/env bash
# The speed measurements of the full-size DeepGIN on an accelerator, in one run:
# training steps (GAN stage, float32 and bfloat16, batches 1, 12 and 48), inference latency
# (256 to 2560x1600) and the input pipeline. Results go to benchmarks/results/<device>/.
#
#   benchmarks/gpu_suite.sh                       # a GPU host with the package installed
#   WIDTH=8 SIZE=64 BATCHES=2 SIZES=64x64 OUT=/tmp/check benchmarks/gpu_suite.sh  # quick, CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
width=${WIDTH:-64}
size=${SIZE:-256}
batches=${BATCHES:-1,12,48}
sizes=${SIZES:-256x256,512x512,1024x1024,2560x1600}
dtypes=${DTYPES:-float32,bfloat16}
out=${OUT:-benchmarks/results}

"$python" -c "import jax; print(jax.devices())"
"$python" -m benchmarks.train_step --width="$width" --size="$size" --batches="$batches" \
  --dtypes="$dtypes" --repeats=10 --out="$out"
"$python" -m benchmarks.train_step --width="$width" --size="$size" --batches="$batches" \
  --dtypes="$dtypes" --repeats=10 --stage=warmup --out="$out"
"$python" -m benchmarks.inference --width="$width" --sizes="$sizes" --dtypes="$dtypes" \
  --max_batch=70 --repeats=10 --out="$out"
"$python" -m benchmarks.input_pipeline --workers=0,4,8,16 --batches=50

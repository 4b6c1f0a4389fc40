#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu_suite.sh needs on a GPU host with no network: the
# packages this repository imports that its image (Python 3.12, jax with the CUDA plugin, flax,
# optax, orbax-checkpoint, chex, absl, opencv, pillow, pyyaml, psutil) lacks, for CPython 3.12
# on manylinux x86_64, at the versions of requirements.txt. They go to .gpu-wheels/ (ignored by
# git; carry it with the working tree): gpu_suite.sh installs them with pip --no-index.
#
#   benchmarks/gpu_wheels.sh                # then: du -sh .gpu-wheels (must stay < 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
dest=${WHEELS:-.gpu-wheels}
# grain and array_record need nothing else the image lacks (their other requirements: absl-py,
# etils, numpy, protobuf, psutil, pyyaml, chex); cloudpickle is on the image list, and carried
# in case an image lacks it (pip skips nothing here: --no-deps, exact pins).
wheels=(
  grain==0.2.18
  array_record==0.8.6
  ml_collections==1.1.0
  dm_pix==0.4.5
  cloudpickle==3.1.3
  portpicker==1.6.0
)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
rm -rf "$dest"
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --dest "$dest" "${wheels[@]}"
ls -l "$dest"
du -sh "$dest"

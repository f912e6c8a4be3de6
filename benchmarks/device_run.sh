#!/usr/bin/env bash
# Everything a GPU session runs, in one call (device time is short):
#   build the CUDA extension, run the whole suite on the GPU, cross-check GPU
#   against CPU bit for bit, run the GPU benchmarks and record them.
# Usage, from the repository root on the device machine (no registry there:
# the build uses the installed nanobind/scikit-build-core/jax):
#   bash benchmarks/device_run.sh            # logs and RESULTS.md land in $OUT
set -uo pipefail
OUT=${OUT:-/tmp/approxjax-device}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:/usr/local/cuda-13.0/bin:$PATH
nvidia-smi -L | tee "$OUT/device.txt"
python -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"

step() { echo "=== $1"; shift; "$@"; echo "=== rc=$?"; }
{
  step build env APPROXJAX_CUDA=ON pip install --no-build-isolation --no-deps -v . 2>&1 | tail -n 40
  step import python -c "import approxjax as ax; print('cuda', ax.cuda_available())"
  # The cross-check first: fastest signal whether the kernels are right.
  step gpu-vs-cpu env JAX_PLATFORMS=cuda,cpu pytest -q -x tests/test_cuda.py
  step suite env JAX_PLATFORMS=cuda pytest -q -p no:cacheprovider tests
  step bench-cuda env JAX_PLATFORMS=cuda python benchmarks/bench_cuda.py --record
  step bench-gemm env JAX_PLATFORMS=cuda python benchmarks/bench_gemm.py --record
  step bench-training env JAX_PLATFORMS=cuda python benchmarks/bench_training.py --record
} 2>&1 | tee "$OUT/log.txt"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"

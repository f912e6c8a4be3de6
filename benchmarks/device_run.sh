#!/usr/bin/env bash
# Everything a GPU session runs, in one call that fits the device machine's
# limits (at most 10 minutes a command, 15 minutes of device time in all,
# start-up and build included): each step has its own time limit, logs go to
# $OUT as they are written, and a step that fails or runs out of time does
# not stop the ones after it.
#
#   1. build with APPROXJAX_CUDA=ON (no registry there: --no-build-isolation
#      with the machine's nanobind / scikit-build-core / jax);
#   2. the GPU/CPU cross-check (tests/test_cuda.py, JAX_PLATFORMS=cuda,cpu);
#   3. a GPU subset of the suite (JAX_PLATFORMS=cuda, the fast tests of the
#      GEMM, convolution, transform and Flax files);
#   4. the headline benchmarks (bench_cuda.py: 4096^3 at m = 3..12 against
#      cuBLAS and the prior art's kernel, a stack of 8; bench_training.py;
#      bench_integer.py: the integer LUT GEMM).
#
# Usage, from the repository root on the device machine:
#   OUT=/tmp/out bash benchmarks/device_run.sh      # about 9 minutes at most
set -uo pipefail
OUT=${OUT:-/tmp/approxjax-device}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:/usr/local/cuda-13.0/bin:$PATH
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
LOG="$OUT/log.txt"
: > "$LOG"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, go on
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name rc=${PIPESTATUS[0]}" | tee -a "$LOG"
}

{ nvidia-smi -L; $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; } \
  2>&1 | tee "$OUT/device.txt" | tee -a "$LOG"
step build 240 env APPROXJAX_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -q .
step import 30 $PY -c "import approxjax as ax; print('cuda', ax.cuda_available())"
step gpu-vs-cpu 150 env JAX_PLATFORMS=cuda,cpu $PY -m pytest -q -x -p no:cacheprovider \
  tests/test_cuda.py
step gpu-suite 150 env JAX_PLATFORMS=cuda $PY -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/test_dot_general.py tests/test_transforms.py tests/test_products.py tests/test_nn.py
step bench-cuda 100 env JAX_PLATFORMS=cuda $PY benchmarks/bench_cuda.py --record
step bench-training 60 env JAX_PLATFORMS=cuda $PY benchmarks/bench_training.py --repeats 5 --record
step bench-integer 60 env JAX_PLATFORMS=cuda $PY benchmarks/bench_integer.py --repeats 5 --record
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"

// Our re-implementation of the prior art's GPU design (ApproxTrain, IEEE TCAD
// 2023), kept only to benchmark against: 16x16 thread blocks, one output per
// thread, 16x16 operand tiles in shared memory, and the multiplier's table
// read from global memory through the read-only (texture) cache for every
// product. It uses the same ApproxMultiply as approxjax (so its results are
// comparable bit for bit); the prior art's own defects (zero operands,
// exponent wrap-around, inf/NaN) are not reproduced. Compiled into the CUDA
// extension as the FFI target "approxjax_prior_art_gemm" for
// benchmarks/bench_cuda.py.
#include <cuda_runtime.h>

#include <cstdint>

#include "approx_multiply.h"
#include "kernels.h"

namespace approxjax {
namespace cuda {
namespace {

constexpr int kTile = 16;

__global__ void PriorArtKernel(GemmArgs p) {
  __shared__ float a_tile[kTile][kTile];
  __shared__ float b_tile[kTile][kTile + 1];
  const int64_t M = p.m_rows, N = p.n_cols, K = p.depth;
  const int64_t lut_size = int64_t{1} << (2 * p.m);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = int64_t{blockIdx.y} * kTile + ty;
  const int64_t n = int64_t{blockIdx.x} * kTile + tx;
  for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z) {
    int64_t oa, ob, ol;
    BatchMatrixOffsets(p.layout, g, &oa, &ob, &ol);
    const float* A = p.lhs + oa * M * K;
    const float* B = p.rhs + ob * K * N;
    const float* __restrict__ lut = p.lut + ol * lut_size;  // read-only cache
    float acc = -0.0f, total = -0.0f;  // approxjax's summation order (kSumBlock)
    for (int64_t k0 = 0; k0 < K; k0 += kTile) {
      if (k0 > 0 && k0 % kSumBlock == 0) {
        total = k0 == kSumBlock ? acc : __fadd_rn(total, acc);
        acc = -0.0f;
      }
      const int64_t ka = k0 + tx, kb = k0 + ty;
      a_tile[ty][tx] = (i < M && ka < K)
                           ? (p.transpose_lhs ? A[ka * M + i] : A[i * K + ka])
                           : 0.0f;
      b_tile[ty][tx] = (n < N && kb < K)
                           ? (p.transpose_rhs ? B[n * K + kb] : B[kb * N + n])
                           : 0.0f;
      __syncthreads();
      const int depth = static_cast<int>(K - k0 < kTile ? K - k0 : kTile);
      for (int kk = 0; kk < depth; ++kk) {
        // One global table read per product (ApproxMultiply reads lut).
        acc = __fadd_rn(acc, ApproxMultiply(a_tile[ty][kk], b_tile[kk][tx], lut, p.m));
      }
      __syncthreads();
    }
    if (i < M && n < N) {
      p.out[g * M * N + i * N + n] = K <= kSumBlock ? acc : __fadd_rn(total, acc);
    }
  }
}

}  // namespace

cudaError_t LaunchPriorArtGemm(const GemmArgs& p, cudaStream_t stream) {
  const dim3 block(kTile, kTile);
  const int64_t gx = (p.n_cols + kTile - 1) / kTile;
  const int64_t gy = (p.m_rows + kTile - 1) / kTile;
  if (gx > 0x7fffffff || gy > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
                  static_cast<unsigned>(p.batch < 65535 ? p.batch : 65535));
  PriorArtKernel<<<grid, block, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace approxjax

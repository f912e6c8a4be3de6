// The integer LUT GEMM on the GPU: out[g, m, n] = sum_k lut[g][a[g, m, k]][b[g, k, n]],
// int32 products looked up in the table and summed exactly (in any order:
// integer sums give the CPU's bits). 16 x 16 thread tiles, one output per
// thread; the operands' k-slices staged in shared memory, the table read
// through the read-only cache (up to 4096 x 4096 entries: it does not fit
// shared memory beyond 8 x 8 bits of int32). An index outside the table sets
// `bad` and adds nothing (the host handler turns it into an error).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace approxjax {
namespace cuda {
namespace {

constexpr int kTile = 16;

__global__ void IntegerGemmKernel(IntGemmArgs p) {
  __shared__ uint16_t ta[kTile][kTile + 1];
  __shared__ uint16_t tb[kTile][kTile + 1];
  const int64_t row = int64_t{blockIdx.y} * kTile + threadIdx.y;
  const int64_t col = int64_t{blockIdx.x} * kTile + threadIdx.x;
  const bool inside = row < p.m_rows && col < p.n_cols;
  for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z) {
    int64_t oa, ob, ol;
    BatchMatrixOffsets(p.layout, g, &oa, &ob, &ol);
    const uint16_t* a = p.lhs + oa * p.m_rows * p.depth;
    const uint16_t* b = p.rhs + ob * p.depth * p.n_cols;
    const int32_t* lut = p.lut + ol * p.side_a * p.side_b;
    uint32_t acc = 0;  // two's complement sums: the int32 sum's bits
    bool bad = false;
    for (int64_t k0 = 0; k0 < p.depth; k0 += kTile) {
      const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
      ta[threadIdx.y][threadIdx.x] =
          row < p.m_rows && ka < p.depth ? a[row * p.depth + ka] : 0;
      tb[threadIdx.y][threadIdx.x] =
          kb < p.depth && col < p.n_cols ? b[kb * p.n_cols + col] : 0;
      __syncthreads();
      if (inside) {
        const int kc = p.depth - k0 < kTile ? static_cast<int>(p.depth - k0) : kTile;
        for (int k = 0; k < kc; ++k) {
          const uint32_t ia = ta[threadIdx.y][k], ib = tb[k][threadIdx.x];
          if (ia >= p.side_a || ib >= p.side_b) {
            bad = true;
            continue;
          }
          acc += static_cast<uint32_t>(__ldg(lut + ia * p.side_b + ib));
        }
      }
      __syncthreads();
    }
    if (inside) p.out[(g * p.m_rows + row) * p.n_cols + col] = static_cast<int32_t>(acc);
    if (bad) atomicOr(p.bad, 1);
  }
}

}  // namespace

cudaError_t LaunchIntegerGemm(const IntGemmArgs& args, cudaStream_t stream) {
  if (cudaError_t e = cudaMemsetAsync(args.bad, 0, sizeof(int), stream); e != cudaSuccess) {
    return e;
  }
  const dim3 block(kTile, kTile);
  const int64_t zs = args.batch < 65535 ? args.batch : 65535;
  const dim3 grid(static_cast<unsigned>((args.n_cols + kTile - 1) / kTile),
                  static_cast<unsigned>((args.m_rows + kTile - 1) / kTile),
                  static_cast<unsigned>(zs));
  IntegerGemmKernel<<<grid, block, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace approxjax

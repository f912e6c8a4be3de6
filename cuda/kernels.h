// Launchers of the CUDA kernels (cuda/gemm_kernels.cu). Plain C++ types only,
// so the host handlers (gemm_cuda.cc) never go through nvcc and the kernels
// never see the XLA FFI headers.
#ifndef APPROXJAX_CUDA_KERNELS_H_
#define APPROXJAX_CUDA_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace approxjax {
namespace cuda {

constexpr int kMaxLead = 8;  // leading (batch) dimensions a launch supports
constexpr int kMaxDevices = 64;  // device ordinals the launch setup caches

// Numpy-broadcast leading dimensions of one call, strides in matrices.
struct BatchLayout {
  int nlead;
  int64_t out_lead[kMaxLead];
  int64_t a_stride[kMaxLead], b_stride[kMaxLead], l_stride[kMaxLead];
};

// Matrix offsets of batch member g in the lhs, the rhs and the tables.
__host__ __device__ inline void BatchMatrixOffsets(const BatchLayout& layout, int64_t g,
                                                   int64_t* oa, int64_t* ob, int64_t* ol) {
  *oa = *ob = *ol = 0;
  for (int d = layout.nlead - 1; d >= 0; --d) {
    const int64_t i = g % layout.out_lead[d];
    g /= layout.out_lead[d];
    *oa += i * layout.a_stride[d];
    *ob += i * layout.b_stride[d];
    *ol += i * layout.l_stride[d];
  }
}

// Per table: the unbiased exponent range of its nonzero entries and whether
// it is valid (finite, >= +0.0 everywhere). Filled on the device.
struct TableInfo {
  int lo, hi;
  int any_nonzero;
  int invalid;
};

struct GemmArgs {
  const float* lhs;  // [..., M, K] or [..., K, M] (transpose_lhs)
  const float* rhs;  // [..., K, N] or [..., N, K] (transpose_rhs)
  const float* lut;  // [..., 2**m, 2**m]
  float* out;        // [..., M, N]
  int64_t m_rows, n_cols, depth;
  int m;
  bool transpose_lhs, transpose_rhs;
  int64_t batch;        // product of the output's leading dims
  int64_t table_count;  // number of tables in lut
  BatchLayout layout;
  TableInfo* tables;  // device scratch, table_count entries
  int device;         // the FFI's device ordinal
};

// Checks every table (one block per table) into args.tables, then runs the
// register-tiled GEMM: one launch for the whole batch, S tables included.
// Outputs of a batch member whose table is invalid are NaN.
cudaError_t LaunchApproxGemm(const GemmArgs& args, cudaStream_t stream);

// Elementwise products: out[g, e] = approx(a[g, e], b[g, e]) (m_rows = depth = 1).
cudaError_t LaunchApproxMultiply(const GemmArgs& args, cudaStream_t stream);

// The prior art's design, for benchmarks only: 16x16 thread tiles, one output
// per thread, the table read from global memory through the read-only cache.
cudaError_t LaunchPriorArtGemm(const GemmArgs& args, cudaStream_t stream);

// An integer LUT GEMM (cuda/integer_kernels.cu): operands are table
// indices (the codes' bit patterns), lut int32 [..., side_a, side_b].
struct IntGemmArgs {
  const uint16_t* lhs;  // [..., M, K]
  const uint16_t* rhs;  // [..., K, N]
  const int32_t* lut;   // [..., side_a, side_b]
  int32_t* out;         // [..., M, N]
  int64_t m_rows, n_cols, depth, side_a, side_b;
  int64_t batch;  // product of the output's leading dims
  BatchLayout layout;
  int* bad;  // device flag: set where an index lies outside the table
};

// Clears args.bad, then runs the GEMM on `stream` (no synchronisation).
cudaError_t LaunchIntegerGemm(const IntGemmArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace approxjax

#endif  // APPROXJAX_CUDA_KERNELS_H_

// CUDA kernels of approxjax: the approximate batched GEMM and elementwise
// multiply. Products come from xla_ffi/approx_multiply.h, the header the CPU
// kernels use, and every output is summed in order of k starting from -0.0
// in blocks of kSumBlock k, the block sums added in order, as the CPU kernels
// and reference.sequential_dot_general do, so results are bit-identical to
// the CPU's.
//
// GEMM design: 64x64 output tiles per 256-thread block, 4x4 outputs per
// thread (register tiling), 16-deep k slices. Operands are decoded once as
// they are staged in shared memory: a table offset (the top m mantissa bits)
// and a scale (sign * 2**exponent, or a signed zero for zeros and
// subnormals). The inner loop is then one shared-memory table read, one
// multiply and one fused multiply-add per product: lut * scale_b is exact and
// so is (lut * scale_b) * scale_a for "regular" operands (RegularExponentRange),
// so the fused add rounds exactly as acc + ApproxMultiply(a, b) does. A slice
// holding any irregular operand (inf, NaN, extreme exponent) runs
// ApproxMultiply itself for the whole block. Tables with m <= 7 (64 KiB) live
// in shared memory when the device allows it; larger ones are read from
// global memory through the read-only cache (the gather path).
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>

#include "approx_multiply.h"
#include "kernels.h"

namespace approxjax {
namespace cuda {
namespace {

constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
constexpr int kThreads = 256;  // 16 x 16, each 4 x 4 outputs
constexpr int kMicro = 4;
static_assert(kSumBlock % kTileK == 0, "sum blocks must end on k-slice boundaries");

// One block per table: exponent range of the nonzero entries, and validity.
__global__ void ScanTablesKernel(const float* lut, int m, TableInfo* info) {
  const int64_t size = int64_t{1} << (2 * m);
  const float* t = lut + blockIdx.x * size;
  int lo = 1 << 30, hi = -(1 << 30), bad = 0;
  for (int64_t e = threadIdx.x; e < size; e += blockDim.x) {
    const float v = t[e];
    const uint32_t bits = FloatBits(v);
    if (BiasedExponent(bits) == 255 || (bits & kSignMask)) {
      bad = 1;
    } else if (bits != 0) {
      const int x = SplitLutEntry(v).exp - 127;
      lo = min(lo, x);
      hi = max(hi, x);
    }
  }
  __shared__ int s_lo, s_hi, s_bad;
  if (threadIdx.x == 0) {
    s_lo = 1 << 30;
    s_hi = -(1 << 30);
    s_bad = 0;
  }
  __syncthreads();
  atomicMin(&s_lo, lo);
  atomicMax(&s_hi, hi);
  atomicOr(&s_bad, bad);
  __syncthreads();
  if (threadIdx.x == 0) {
    const int any = s_lo <= s_hi;
    info[blockIdx.x] = TableInfo{any ? s_lo : 0, any ? s_hi : 0, any, s_bad};
  }
}

// Decodes one operand for the fast path. `shift` is m for the operand that
// indexes table rows and 0 for the one that indexes columns.
__device__ __forceinline__ bool Decode(float x, int m, int shift, int range,
                                       int* offset, float* scale) {
  const uint32_t bits = FloatBits(x);
  const int e = BiasedExponent(bits);
  if (e == 0) {  // zero or subnormal: a signed zero
    *offset = 0;
    *scale = BitsFloat(bits & kSignMask);
    return false;
  }
  const int unbiased = e - 127;
  if (e == 255 || unbiased > range || unbiased < -range) {
    *offset = 0;
    *scale = 0.0f;
    return true;
  }
  *offset = static_cast<int>(MantissaIndex(bits, m)) << shift;
  *scale = BitsFloat(bits & (kSignMask | kExpMask));
  return false;
}

// The staged operand slices. Rows are padded by one word: where a slice is
// staged with k varying fastest across threads (a row-major lhs, a
// transposed rhs), consecutive threads write one row apart, which without
// the pad is 64 words, the same bank for all 16 k of a row (a 16-way
// conflict on every store); with it, 65 words apart, all different banks.
constexpr int kPad = 1;
struct Tiles {
  int a_off[kTileK][kTileM + kPad];
  float a_scale[kTileK][kTileM + kPad];
  float a_raw[kTileK][kTileM + kPad];
  int b_off[kTileK][kTileN + kPad];
  float b_scale[kTileK][kTileN + kPad];
  float b_raw[kTileK][kTileN + kPad];
};

template <bool kSharedLut>
__global__ void __launch_bounds__(kThreads)
    GemmKernel(GemmArgs p, int64_t m_tiles) {
  extern __shared__ __align__(16) unsigned char smem[];
  Tiles& tiles = *reinterpret_cast<Tiles*>(smem);
  float* lut_s = reinterpret_cast<float*>(smem + sizeof(Tiles));

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t M = p.m_rows, N = p.n_cols, K = p.depth;
  const int m = p.m;
  const int64_t lut_size = int64_t{1} << (2 * m);
  const int64_t n0 = int64_t{blockIdx.x} * kTileN;

  for (int64_t z = blockIdx.y; z < p.batch * m_tiles; z += gridDim.y) {
    const int64_t g = z / m_tiles;
    const int64_t m0 = (z % m_tiles) * kTileM;
    int64_t oa, ob, ol;
    BatchMatrixOffsets(p.layout, g, &oa, &ob, &ol);
    const float* A = p.lhs + oa * M * K;
    const float* B = p.rhs + ob * K * N;
    const float* lut_g = p.lut + ol * lut_size;
    float* C = p.out + g * M * N;
    const TableInfo info = p.tables[ol];

    if (info.invalid) {  // uniform across the block
      for (int r = 0; r < kMicro; ++r) {
        for (int c = 0; c < kMicro; ++c) {
          const int64_t i = m0 + ty + 16 * r, n = n0 + tx + 16 * c;
          if (i < M && n < N) C[i * N + n] = BitsFloat(kNanBits);
        }
      }
      continue;
    }
    const int range = RegularExponentRange(info.lo, info.hi);
    const float* lut;
    if (kSharedLut) {
      __syncthreads();  // the previous batch member is done with lut_s
      for (int64_t e = tid; e < lut_size; e += kThreads) lut_s[e] = lut_g[e];
      lut = lut_s;
    } else {
      lut = lut_g;
    }

    float acc[kMicro][kMicro], total[kMicro][kMicro];
    for (int r = 0; r < kMicro; ++r) {
      for (int c = 0; c < kMicro; ++c) acc[r][c] = total[r][c] = -0.0f;
    }

    for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
      if (k0 > 0 && k0 % kSumBlock == 0) {  // close a sum block (kTileK divides it)
        for (int r = 0; r < kMicro; ++r) {
          for (int c = 0; c < kMicro; ++c) {
            total[r][c] = k0 == kSumBlock ? acc[r][c] : __fadd_rn(total[r][c], acc[r][c]);
            acc[r][c] = -0.0f;
          }
        }
      }
      bool irregular = false;
      // Stage the lhs slice: 64 rows x 16 k, read along the contiguous axis.
      for (int e = tid; e < kTileM * kTileK; e += kThreads) {
        const int kk = p.transpose_lhs ? e / kTileM : e % kTileK;
        const int ii = p.transpose_lhs ? e % kTileM : e / kTileK;
        const int64_t i = m0 + ii, k = k0 + kk;
        float x, scale;
        int off;
        if (k >= K) {  // contributes -0.0: leaves every sum as it is
          x = -0.0f;
          off = 0;
          scale = -0.0f;
        } else {
          x = i < M ? (p.transpose_lhs ? A[k * M + i] : A[i * K + k]) : 0.0f;
          irregular |= Decode(x, m, m, range, &off, &scale);
        }
        tiles.a_off[kk][ii] = off;
        tiles.a_scale[kk][ii] = scale;
        tiles.a_raw[kk][ii] = x;
      }
      // Stage the rhs slice: 16 k x 64 columns.
      for (int e = tid; e < kTileK * kTileN; e += kThreads) {
        const int kk = p.transpose_rhs ? e % kTileK : e / kTileN;
        const int nn = p.transpose_rhs ? e / kTileK : e % kTileN;
        const int64_t n = n0 + nn, k = k0 + kk;
        float x, scale;
        int off;
        if (k >= K) {
          x = 0.0f;
          off = 0;
          scale = 0.0f;
        } else {
          x = n < N ? (p.transpose_rhs ? B[n * K + k] : B[k * N + n]) : 0.0f;
          irregular |= Decode(x, m, 0, range, &off, &scale);
        }
        tiles.b_off[kk][nn] = off;
        tiles.b_scale[kk][nn] = scale;
        tiles.b_raw[kk][nn] = x;
      }
      const bool slow = __syncthreads_or(irregular);
      const int depth = static_cast<int>(K - k0 < kTileK ? K - k0 : kTileK);
      if (!slow) {
        for (int kk = 0; kk < depth; ++kk) {
          int ao[kMicro], bo[kMicro];
          float as[kMicro], bs[kMicro];
          for (int r = 0; r < kMicro; ++r) {
            ao[r] = tiles.a_off[kk][ty + 16 * r];
            as[r] = tiles.a_scale[kk][ty + 16 * r];
          }
          for (int c = 0; c < kMicro; ++c) {
            bo[c] = tiles.b_off[kk][tx + 16 * c];
            bs[c] = tiles.b_scale[kk][tx + 16 * c];
          }
          for (int r = 0; r < kMicro; ++r) {
            for (int c = 0; c < kMicro; ++c) {
              const float t =
                  __fmul_rn(kSharedLut ? lut[ao[r] + bo[c]]
                                       : __ldg(lut + ao[r] + bo[c]),
                            bs[c]);
              acc[r][c] = __fmaf_rn(t, as[r], acc[r][c]);
            }
          }
        }
      } else {
        for (int kk = 0; kk < depth; ++kk) {
          for (int r = 0; r < kMicro; ++r) {
            const float a = tiles.a_raw[kk][ty + 16 * r];
            for (int c = 0; c < kMicro; ++c) {
              const float b = tiles.b_raw[kk][tx + 16 * c];
              acc[r][c] = __fadd_rn(acc[r][c], ApproxMultiply(a, b, lut, m));
            }
          }
        }
      }
      __syncthreads();
    }
    for (int r = 0; r < kMicro; ++r) {
      for (int c = 0; c < kMicro; ++c) {
        const int64_t i = m0 + ty + 16 * r, n = n0 + tx + 16 * c;
        if (i < M && n < N) {
          C[i * N + n] = K <= kSumBlock ? acc[r][c] : __fadd_rn(total[r][c], acc[r][c]);
        }
      }
    }
  }
}

__global__ void MultiplyKernel(GemmArgs p) {
  const int64_t n = p.n_cols, total = p.batch * n;
  const int64_t lut_size = int64_t{1} << (2 * p.m);
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g = e / n, j = e % n;
    int64_t oa, ob, ol;
    BatchMatrixOffsets(p.layout, g, &oa, &ob, &ol);
    p.out[e] = p.tables[ol].invalid
                   ? BitsFloat(kNanBits)
                   : ApproxMultiply(p.lhs[oa * n + j], p.rhs[ob * n + j],
                                    p.lut + ol * lut_size, p.m);
  }
}

cudaError_t ScanTables(const GemmArgs& p, cudaStream_t stream) {
  ScanTablesKernel<<<static_cast<unsigned>(p.table_count), 256, 0, stream>>>(
      p.lut, p.m, p.tables);
  return cudaGetLastError();
}

}  // namespace

// Per device, set once: the most shared memory a block may opt into, and the
// GEMM kernels' dynamic shared memory limit raised to what they use (rather
// than cudaGetDevice and cudaFuncSetAttribute on every launch).
struct DeviceSetup {
  std::once_flag once;
  cudaError_t status = cudaSuccess;
  int optin = 0;
};

cudaError_t SetUpDevice(int device, int* optin) {
  static DeviceSetup setups[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  DeviceSetup& d = setups[device];
  std::call_once(d.once, [&] {
    d.status = cudaDeviceGetAttribute(&d.optin,
                                      cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                      device);
    if (d.status != cudaSuccess) return;
    const size_t lut_bytes = sizeof(float) << 14;  // m = 7
    const int shared = int(sizeof(Tiles) + lut_bytes) <= d.optin
                           ? int(sizeof(Tiles) + lut_bytes)
                           : int(sizeof(Tiles));
    d.status = cudaFuncSetAttribute(GemmKernel<true>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    shared);
    if (d.status != cudaSuccess) return;
    d.status = cudaFuncSetAttribute(GemmKernel<false>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(sizeof(Tiles)));
  });
  *optin = d.optin;
  return d.status;
}

cudaError_t LaunchApproxGemm(const GemmArgs& p, cudaStream_t stream) {
  if (cudaError_t e = ScanTables(p, stream); e != cudaSuccess) return e;
  int optin = 0;
  if (cudaError_t e = SetUpDevice(p.device, &optin); e != cudaSuccess) return e;
  const size_t lut_bytes = sizeof(float) << (2 * p.m);
  const bool shared_lut = p.m <= 7 && sizeof(Tiles) + lut_bytes <= size_t(optin);
  const size_t smem = sizeof(Tiles) + (shared_lut ? lut_bytes : 0);
  const int64_t n_tiles = (p.n_cols + kTileN - 1) / kTileN;
  const int64_t m_tiles = (p.m_rows + kTileM - 1) / kTileM;
  if (n_tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t rest = p.batch * m_tiles;
  const dim3 grid(static_cast<unsigned>(n_tiles),
                  static_cast<unsigned>(rest < 65535 ? rest : 65535));
  auto kernel = shared_lut ? GemmKernel<true> : GemmKernel<false>;
  kernel<<<grid, kThreads, smem, stream>>>(p, m_tiles);
  return cudaGetLastError();
}

cudaError_t LaunchApproxMultiply(const GemmArgs& p, cudaStream_t stream) {
  if (cudaError_t e = ScanTables(p, stream); e != cudaSuccess) return e;
  const int64_t total = p.batch * p.n_cols;
  const int64_t blocks = (total + 255) / 256;
  MultiplyKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256,
                   0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace approxjax

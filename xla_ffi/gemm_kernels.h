// Inner kernels of the CPU approximate GEMM, compiled once per instruction set
// (gemm_kernels.cc built as baseline, AVX2+FMA and AVX-512 objects) and chosen
// at run time. Every variant computes each output as the sum of its products
// in order of k, each product exact, so all variants agree bit for bit.
#ifndef APPROXJAX_GEMM_KERNELS_H_
#define APPROXJAX_GEMM_KERNELS_H_

#include <cstddef>
#include <cstdint>

namespace approxjax {

// Width of a column block of the output: one row of a per-tile table.
constexpr int kBlockCols = 64;

// Largest m that uses per-tile tables; above it the kernels gather from the LUT.
constexpr int kMaxTableBits = 8;

struct KernelTable {
  const char* name;

  // Packs `rows` x `k` operand elements src[r * rs + k * ks] into the table
  // index (top m fraction bits) and the exact scale (sign * 2**exponent, a
  // signed zero for zeros and subnormals). Elements outside the regular
  // exponent range get scale 0 and mark their row in `row_irregular`.
  void (*pack_rows)(const float* src, int64_t rows, int64_t k, int64_t rs,
                    int64_t ks, int m, int range, uint16_t* idx, float* scale,
                    uint8_t* row_irregular);

  // Builds the per-tile table tab[k][v][c] = rows[j(b[k, c]), v] * scale(b[k, c])
  // for kc x ncols elements of b (b[k * bk + c * bc]); columns
  // ncols..kBlockCols-1 are zero. `rows` is the table read along the tabled
  // operand's index: lut^T when the tabled operand is the rhs, lut when it is
  // the lhs.
  void (*build_table)(float* tab, const float* rows, int m, const float* b,
                      int64_t bk, int64_t bc, int64_t kc, int64_t ncols,
                      int range);

  // cblk[r][c] += sum over k < kc of tab[k][idx[r, k]][c] * scale[r, k], in
  // order of k; idx and scale rows are `ld` apart.
  void (*table_sweep)(float* cblk, int64_t rows, const uint16_t* idx,
                      const float* scale, int64_t ld, int64_t kc,
                      const float* tab, int m);

  // Packs kc x ncols elements of b for gather_sweep: jb[k][c], sb[k][c].
  void (*pack_cols)(const float* b, int64_t bk, int64_t bc, int64_t kc,
                    int64_t ncols, int m, int range, uint16_t* jb, float* sb);

  // cblk[r][c] += sum over k < kc of lut[idx[r, k], jb[k][c]] *
  // (scale[r, k] * sb[k][c]), in order of k.
  void (*gather_sweep)(float* cblk, int64_t rows, const uint16_t* idx,
                       const float* scale, int64_t ld, int64_t kc,
                       const uint16_t* jb, const float* sb, const float* lut,
                       int m);
};

const KernelTable& KernelsBaseline();
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable& KernelsAvx2();
const KernelTable& KernelsAvx512();
#endif

// The fastest variant this CPU runs; APPROXJAX_CPU_KERNEL=baseline|avx2|avx512
// in the environment forces one (for tests and benchmarks).
const KernelTable& SelectKernels();

}  // namespace approxjax

#endif  // APPROXJAX_GEMM_KERNELS_H_

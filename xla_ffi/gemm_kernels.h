// Inner kernels of the CPU approximate GEMM, compiled once per instruction set
// (gemm_kernels.cc built as baseline, AVX2+FMA and AVX-512 objects) and chosen
// at run time. Every variant computes each output as the sum of its products
// in order of k, each product exact, so all variants agree bit for bit.
#ifndef APPROXJAX_GEMM_KERNELS_H_
#define APPROXJAX_GEMM_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "accumulate.h"

namespace approxjax {

// Where a tile of the output lies, for the stochastic bits of its additions
// (RandomBits): batch g; streamed rows from row0, tabled columns from col0
// (output rows i and columns n, or with `swap` the other way round); its k
// from k0.
struct TileCoords {
  int64_t g = 0, row0 = 0, col0 = 0, k0 = 0;
  bool swap = false;
  int64_t I(int64_t r, int64_t c) const { return swap ? col0 + c : row0 + r; }
  int64_t N(int64_t r, int64_t c) const { return swap ? row0 + r : col0 + c; }
};

// Widths of a column block of the output (one row of a per-tile table): wide
// blocks for wide outputs, narrow ones so that outputs with few columns
// (convolutions with 16 channels, say) waste no work on padding.
constexpr int kWideCols = 64;
constexpr int kNarrowCols = 16;

// Kernels for one block width NC.
struct BlockKernels {
  // Builds the per-tile table tab[k][v][c] = rows[j(b[k, c]), v] * scale(b[k, c])
  // for kc x ncols elements of b (b[k * bk + c * bc]); columns ncols..NC-1 are
  // zero. `rows` is the table read along the tabled operand's index: lut^T
  // when the tabled operand is the rhs, lut when it is the lhs. Columns with
  // an element outside the regular exponent range (entry 0 in the table) are
  // marked in col_irregular[c] (ORed in).
  void (*build_table)(float* tab, const float* rows, int m, const float* b,
                      int64_t bk, int64_t bc, int64_t kc, int64_t ncols,
                      int range, uint8_t* col_irregular);

  // cblk[r][c] += sum over k < kc of tab[k][idx[r, k]][c] * scale[r, k], in
  // order of k; idx[r, k] and scale[r, k] at r * lr + k * lk, cblk rows NC
  // apart.
  void (*table_sweep)(float* cblk, int64_t rows, const uint16_t* idx,
                      const float* scale, int64_t lr, int64_t lk, int64_t kc,
                      const float* tab, int m);

  // Compact tables (wide blocks, m <= kCompactMaxBits): when every LUT
  // entry has at most 8 significant bits (bfloat16-exact: Mitchell, MBM,
  // ALM-SOA and other logarithmic multipliers at m <= 7), each entry of the
  // per-tile table is stored as its upper 16 bits, two to a 32-bit word,
  // which halves the table bytes the sweep streams from cache. Word l of the
  // q-th vector of a row holds column 2*q*kLanes + l in its low half and
  // column (2*q + 1)*kLanes + l in its high half. Same arguments and the
  // same sums, bit for bit, as build_table and table_sweep.
  void (*build_compact)(uint32_t* tab, const float* rows, int m,
                        const float* b, int64_t bk, int64_t bc, int64_t kc,
                        int64_t ncols, int range, uint8_t* col_irregular);
  void (*compact_sweep)(float* cblk, int64_t rows, const uint16_t* idx,
                        const float* scale, int64_t lr, int64_t lk,
                        int64_t kc, const uint32_t* tab, int m);

  // The same sums without a per-tile table, for outputs too small to repay
  // building one: cblk[r][c] += sum over k < kc of
  // rows[idx[r, k]][j(b[k, c])] * scale(b[k, c]) * scale[r, k], in order of
  // k, each product a gather from the table row of the streamed element.
  // `rows` is lut when the streamed operand is the lhs, lut^T when it is the
  // rhs. Marks columns as build_table does.
  void (*direct_sweep)(float* cblk, int64_t rows, const uint16_t* idx,
                       const float* scale, int64_t lr, int64_t lk, int64_t kc,
                       const float* lut_rows, int m, const float* b,
                       int64_t bk, int64_t bc, int64_t ncols, int range,
                       uint8_t* col_irregular);

  // build_compact from the LUT's planes (PackPlanes) instead of its rows, by
  // permutes; the same table, bit for bit. nullptr where the variant has
  // none (then build_compact).
  void (*build_compact_planes)(uint32_t* tab, const uint16_t* planes, int m,
                               const float* b, int64_t bk, int64_t bc,
                               int64_t kc, int64_t ncols, int range,
                               uint8_t* col_irregular);

  // build_compact from the LUT's byte codes (PackCodes, base) by byte
  // permutes; the same table, bit for bit. nullptr where the variant has
  // none; needs AVX-512 VBMI at run time (the caller checks).
  void (*build_compact_codes)(uint32_t* tab, const uint8_t* codes, int base,
                              int m, const float* b, int64_t bk, int64_t bc,
                              int64_t kc, int64_t ncols, int range,
                              uint8_t* col_irregular);

  // Separable LUTs (lut[i, j] == f[i] * g[j] exactly, as truncated(m)): the
  // product of a and b is then exactly a' * b' with a' = f[i(a)] * scale(a)
  // and b' = g[j(b)] * scale(b), so a GEMM of the transformed operands with
  // exact products, summed in order of k, gives the same bits as the
  // tables. build_separable stores b' for kc x ncols elements of b as
  // tab[k][c] (`rows` is g: f when the tabled operand is the lhs), marking
  // columns as build_table does; separable_sweep adds
  // cblk[r][c] += sum over k < kc of tab[k][c] * scale[r, k], in order of k,
  // where scale holds a' (scale_rows applied to the packed tile). Where the
  // LUT only factors after rounding, lut[i, j] == float32(f[i] * g[j]) (as
  // truncated(12), whose 26-bit products do not fit float32), every product
  // of the model is a' * b' rounded (the scales are powers of two and the
  // products normal), so `rounded` rounds each product before adding it
  // (a multiply and an add instead of a fused multiply-add).
  void (*build_separable)(float* tab, const float* rows, int m,
                          const float* b, int64_t bk, int64_t bc, int64_t kc,
                          int64_t ncols, int range, uint8_t* col_irregular);
  void (*separable_sweep)(float* cblk, int64_t rows, const float* scale,
                          int64_t lr, int64_t lk, int64_t kc,
                          const float* tab, bool rounded);

  // Sums in a reduced or approximate accumulator (accumulate.h): the
  // products of table_sweep (accumulate_table_sweep), of compact_sweep
  // (accumulate_compact_sweep, kWideCols only), or of a tile of values
  // a[r * lr + k * lk] (transformed operands of a separable LUT, or raw ones
  // for IEEE products) against tab[k][c] (accumulate_scaled_sweep), each
  // product rounded to the product format if any, added in order of k with
  // AddRounded: nearest, toward and away from zero vectorised (lanes out of
  // a narrow format's normal range, scalar), the rest scalar.
  void (*accumulate_table_sweep)(float* cblk, int64_t rows,
                                 const uint16_t* idx, const float* scale,
                                 int64_t lr, int64_t lk, int64_t kc,
                                 const float* tab, int m,
                                 const Accumulator& acc, const TileCoords& at);
  void (*accumulate_compact_sweep)(float* cblk, int64_t rows,
                                   const uint16_t* idx, const float* scale,
                                   int64_t lr, int64_t lk, int64_t kc,
                                   const uint32_t* tab, int m,
                                   const Accumulator& acc,
                                   const TileCoords& at);
  void (*accumulate_scaled_sweep)(float* cblk, int64_t rows, const float* a,
                                  int64_t lr, int64_t lk, int64_t kc,
                                  const float* tab, const Accumulator& acc,
                                  const TileCoords& at);
};

// Words per row of a LUT's planes: planes[v * kPlaneRow + j] holds the upper
// 16 bits of rows[j][v] (the bfloat16 of a compact table's entry before
// scaling) for j < 2**m, and zero beyond.
constexpr int kPlaneRow = 128;

inline void PackPlanes(const float* rows, int m, uint16_t* planes) {
  const int64_t size = int64_t{1} << m;
  for (int64_t v = 0; v < size; ++v) {
    for (int64_t j = 0; j < kPlaneRow; ++j) {
      uint32_t bits = 0;
      if (j < size) std::memcpy(&bits, rows + j * size + v, sizeof(bits));
      planes[v * kPlaneRow + j] = static_cast<uint16_t>(bits >> 16);
    }
  }
}

// Bytes per row of a LUT's codes: where a bfloat16-exact LUT has no zero
// entry and the upper 16 bits of its entries lie within 256 of their least,
// base (as Mitchell, MBM and ALM-SOA, whose entries lie in [1, 4)), each
// entry is that least plus a byte: codes[v * kCodeRow + j] = bits(rows[j][v])
// / 2**16 - base for j < 2**m, zero beyond. Returns base, or -1 (no codes).
constexpr int kCodeRow = 128;

inline int PackCodes(const float* rows, int m, uint8_t* codes) {
  const int64_t size = int64_t{1} << m;
  uint32_t lo = 0xffff, hi = 0;
  for (int64_t e = 0; e < size * size; ++e) {
    uint32_t bits;
    std::memcpy(&bits, rows + e, sizeof(bits));
    if (bits == 0) return -1;
    lo = bits >> 16 < lo ? bits >> 16 : lo;
    hi = bits >> 16 > hi ? bits >> 16 : hi;
  }
  if (hi - lo > 255) return -1;
  for (int64_t v = 0; v < size; ++v) {
    for (int64_t j = 0; j < kCodeRow; ++j) {
      uint32_t bits = lo << 16;
      if (j < size) std::memcpy(&bits, rows + j * size + v, sizeof(bits));
      codes[v * kCodeRow + j] = static_cast<uint8_t>((bits >> 16) - lo);
    }
  }
  return static_cast<int>(lo);
}

// Largest m with compact tables (a table row of one k fits the stack).
constexpr int kCompactMaxBits = 7;

struct KernelTable {
  const char* name;
  // Whether the accumulating sweeps can round bfloat16 sums of two vectors
  // by one instruction (AVX-512 BF16; used where the CPU has it and the
  // plan allows: Plan::bfloat16_pairs).
  bool bfloat16_pairs;

  // Packs `rows` x `k` operand elements src[r * rs + k * ks] into the table
  // index (top m fraction bits) and the exact scale (sign * 2**exponent, a
  // signed zero for zeros and subnormals): row-major (element (r, k) at
  // r * k_total + k), or k-major (at k * rows + r) where PacksKMajor(rs, ks).
  // Elements outside the regular exponent range get scale 0 and mark their
  // row in `row_irregular` (ORed in).
  void (*pack_rows)(const float* src, int64_t rows, int64_t k, int64_t rs,
                    int64_t ks, int m, int range, uint16_t* idx, float* scale,
                    uint8_t* row_irregular);

  // out[e] = scale[e] * f[idx[e]] for n packed elements (separable LUTs:
  // the streamed operand transformed, f exact and normal).
  void (*scale_rows)(float* out, const float* scale, const uint16_t* idx,
                     int64_t n, const float* f);

  // LUT scans, run on every call (a LUT of m = 11 has 4M entries): the OR
  // of the sign bits, of "exponent field 255" and of "subnormal" (*odd), the
  // OR of all bits, and the least and greatest biased exponent fields (of
  // the nonzero entries, and of all) over n entries' bits.
  void (*scan_lut)(const uint32_t* words, int64_t n, uint32_t* odd,
                   uint32_t* low_bits, uint32_t* emin, uint32_t* emax);
  // Whether lut[i * size + j] == f[i] * g[j] exactly for every i, j, or
  // with `rounded`, == float32(f[i] * g[j]) (one rounding of the exact
  // product) and normal.
  bool (*factors_match)(const float* lut, const float* f, const float* g,
                        int64_t size, bool rounded);

  BlockKernels narrow;  // kNarrowCols
  BlockKernels wide;    // kWideCols
};

// Operands whose rows are contiguous in memory pack k-major: whole vectors of
// rows at a time.
inline bool PacksKMajor(int64_t rs, int64_t ks) { return rs == 1 && ks != 1; }

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

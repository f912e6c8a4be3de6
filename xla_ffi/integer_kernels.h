// Inner kernels of the CPU integer LUT GEMM (integer_gemm.cc), compiled once
// per instruction set like gemm_kernels.cc (integer_kernels.cc built as the
// baseline, AVX2 and AVX-512 objects) and chosen at run time. Integer sums
// are exact (int32; the caller bounds them below 2**31), so every variant
// and every order of summation gives the same bits.
#ifndef APPROXJAX_INTEGER_KERNELS_H_
#define APPROXJAX_INTEGER_KERNELS_H_

#include <cstdint>

namespace approxjax {

// Columns of an output block: one row of a per-tile table.
constexpr int kIntCols = 64;

// How the 16-bit tables of one GEMM are built and swept, as this variant
// and CPU allow and the options ask (IntegerKernelTable::Ways).
struct IntegerWays {
  // Sweep two k per instruction (AVX-512 VNNI): the table's rows hold their
  // columns in PairOrder (integer_kernels.cc), not in their own order.
  bool paired = false;
  // Build tables of up to 256 columns from byte planes by byte permutes
  // (AVX-512 VBMI) instead of word permutes (AVX-512BW) or gathers.
  bool bytes = false;
  // Word permutes (AVX-512BW) for tables of up to 256 columns.
  bool words = false;
  // Tables of up to 256 rows built from the LUT's columns (LutColumns) by
  // 16 x 16 transposes of 16-bit words (AVX2).
  bool columns = false;
};

// What 16-bit tables are built from besides the LUT, prepared once per GEMM
// as the ways ask (each nullptr where not asked or for int32 tables).
struct TableSources {
  const uint8_t* planes = nullptr;   // BytePlanes (ways.bytes)
  const int16_t* columns = nullptr;  // LutColumns (ways.columns)
};

// The kernels for one table entry type: int16 (tables whose entries fit 16
// bits, stored as entry - bias: bias 0 for signed entries, 32768 for
// unsigned ones up to 65535) or int32. Each product is entry + bias; the
// sums add bias once per product.
template <typename E>
struct IntegerBlockKernels {
  // Per-tile table of kc k from b[k * ldb + c] (c < ncols): tab[k][i][.]
  // holds lut[i][b[k, c]] for every column c of the block (in PairOrder
  // where ways.paired and E is 16-bit, else in their own order), zero for
  // c >= ncols. lut rows are cols_b entries apart.
  void (*build)(E* tab, const E* lut, TableSources sources, int64_t rows_a,
                int64_t cols_b, const uint16_t* b, int64_t ldb, int64_t kc,
                int64_t ncols, IntegerWays ways);
  // out[r][c] (+)= sum over k < kc of (tab[k][a[r * lda + k]][c] + bias) for
  // r < rows, c < ncols (out rows ldo apart; `first` stores, else adds).
  void (*sweep)(int32_t* out, int64_t ldo, int64_t rows, const uint16_t* a,
                int64_t lda, int64_t kc, const E* tab, int64_t rows_a,
                int64_t ncols, bool first, int32_t bias, IntegerWays ways);
  // The same sums without a table (outputs with few rows): out[r][c] (+)=
  // sum over k < kc of (lut[a[r * lda + k]][b[k * ldb + c]] + bias).
  void (*gather)(int32_t* out, int64_t ldo, int64_t rows, const uint16_t* a,
                 int64_t lda, int64_t kc, const E* lut, int64_t cols_b,
                 const uint16_t* b, int64_t ldb, int64_t ncols, bool first,
                 int32_t bias);
};

// Byte planes of a 16-bit table (rows_a x cols_b, cols_b <= 256): 512
// bytes per row, the low bytes of its entries then the high bytes.
inline void BytePlanes(const int16_t* lut, int64_t rows_a, int64_t cols_b,
                       uint8_t* planes) {
  for (int64_t i = 0; i < rows_a; ++i) {
    uint8_t* p = planes + 512 * i;
    for (int64_t j = 0; j < 256; ++j) {
      const uint16_t e = j < cols_b ? static_cast<uint16_t>(lut[i * cols_b + j]) : 0;
      p[j] = static_cast<uint8_t>(e & 0xff);
      p[256 + j] = static_cast<uint8_t>(e >> 8);
    }
  }
}

// Rows of LutColumns: a column's entries, padded with zeros to whole
// vectors of 16.
constexpr int64_t ColumnStride(int64_t rows_a) { return (rows_a + 15) / 16 * 16; }

// The columns of a 16-bit table (rows_a x cols_b) as rows:
// columns[j * ColumnStride(rows_a) + i] = lut[i * cols_b + j].
inline void LutColumns(const int16_t* lut, int64_t rows_a, int64_t cols_b,
                       int16_t* columns) {
  const int64_t stride = ColumnStride(rows_a);
  for (int64_t j = 0; j < cols_b; ++j) {
    for (int64_t i = 0; i < stride; ++i) {
      columns[j * stride + i] = i < rows_a ? lut[i * cols_b + j] : int16_t{0};
    }
  }
}

struct IntegerKernelTable {
  const char* name;
  // What this variant can do on this CPU, as far as `pairs` and `bytes`
  // (the options) allow.
  IntegerWays (*ways)(bool pairs, bool bytes);
  IntegerBlockKernels<int16_t> i16;
  IntegerBlockKernels<int32_t> i32;
};

const IntegerKernelTable& IntegerKernelsBaseline();
#if defined(__x86_64__) || defined(_M_X64)
const IntegerKernelTable& IntegerKernelsAvx2();
const IntegerKernelTable& IntegerKernelsAvx512();
#endif

}  // namespace approxjax

#endif  // APPROXJAX_INTEGER_KERNELS_H_

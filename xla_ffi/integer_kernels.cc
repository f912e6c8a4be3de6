// The integer LUT GEMM's inner kernels (integer_kernels.h). Plain loops over
// a fixed block of kIntCols columns (GCC vector extensions) serve every
// instruction set. With AVX2 alone, 16-bit tables of up to 256 rows are
// built from the LUT's columns by 16 x 16 word transposes (BuildColumns).
// With AVX-512, 16-bit tables of up to 256 columns are
// built by word permutes (BW) or from byte planes by byte permutes (VBMI),
// and swept two k at a time (VNNI): the rows of k and k + 1 interleaved word
// by word (vpunpck[lh]wd) and summed pairwise into int32 lanes with the add
// fused (vpdpwssd), half the work of widening and adding one k at a time.
// The interleave takes the words of each 128-bit lane in a fixed order, so
// the build then stores each table row's columns in the order that makes
// the int32 lanes come out in the columns' own order (PairOrder).
#include "integer_kernels.h"

#include <cstring>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef APPROXJAX_VARIANT
#define APPROXJAX_VARIANT Baseline
#endif
#define APPROXJAX_INT_CAT2(a, b) a##b
#define APPROXJAX_INT_CAT(a, b) APPROXJAX_INT_CAT2(a, b)
#define APPROXJAX_INT_STR2(a) #a
#define APPROXJAX_INT_STR(a) APPROXJAX_INT_STR2(a)

namespace approxjax {
namespace {

// Words per vector of the paired sweep: 32 (AVX-512, vpdpwssd) or 16
// (AVX2, vpmaddwd).
#if defined(__AVX512BW__)
constexpr int kPairWords = 32;
#else
constexpr int kPairWords = 16;
#endif

// The column stored at position w of a 16-bit table row under the paired
// sweep: in each group of kPairWords columns, word 8l + j of 128-bit lane l
// holds column 4l + j (j < 4) or kPairWords / 2 + 4l + (j - 4), so that
// unpacking two rows and summing pairs gives the group's first half of
// columns in one vector and its second half in the next.
constexpr int PairOrder(int w) {
  const int group = w / kPairWords, l = (w % kPairWords) / 8, j = w % 8;
  return kPairWords * group + (j < 4 ? 4 * l + j : kPairWords / 2 + 4 * l + (j - 4));
}

// The column at stored position w of a table row of entry type E.
template <typename E>
constexpr int StoredColumn(int w, bool paired) {
  return paired && sizeof(E) == 2 ? PairOrder(w) : w;
}

template <typename E>
void Build(E* tab, const E* lut, int64_t rows_a, int64_t cols_b,
           const uint16_t* b, int64_t ldb, int64_t kc, int64_t ncols,
           bool paired) {
  for (int64_t k = 0; k < kc; ++k) {
    uint32_t idx[kIntCols];
    bool keep[kIntCols];
    for (int w = 0; w < kIntCols; ++w) {
      const int c = StoredColumn<E>(w, paired);
      keep[w] = c < ncols;
      idx[w] = keep[w] ? b[k * ldb + c] : 0;
    }
    E* t = tab + k * rows_a * kIntCols;
    for (int64_t i = 0; i < rows_a; ++i) {
      const E* row = lut + i * cols_b;
      E* ti = t + i * kIntCols;
      for (int w = 0; w < kIntCols; ++w) ti[w] = keep[w] ? row[idx[w]] : E{0};
    }
  }
}

// int32 lanes of one register (GCC vector extensions): 16 (a zmm) with
// AVX-512, 8 (a ymm) with AVX2, else 4. Vectors wider than the registers are
// passed through memory: with 16 lanes everywhere GCC kept the AVX2 sweep's
// accumulators on the stack, at half the baseline's speed.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef int32_t V32 __attribute__((vector_size(4 * kLanes)));
typedef int16_t VI16 __attribute__((vector_size(2 * kLanes)));
constexpr int kVecs = kIntCols / kLanes;

template <typename E>
inline V32 LoadLanes(const E* p) {
  if constexpr (sizeof(E) == 4) {
    V32 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  } else {
    VI16 v;
    std::memcpy(&v, p, sizeof(v));
    return __builtin_convertvector(v, V32);
  }
}

// Adds bias * kc to the row's sums and stores them (or adds them) to o.
inline void Finish(int32_t* o, V32* acc, int64_t ncols, bool first,
                   int32_t bias, int64_t kc) {
  const int32_t add = static_cast<int32_t>(bias * kc);
  for (int q = 0; q < kVecs; ++q) acc[q] += add;
  if (ncols == kIntCols) {
    for (int q = 0; q < kVecs; ++q) {
      if (!first) {
        V32 v;
        std::memcpy(&v, o + kLanes * q, sizeof(v));
        acc[q] += v;
      }
      std::memcpy(o + kLanes * q, &acc[q], sizeof(V32));
    }
    return;
  }
  int32_t lanes[kIntCols];
  std::memcpy(lanes, acc, sizeof(lanes));
  for (int64_t c = 0; c < ncols; ++c) o[c] = first ? lanes[c] : o[c] + lanes[c];
}

template <typename E>
void Sweep(int32_t* out, int64_t ldo, int64_t rows, const uint16_t* a,
           int64_t lda, int64_t kc, const E* tab, int64_t rows_a,
           int64_t ncols, bool first, int32_t bias) {
  const int64_t plane = rows_a * kIntCols;
  for (int64_t r = 0; r < rows; ++r) {
    V32 acc[kVecs] = {};
    const uint16_t* ar = a + r * lda;
    const E* t = tab;
    for (int64_t k = 0; k < kc; ++k, t += plane) {
      const E* row = t + int64_t{ar[k]} * kIntCols;
      for (int q = 0; q < kVecs; ++q) acc[q] += LoadLanes(row + kLanes * q);
    }
    Finish(out + r * ldo, acc, ncols, first, bias, kc);
  }
}

#if defined(__AVX512BW__)
// Build of 16-bit tables of up to 256 columns (in PairOrder where
// `paired`): a LUT row is held in up to 8 vectors (zero beyond cols_b) while
// the table rows of up to 16 k are made from it, each block of 32 columns
// by word permutes on index bits 0-5 and blends on bits 6 and 7.
void BuildPermute(int16_t* tab, const int16_t* lut, int64_t rows_a,
                  int64_t cols_b, const uint16_t* b, int64_t ldb, int64_t kc,
                  int64_t ncols, bool paired) {
  const auto mask_of = [](int64_t count) -> __mmask32 {
    return count <= 0 ? 0 : count >= 32 ? 0xffffffffu : (1u << count) - 1;
  };
  const int quarters = static_cast<int>((cols_b + 63) / 64);  // vector pairs
  __mmask32 row_mask[8];
  for (int q = 0; q < 8; ++q) row_mask[q] = mask_of(cols_b - 32 * q);
  alignas(64) uint16_t order[32];
  for (int w = 0; w < 32; ++w) {
    order[w] = static_cast<uint16_t>(StoredColumn<int16_t>(w, paired));
  }
  const __m512i order_v = _mm512_load_si512(order);
  const __m512i bit6 = _mm512_set1_epi16(64), bit7 = _mm512_set1_epi16(128);
  constexpr int kChunk = 16;
  __m512i idx[kChunk][2];
  __mmask32 keep[2], m6[kChunk][2], m7[kChunk][2];
  for (int h = 0; h < 2; ++h) {  // stored positions whose column is < ncols
    const __m512i cols = _mm512_add_epi16(order_v, _mm512_set1_epi16(32 * h));
    keep[h] = _mm512_cmplt_epu16_mask(cols, _mm512_set1_epi16(static_cast<int16_t>(ncols)));
  }
  for (int64_t k0 = 0; k0 < kc; k0 += kChunk) {
    const int n = static_cast<int>(kc - k0 < kChunk ? kc - k0 : kChunk);
    for (int s = 0; s < n; ++s) {
      for (int h = 0; h < 2; ++h) {
        const __m512i raw = _mm512_maskz_loadu_epi16(
            mask_of(ncols - 32 * h), b + (k0 + s) * ldb + 32 * h);
        idx[s][h] = _mm512_permutexvar_epi16(order_v, raw);
        m6[s][h] = _mm512_test_epi16_mask(idx[s][h], bit6);
        m7[s][h] = _mm512_test_epi16_mask(idx[s][h], bit7);
      }
    }
    for (int64_t i = 0; i < rows_a; ++i) {
      const int16_t* row = lut + i * cols_b;
      __m512i v[8];
      for (int q = 0; q < 2 * quarters; ++q) {
        v[q] = _mm512_maskz_loadu_epi16(row_mask[q], row + 32 * q);
      }
      for (int s = 0; s < n; ++s) {
        int16_t* t = tab + ((k0 + s) * rows_a + i) * kIntCols;
        for (int h = 0; h < 2; ++h) {
          __m512i e = _mm512_permutex2var_epi16(v[0], idx[s][h], v[1]);
          if (quarters > 1) {
            const __m512i f = _mm512_permutex2var_epi16(v[2], idx[s][h], v[3]);
            e = _mm512_mask_blend_epi16(m6[s][h], e, f);
          }
          if (quarters > 2) {
            __m512i x = _mm512_permutex2var_epi16(v[4], idx[s][h], v[5]);
            if (quarters > 3) {
              const __m512i y = _mm512_permutex2var_epi16(v[6], idx[s][h], v[7]);
              x = _mm512_mask_blend_epi16(m6[s][h], x, y);
            }
            e = _mm512_mask_blend_epi16(m7[s][h], e, x);
          }
          _mm512_storeu_si512(t + 32 * h, _mm512_maskz_mov_epi16(keep[h], e));
        }
      }
    }
  }
}

bool HasVbmi() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") != 0;
  }();
  return has;
}

bool HasVnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return has;
}

// Sweep of 16-bit tables in PairOrder, two k per step (see the file
// comment; AVX-512 VNNI).
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void SweepPaired(
    int32_t* out, int64_t ldo, int64_t rows, const uint16_t* a, int64_t lda,
    int64_t kc, const int16_t* tab, int64_t rows_a, int64_t ncols, bool first,
    int32_t bias) {
  const int64_t plane = rows_a * kIntCols;
  const __m512i ones = _mm512_set1_epi16(1);
  for (int64_t r = 0; r < rows; ++r) {
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512(), _mm512_setzero_si512()};
    const uint16_t* ar = a + r * lda;
    const int16_t* t = tab;
    int64_t k = 0;
    for (; k + 1 < kc; k += 2, t += 2 * plane) {
      const int16_t* x = t + int64_t{ar[k]} * kIntCols;
      const int16_t* y = t + plane + int64_t{ar[k + 1]} * kIntCols;
      for (int h = 0; h < 2; ++h) {
        const __m512i vx = _mm512_loadu_si512(x + 32 * h);
        const __m512i vy = _mm512_loadu_si512(y + 32 * h);
        acc[2 * h] = _mm512_dpwssd_epi32(acc[2 * h], _mm512_unpacklo_epi16(vx, vy), ones);
        acc[2 * h + 1] =
            _mm512_dpwssd_epi32(acc[2 * h + 1], _mm512_unpackhi_epi16(vx, vy), ones);
      }
    }
    if (k < kc) {
      const int16_t* x = t + int64_t{ar[k]} * kIntCols;
      const __m512i zero = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        const __m512i vx = _mm512_loadu_si512(x + 32 * h);
        acc[2 * h] = _mm512_dpwssd_epi32(acc[2 * h], _mm512_unpacklo_epi16(vx, zero), ones);
        acc[2 * h + 1] =
            _mm512_dpwssd_epi32(acc[2 * h + 1], _mm512_unpackhi_epi16(vx, zero), ones);
      }
    }
    int32_t* o = out + r * ldo;
    if (ncols == kIntCols) {  // whole blocks: straight from the registers
      const __m512i add = _mm512_set1_epi32(static_cast<int32_t>(bias * kc));
      for (int q = 0; q < 4; ++q) {
        __m512i v = _mm512_add_epi32(acc[q], add);
        if (!first) v = _mm512_add_epi32(v, _mm512_loadu_si512(o + 16 * q));
        _mm512_storeu_si512(o + 16 * q, v);
      }
      continue;
    }
    V32 lanes[kVecs];
    std::memcpy(lanes, acc, sizeof(lanes));
    Finish(o, lanes, ncols, first, bias, kc);
  }
}

// The column whose index goes to byte position p of the byte-permute build:
// bytes 16l + j (low) and 16l + 8 + j (high half of each 128-bit lane) are
// interleaved with the high bytes into the words of stored halves 0 and 1 at
// word 8l + j (vpunpck[lh]bw), which must hold the stored columns.
constexpr int ByteOrder(int p, bool paired) {
  const int l = p / 16, h = (p % 16) / 8, j = p % 8;
  return StoredColumn<int16_t>(32 * h + 8 * l + j, paired);
}

// BuildPermute from byte planes by byte permutes (AVX-512 VBMI): for 64
// columns at once, the low bytes of the entries are two vpermi2b over the
// 256 low bytes and a blend on index bit 7, the high bytes likewise, and two
// byte interleaves make the words. The same table, bit for bit.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void BuildBytePermute(
    int16_t* tab, const uint8_t* planes, int64_t rows_a, const uint16_t* b,
    int64_t ldb, int64_t kc, int64_t ncols, bool paired) {
  alignas(64) uint8_t order[64];
  alignas(64) uint16_t stored_col[64];
  for (int p = 0; p < 64; ++p) order[p] = static_cast<uint8_t>(ByteOrder(p, paired));
  for (int w = 0; w < 64; ++w) {
    stored_col[w] = static_cast<uint16_t>(StoredColumn<int16_t>(w, paired));
  }
  const __m512i order_v = _mm512_load_si512(order);
  __mmask32 keep[2];
  for (int h = 0; h < 2; ++h) {
    keep[h] = _mm512_cmplt_epu16_mask(_mm512_load_si512(stored_col + 32 * h),
                                      _mm512_set1_epi16(static_cast<int16_t>(ncols)));
  }
  // Four k per pass over the LUT's rows: their indices and masks stay in
  // registers (16 k spill them: 1.0 instead of 0.6 ms per 64-column block
  // of 1024 k on a Zen 4; the word-permute build above is faster with 16).
  constexpr int kChunk = 4;
  __m512i idx[kChunk];
  __mmask64 hi[kChunk];
  const __mmask32 first_half = ncols >= 32 ? 0xffffffffu : (1u << ncols) - 1;
  const __mmask32 second_half =
      ncols >= 64 ? 0xffffffffu : ncols <= 32 ? 0 : (1u << (ncols - 32)) - 1;
  for (int64_t k0 = 0; k0 < kc; k0 += kChunk) {
    const int n = static_cast<int>(kc - k0 < kChunk ? kc - k0 : kChunk);
    for (int s = 0; s < n; ++s) {  // the 64 indices as bytes, in ByteOrder
      const uint16_t* bk = b + (k0 + s) * ldb;
      const __m512i w0 = _mm512_maskz_loadu_epi16(first_half, bk);
      const __m512i w1 = _mm512_maskz_loadu_epi16(second_half, bk + 32);
      const __m512i bytes = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm512_cvtepi16_epi8(w0)), _mm512_cvtepi16_epi8(w1), 1);
      idx[s] = _mm512_permutexvar_epi8(order_v, bytes);
      hi[s] = _mm512_movepi8_mask(idx[s]);  // index bit 7
    }
    for (int64_t i = 0; i < rows_a; ++i) {
      const uint8_t* p = planes + 512 * i;
      const __m512i l0 = _mm512_loadu_si512(p), l1 = _mm512_loadu_si512(p + 64);
      const __m512i l2 = _mm512_loadu_si512(p + 128), l3 = _mm512_loadu_si512(p + 192);
      const __m512i h0 = _mm512_loadu_si512(p + 256), h1 = _mm512_loadu_si512(p + 320);
      const __m512i h2 = _mm512_loadu_si512(p + 384), h3 = _mm512_loadu_si512(p + 448);
      for (int s = 0; s < n; ++s) {
        const __m512i lo = _mm512_mask_blend_epi8(
            hi[s], _mm512_permutex2var_epi8(l0, idx[s], l1),
            _mm512_permutex2var_epi8(l2, idx[s], l3));
        const __m512i up = _mm512_mask_blend_epi8(
            hi[s], _mm512_permutex2var_epi8(h0, idx[s], h1),
            _mm512_permutex2var_epi8(h2, idx[s], h3));
        int16_t* t = tab + ((k0 + s) * rows_a + i) * kIntCols;
        _mm512_storeu_si512(t, _mm512_maskz_mov_epi16(keep[0], _mm512_unpacklo_epi8(lo, up)));
        _mm512_storeu_si512(t + 32,
                            _mm512_maskz_mov_epi16(keep[1], _mm512_unpackhi_epi8(lo, up)));
      }
    }
  }
}
#endif

#if defined(__AVX2__)
// Transposes 16 vectors of 16 words in place: word e of v[j] goes to word j
// of v[e]. Three rounds of in-lane interleaves (words, dwords, qwords) leave
// word e of rows 0-7 (of rows 8-15) in the low lane of g[0][e] (g[1][e])
// and word e + 8 in its high lane; a lane exchange finishes.
inline void Transpose16x16(__m256i v[16]) {
  __m256i w1[8][2], w2[4][2][2], g[2][8];
  for (int p = 0; p < 8; ++p) {
    w1[p][0] = _mm256_unpacklo_epi16(v[2 * p], v[2 * p + 1]);  // words 0-3
    w1[p][1] = _mm256_unpackhi_epi16(v[2 * p], v[2 * p + 1]);  // words 4-7
  }
  for (int q = 0; q < 4; ++q) {
    for (int h = 0; h < 2; ++h) {  // words 4h + 2u, 4h + 2u + 1 of rows 4q..
      w2[q][h][0] = _mm256_unpacklo_epi32(w1[2 * q][h], w1[2 * q + 1][h]);
      w2[q][h][1] = _mm256_unpackhi_epi32(w1[2 * q][h], w1[2 * q + 1][h]);
    }
  }
  for (int o = 0; o < 2; ++o) {
    for (int h = 0; h < 2; ++h) {
      for (int u = 0; u < 2; ++u) {  // word 4h + 2u (+ 1) of rows 8o..8o+7
        g[o][4 * h + 2 * u] = _mm256_unpacklo_epi64(w2[2 * o][h][u], w2[2 * o + 1][h][u]);
        g[o][4 * h + 2 * u + 1] = _mm256_unpackhi_epi64(w2[2 * o][h][u], w2[2 * o + 1][h][u]);
      }
    }
  }
  for (int e = 0; e < 8; ++e) {
    v[e] = _mm256_permute2x128_si256(g[0][e], g[1][e], 0x20);
    v[e + 8] = _mm256_permute2x128_si256(g[0][e], g[1][e], 0x31);
  }
}

// Build of 16-bit tables of up to 256 rows from the LUT's columns
// (LutColumns): the column of stored position w is the LUT column b[k, c]
// (zeros for c >= ncols), so 16 positions by 16 rows of the table are a
// transpose of 16 loads (0.25 shuffles an entry instead of a scalar load
// and store).
void BuildColumns(int16_t* tab, const int16_t* columns, int64_t rows_a,
                  const uint16_t* b, int64_t ldb, int64_t kc, int64_t ncols,
                  bool paired) {
  alignas(32) static const int16_t kZeros[256] = {};
  const int64_t stride = ColumnStride(rows_a);
  for (int64_t k = 0; k < kc; ++k) {
    const int16_t* src[kIntCols];
    for (int w = 0; w < kIntCols; ++w) {
      const int c = StoredColumn<int16_t>(w, paired);
      src[w] = c < ncols ? columns + int64_t{b[k * ldb + c]} * stride : kZeros;
    }
    int16_t* t = tab + k * rows_a * kIntCols;
    for (int w0 = 0; w0 < kIntCols; w0 += 16) {
      for (int64_t i0 = 0; i0 < rows_a; i0 += 16) {
        __m256i v[16];
        for (int j = 0; j < 16; ++j) {
          v[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[w0 + j] + i0));
        }
        Transpose16x16(v);
        const int64_t n = rows_a - i0 < 16 ? rows_a - i0 : 16;
        for (int64_t e = 0; e < n; ++e) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(t + (i0 + e) * kIntCols + w0), v[e]);
        }
      }
    }
  }
}
#endif

#if defined(__AVX2__) && !defined(__AVX512BW__)
// Sweep of 16-bit tables in PairOrder, two k per step: the rows of k and
// k + 1 interleaved word by word and summed pairwise by vpmaddwd (AVX2).
void SweepPairedAvx2(int32_t* out, int64_t ldo, int64_t rows, const uint16_t* a,
                     int64_t lda, int64_t kc, const int16_t* tab, int64_t rows_a,
                     int64_t ncols, bool first, int32_t bias) {
  const int64_t plane = rows_a * kIntCols;
  const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
  const auto load = [](const int16_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  };
  for (int64_t r = 0; r < rows; ++r) {
    __m256i acc[8];
    for (__m256i& v : acc) v = zero;
    const uint16_t* ar = a + r * lda;
    const int16_t* t = tab;
    int64_t k = 0;
    for (; k < kc; k += 2, t += 2 * plane) {
      const int16_t* x = t + int64_t{ar[k]} * kIntCols;
      const int16_t* y = k + 1 < kc ? t + plane + int64_t{ar[k + 1]} * kIntCols : nullptr;
      for (int h = 0; h < 4; ++h) {
        const __m256i vx = load(x + 16 * h), vy = y ? load(y + 16 * h) : zero;
        acc[2 * h] = _mm256_add_epi32(
            acc[2 * h], _mm256_madd_epi16(_mm256_unpacklo_epi16(vx, vy), ones));
        acc[2 * h + 1] = _mm256_add_epi32(
            acc[2 * h + 1], _mm256_madd_epi16(_mm256_unpackhi_epi16(vx, vy), ones));
      }
    }
    int32_t* o = out + r * ldo;
    const __m256i add = _mm256_set1_epi32(static_cast<int32_t>(bias * kc));
    if (ncols == kIntCols) {  // whole blocks: straight from the registers
      for (int q = 0; q < 8; ++q) {
        __m256i v = _mm256_add_epi32(acc[q], add);
        __m256i* oq = reinterpret_cast<__m256i*>(o + 8 * q);
        if (!first) v = _mm256_add_epi32(v, _mm256_loadu_si256(oq));
        _mm256_storeu_si256(oq, v);
      }
      continue;
    }
    alignas(32) int32_t lanes[kIntCols];
    for (int q = 0; q < 8; ++q) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 8 * q), _mm256_add_epi32(acc[q], add));
    }
    for (int64_t c = 0; c < ncols; ++c) o[c] = first ? lanes[c] : o[c] + lanes[c];
  }
}
#endif

template <typename E>
void BuildFor(E* tab, const E* lut, TableSources sources, int64_t rows_a,
              int64_t cols_b, const uint16_t* b, int64_t ldb, int64_t kc,
              int64_t ncols, IntegerWays ways) {
#if defined(__AVX2__)
  if constexpr (sizeof(E) == 2) {
    if (rows_a <= 256 && sources.columns != nullptr && ways.columns) {
      BuildColumns(tab, sources.columns, rows_a, b, ldb, kc, ncols, ways.paired);
      return;
    }
  }
#endif
#if defined(__AVX512BW__)
  if constexpr (sizeof(E) == 2) {
    if (cols_b <= 256 && sources.planes != nullptr && ways.bytes) {
      BuildBytePermute(tab, sources.planes, rows_a, b, ldb, kc, ncols, ways.paired);
      return;
    }
    if (cols_b <= 256 && ways.words) {
      BuildPermute(tab, lut, rows_a, cols_b, b, ldb, kc, ncols, ways.paired);
      return;
    }
  }
#endif
  Build(tab, lut, rows_a, cols_b, b, ldb, kc, ncols, ways.paired);
}

template <typename E>
void SweepFor(int32_t* out, int64_t ldo, int64_t rows, const uint16_t* a,
              int64_t lda, int64_t kc, const E* tab, int64_t rows_a,
              int64_t ncols, bool first, int32_t bias, IntegerWays ways) {
#if defined(__AVX512BW__)
  if constexpr (sizeof(E) == 2) {
    if (ways.paired) {
      SweepPaired(out, ldo, rows, a, lda, kc, tab, rows_a, ncols, first, bias);
      return;
    }
  }
#elif defined(__AVX2__)
  if constexpr (sizeof(E) == 2) {
    if (ways.paired) {
      SweepPairedAvx2(out, ldo, rows, a, lda, kc, tab, rows_a, ncols, first, bias);
      return;
    }
  }
#endif
  Sweep(out, ldo, rows, a, lda, kc, tab, rows_a, ncols, first, bias);
}

IntegerWays Ways(bool pairs, bool bytes) {
  IntegerWays w;
#if defined(__AVX512BW__)
  w.words = true;
  w.paired = pairs && HasVnni();
  w.bytes = bytes && HasVbmi();
#elif defined(__AVX2__)
  w.columns = true;
  w.paired = pairs;
  (void)bytes;
#else
  (void)pairs;
  (void)bytes;
#endif
  return w;
}

template <typename E>
void Gather(int32_t* out, int64_t ldo, int64_t rows, const uint16_t* a,
            int64_t lda, int64_t kc, const E* lut, int64_t cols_b,
            const uint16_t* b, int64_t ldb, int64_t ncols, bool first,
            int32_t bias) {
  for (int64_t r = 0; r < rows; ++r) {
    int32_t acc[kIntCols] = {};
    const uint16_t* ar = a + r * lda;
    for (int64_t k = 0; k < kc; ++k) {
      const E* row = lut + int64_t{ar[k]} * cols_b;
      const uint16_t* bk = b + k * ldb;
      if (ncols == kIntCols) {
        for (int c = 0; c < kIntCols; ++c) acc[c] += static_cast<int32_t>(row[bk[c]]);
      } else {
        for (int64_t c = 0; c < ncols; ++c) acc[c] += static_cast<int32_t>(row[bk[c]]);
      }
    }
    int32_t* o = out + r * ldo;
    const int32_t add = static_cast<int32_t>(bias * kc);
    for (int64_t c = 0; c < ncols; ++c) {
      o[c] = first ? acc[c] + add : o[c] + acc[c] + add;
    }
  }
}

template <typename E>
constexpr IntegerBlockKernels<E> Block() {
  return {&BuildFor<E>, &SweepFor<E>, &Gather<E>};
}

}  // namespace

const IntegerKernelTable& APPROXJAX_INT_CAT(IntegerKernels, APPROXJAX_VARIANT)() {
  static const IntegerKernelTable table = {APPROXJAX_INT_STR(APPROXJAX_VARIANT), &Ways,
                                           Block<int16_t>(), Block<int32_t>()};
  return table;
}

}  // namespace approxjax

// One instruction-set variant of the inner kernels (see gemm_kernels.h). The
// build compiles this file once per variant with APPROXJAX_VARIANT set to
// Baseline, Avx2 or Avx512 and matching -m flags; GCC/Clang vector extensions
// give one source for every width.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "approx_multiply.h"
#include "gemm_kernels.h"

#ifndef APPROXJAX_VARIANT
#define APPROXJAX_VARIANT Baseline
#endif
#ifndef APPROXJAX_VEC_BYTES
#define APPROXJAX_VEC_BYTES 16
#endif

#define APPROXJAX_CAT2(a, b) a##b
#define APPROXJAX_CAT(a, b) APPROXJAX_CAT2(a, b)
#define APPROXJAX_STR2(a) #a
#define APPROXJAX_STR(a) APPROXJAX_STR2(a)

namespace approxjax {
namespace {

typedef float Vec __attribute__((vector_size(APPROXJAX_VEC_BYTES)));
constexpr int kLanes = APPROXJAX_VEC_BYTES / 4;

// Regularity test as a branch-free range check on the biased exponent:
// zeros/subnormals (e == 0) and exponents in [127 - range, 127 + range].
struct RegularRange {
  uint32_t lo, width;  // regular iff e == 0 || e - lo < width (unsigned)
  explicit RegularRange(int range)
      : lo(static_cast<uint32_t>(127 - range)),
        width(range < 0 ? 0u : static_cast<uint32_t>(2 * range + 1)) {}
  bool operator()(uint32_t bits) const {
    const uint32_t e = (bits >> 23) & 0xffu;
    return (e == 0) | ((e - lo) < width);
  }
};

inline bool IsRegular(uint32_t bits, int range) {
  return RegularRange(range)(bits);
}

// One element: index, exact scale (0 where irregular); returns irregular.
inline bool PackOne(float x, int shift, const RegularRange& regular,
                    uint16_t* idx, float* scale) {
  const uint32_t bits = FloatBits(x);
  const bool ok = regular(bits);
  *idx = static_cast<uint16_t>((bits & kFracMask) >> shift);
  *scale = BitsFloat(ok ? (bits & 0xff800000u) : 0u);
  return !ok;
}

typedef uint32_t VecU __attribute__((vector_size(APPROXJAX_VEC_BYTES)));
typedef int32_t VecI __attribute__((vector_size(APPROXJAX_VEC_BYTES)));
typedef uint16_t VecH __attribute__((vector_size(APPROXJAX_VEC_BYTES / 2)));

// PackOne on a vector of element bits: table indices in *iv, scales in *sv;
// returns all ones in the lanes that are irregular (zero lanes are regular).
inline VecI PackBits(VecU bits, int shift, const RegularRange& regular,
                     VecU* iv, VecU* sv) {
  const VecU e = (bits >> 23) & 0xffu;
  const VecI ok = (e == 0u) | ((e - regular.lo) < regular.width);
  *iv = (bits & kFracMask) >> shift;
  *sv = (bits & 0xff800000u) & reinterpret_cast<const VecU&>(ok);
  return ~ok;
}

// PackOne on kLanes contiguous elements.
inline VecI PackLanes(const float* src, int shift, const RegularRange& regular,
                      uint16_t* idx, float* scale) {
  VecU bits, iv, sv;
  std::memcpy(&bits, src, sizeof(bits));
  const VecI bad = PackBits(bits, shift, regular, &iv, &sv);
  const VecH ih = __builtin_convertvector(iv, VecH);
  std::memcpy(idx, &ih, sizeof(ih));
  std::memcpy(scale, &sv, sizeof(sv));
  return bad;
}

// PackLanes on the first n < kLanes elements (the others untouched).
inline VecI PackPartial(const float* src, int n, int shift,
                        const RegularRange& regular, uint16_t* idx,
                        float* scale) {
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
  const __mmask16 live = static_cast<__mmask16>((1u << n) - 1);
  VecU iv, sv;
  const VecI bad = PackBits(
      reinterpret_cast<VecU>(_mm512_maskz_loadu_epi32(live, src)), shift,
      regular, &iv, &sv);
  _mm512_mask_cvtepi32_storeu_epi16(idx, live, reinterpret_cast<__m512i>(iv));
  _mm512_mask_storeu_ps(scale, live, reinterpret_cast<__m512>(sv));
  return bad;
#else
  alignas(64) float in[kLanes] = {};
  alignas(64) uint16_t iv[kLanes];
  alignas(64) float sv[kLanes];
  std::memcpy(in, src, n * sizeof(float));
  const VecI bad = PackLanes(in, shift, regular, iv, sv);
  std::memcpy(idx, iv, n * sizeof(uint16_t));
  std::memcpy(scale, sv, n * sizeof(float));
  return bad;
#endif
}

inline bool AnyLane(const VecI& v) {
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
  const __m512i x = reinterpret_cast<const __m512i&>(v);
  return _mm512_test_epi32_mask(x, x) != 0;
#elif defined(__AVX2__) && APPROXJAX_VEC_BYTES == 32
  const __m256i x = reinterpret_cast<const __m256i&>(v);
  return !_mm256_testz_si256(x, x);
#else
  uint64_t w[sizeof(VecI) / 8];
  std::memcpy(w, &v, sizeof(v));
  uint64_t any = 0;
  for (uint64_t x : w) any |= x;
  return any != 0;
#endif
}

// ORs the first n irregular lanes of `bad` into flags[0..n-1].
inline void MarkLanes(const VecI& bad, int n, uint8_t* flags) {
  if (!AnyLane(bad)) return;
  for (int l = 0; l < n; ++l) flags[l] |= bad[l] != 0;
}

void PackRows(const float* src, int64_t rows, int64_t k, int64_t rs,
              int64_t ks, int m, int range, uint16_t* __restrict idx,
              float* __restrict scale, uint8_t* row_irregular) {
  const int shift = 23 - m;
  const RegularRange regular(range);
  if (ks == 1 || rs != 1) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* s = src + r * rs;
      uint16_t* ir = idx + r * k;
      float* sr = scale + r * k;
      uint32_t irregular = 0;
      if (ks == 1) {  // contiguous: kLanes elements at a time
        VecI bad = {};
        int64_t kk = 0;
        for (; kk + kLanes <= k; kk += kLanes) {
          bad |= PackLanes(s + kk, shift, regular, ir + kk, sr + kk);
        }
        if (kk < k) {
          bad |= PackPartial(s + kk, static_cast<int>(k - kk), shift, regular,
                             ir + kk, sr + kk);
        }
        irregular = AnyLane(bad);
      } else {
        for (int64_t kk = 0; kk < k; ++kk) {
          irregular |= PackOne(s[kk * ks], shift, regular, ir + kk, sr + kk);
        }
      }
      row_irregular[r] |= irregular != 0;
    }
    return;
  }
  // Rows contiguous in memory (a transposed operand): k-major output
  // (PacksKMajor), kLanes rows at a time.
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* s = src + kk * ks;
    uint16_t* ik = idx + kk * rows;
    float* sk = scale + kk * rows;
    int64_t r = 0;
    for (; r + kLanes <= rows; r += kLanes) {
      MarkLanes(PackLanes(s + r, shift, regular, ik + r, sk + r), kLanes,
                row_irregular + r);
    }
    if (r < rows) {
      const int n = static_cast<int>(rows - r);
      MarkLanes(PackPartial(s + r, n, shift, regular, ik + r, sk + r), n,
                row_irregular + r);
    }
  }
}

// k ahead of the one packed whose row PackCols prefetches.
constexpr int64_t kPrefetchRows = 4;

template <int NC>
void PackCols(const float* b, int64_t bk, int64_t bc, int64_t kc,
              int64_t ncols, int m, int range, uint16_t* jb, float* sb,
              uint8_t* col_irregular) {
  const int shift = 23 - m;
  const RegularRange regular(range);
  for (int64_t kk = 0; kk < kc; ++kk) {
    uint16_t* jr = jb + kk * NC;
    float* sr = sb + kk * NC;
    if (bc == 1) {  // contiguous: kLanes at a time, then zero padding
      // Rows of a row-major operand lie a row of the matrix apart (pages
      // apart for wide ones), too far for the hardware prefetcher: a table
      // build otherwise waits on memory for each k. A prefetch never
      // faults, so the address past the last row is harmless.
      const uintptr_t ahead = reinterpret_cast<uintptr_t>(b) +
                              static_cast<uintptr_t>((kk + kPrefetchRows) * bk) *
                                  sizeof(float);
      for (int64_t c = 0; c < ncols; c += 64 / sizeof(float)) {
        __builtin_prefetch(
            reinterpret_cast<const void*>(ahead + c * sizeof(float)));
      }
      int64_t c = 0;
      for (; c + kLanes <= ncols; c += kLanes) {
        MarkLanes(PackLanes(b + kk * bk + c, shift, regular, jr + c, sr + c),
                  kLanes, col_irregular + c);
      }
      if (c < ncols) {
        const int n = static_cast<int>(ncols - c);
        MarkLanes(PackPartial(b + kk * bk + c, n, shift, regular, jr + c,
                              sr + c),
                  n, col_irregular + c);
      }
      std::fill(jr + ncols, jr + NC, uint16_t{0});
      std::fill(sr + ncols, sr + NC, 0.0f);
      continue;
    }
    for (int64_t c = 0; c < NC; ++c) {
      if (c < ncols) {
        const uint32_t bits = FloatBits(b[kk * bk + c * bc]);
        jr[c] = static_cast<uint16_t>((bits & kFracMask) >> shift);
        const bool regular = IsRegular(bits, range);
        col_irregular[c] |= static_cast<uint8_t>(!regular);
        sr[c] = regular ? BitsFloat(bits & 0xff800000u) : 0.0f;
      } else {
        jr[c] = 0;
        sr[c] = 0.0f;
      }
    }
  }
}

#if defined(__AVX2__)
// Transposes eight rows of eight floats in registers.
inline void Transpose8x8(__m256& r0, __m256& r1, __m256& r2, __m256& r3,
                         __m256& r4, __m256& r5, __m256& r6, __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// r[i][l] = p[l][v0 + i] * scale[l]: eight rows of a LUT read across eight
// table columns (a transpose of contiguous loads).
inline void ScaledColumns(const float* const* p, int64_t v0, __m256 scale,
                          __m256* r) {
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(p[i] + v0);
  Transpose8x8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
  for (int i = 0; i < 8; ++i) r[i] = _mm256_mul_ps(r[i], scale);
}
#endif

template <int NC>
void BuildTable(float* tab, const float* rows, int m, const float* b,
                int64_t bk, int64_t bc, int64_t kc, int64_t ncols, int range,
                uint8_t* col_irregular) {
  const int64_t size = int64_t{1} << m;
  alignas(64) uint16_t jb[NC];
  alignas(64) float sb[NC];
  for (int64_t kk = 0; kk < kc; ++kk) {
    PackCols<NC>(b + kk * bk, bk, bc, 1, ncols, m, range, jb, sb,
                 col_irregular);
    float* t = tab + kk * size * NC;
#if defined(__AVX2__)
    if (size >= 8) {
      // tab[v][c] = rows[jb[c]][v] * sb[c]: a transpose of the gathered
      // rows, done as 8x8 register transposes of contiguous loads.
      for (int c0 = 0; c0 < NC; c0 += 8) {
        const float* p[8];
        for (int i = 0; i < 8; ++i) p[i] = rows + int64_t{jb[c0 + i]} * size;
        const __m256 scale = _mm256_load_ps(sb + c0);
        for (int64_t v0 = 0; v0 < size; v0 += 8) {
          __m256 r[8];
          ScaledColumns(p, v0, scale, r);
          for (int i = 0; i < 8; ++i) _mm256_store_ps(t + (v0 + i) * NC + c0, r[i]);
        }
      }
      continue;
    }
#endif
    for (int c = 0; c < NC; ++c) {
      const float* src = rows + int64_t{jb[c]} * size;
      for (int64_t v = 0; v < size; ++v) t[v * NC + c] = src[v] * sb[c];
    }
  }
}

#if defined(__AVX512BW__) && APPROXJAX_VEC_BYTES == 64
// Compact tables built by word permutes (AVX-512BW) from `planes`
// (gemm_kernels.h): a table row's entries for 32 columns are two vpermt2w
// (bits 0-5 of j, within each 64-entry half of the plane row) and a blend on
// bit 6, instead of 8x8 transposes of gathered LUT rows. Measured alone at
// m = 7, 64 columns: 0.074 ns per entry against 0.117 (benchmarks/RESULTS.md).
// Entries 0..127 of a plane row (kPlaneRow words at p) at the 32 indices in j.
inline __m512i PermutePlane(const uint16_t* p, __m512i j, __mmask32 bit6) {
  const __m512i* q = reinterpret_cast<const __m512i*>(p);
  const __m512i lo = _mm512_permutex2var_epi16(_mm512_loadu_si512(q), j,
                                               _mm512_loadu_si512(q + 1));
  const __m512i hi = _mm512_permutex2var_epi16(_mm512_loadu_si512(q + 2), j,
                                               _mm512_loadu_si512(q + 3));
  return _mm512_mask_blend_epi16(bit6, lo, hi);
}

// The columns of one k of a compact table built by permutes, per group g of
// 32 columns in word order (word 2l of vector g is column 32g + l, word
// 2l + 1 column 32g + 16 + l; gemm_kernels.h): the LUT index j of each
// word's column (and its bit 6), base plus the column's sign and exponent
// - 127 (added to an entry's bits, mod 2**16), the column's signed zero,
// and which columns are nonzero.
template <int NC>
struct CompactColumns {
  static_assert(NC % 32 == 0, "a row is whole word vectors");
  static constexpr int kGroups = NC / 32;
  __m512i j[kGroups], add[kGroups], zero[kGroups];
  __mmask32 live[kGroups], bit6[kGroups];

  CompactColumns(const float* b, int64_t bk, int64_t bc, int64_t ncols, int m,
                 int range, uint8_t* col_irregular, int base) {
    alignas(64) uint16_t jb[NC];
    alignas(64) float sb[NC];
    PackCols<NC>(b, bk, bc, 1, ncols, m, range, jb, sb, col_irregular);
    // In registers (words built in memory and reloaded whole would stall
    // on store forwarding): word 2l + h of a dword vector is the low (h = 0)
    // or high (h = 1) half of its lane l.
    const __m512i offset =
        _mm512_set1_epi16(static_cast<int16_t>(base - (127 << 7)));
    for (int g = 0; g < kGroups; ++g) {
      const int c = 32 * g;
      const __m512i lo = _mm512_castps_si512(_mm512_load_ps(sb + c));
      const __m512i hi = _mm512_castps_si512(_mm512_load_ps(sb + c + 16));
      // The upper halves of the scales' bits: sign and exponent.
      const __m512i words = _mm512_or_si512(
          _mm512_srli_epi32(lo, 16),
          _mm512_and_si512(hi, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
      add[g] = _mm512_add_epi16(words, offset);
      zero[g] = _mm512_and_si512(words, _mm512_set1_epi16(
                                            static_cast<int16_t>(0x8000)));
      live[g] = _mm512_test_epi16_mask(words, _mm512_set1_epi16(0x7f80));
      const __m512i jlo = _mm512_cvtepu16_epi32(
          _mm256_load_si256(reinterpret_cast<const __m256i*>(jb + c)));
      const __m512i jhi = _mm512_cvtepu16_epi32(
          _mm256_load_si256(reinterpret_cast<const __m256i*>(jb + c + 16)));
      j[g] = _mm512_or_si512(jlo, _mm512_slli_epi32(jhi, 16));
      bit6[g] = _mm512_test_epi16_mask(j[g], _mm512_set1_epi16(64));
    }
  }
};

// Compact tables by permutes. Each entry is the high plane (bfloat16 bits)
// with the column's exponent and sign added as integers: exact, since the
// scaled entry is a normal float (the regular range). Zero entries and zero
// or subnormal columns give the column's signed zero, irregular columns +0,
// as the float build does.
template <int NC>
void BuildCompactPlanes(uint32_t* tab, const uint16_t* planes, int m,
                        const float* b, int64_t bk, int64_t bc, int64_t kc,
                        int64_t ncols, int range, uint8_t* col_irregular) {
  static_assert(kPlaneRow == 128, "two 64-entry halves per plane row");
  const int64_t size = int64_t{1} << m;
  for (int64_t kk = 0; kk < kc; ++kk) {
    const CompactColumns<NC> cols(b + kk * bk, bk, bc, ncols, m, range,
                                  col_irregular, 0);
    uint32_t* t = tab + kk * size * (NC / 2);
    for (int64_t v = 0; v < size; ++v) {
      const uint16_t* pv = planes + v * kPlaneRow;
      for (int g = 0; g < cols.kGroups; ++g) {
        const __m512i e = PermutePlane(pv, cols.j[g], cols.bit6[g]);
        const __mmask32 k = _mm512_mask_test_epi16_mask(cols.live[g], e, e);
        const __m512i r = _mm512_mask_add_epi16(cols.zero[g], k, e, cols.add[g]);
        _mm512_store_si512(t + v * (NC / 2) + 16 * g, r);
      }
    }
  }
}

// Compact tables from byte codes (AVX-512 VBMI; gemm_kernels.h): a row of
// 32 columns is one zero-masked vpermt2b, which looks up all 128 codes of
// the LUT row at once and leaves each word's high byte zero, and an add of
// base + the column's exponent and sign: against two vpermt2w, a blend and
// a test of the planes. The same table, bit for bit (no entry is zero).
template <int NC>
__attribute__((target("avx512vbmi"))) void BuildCompactCodes(
    uint32_t* tab, const uint8_t* codes, int base, int m, const float* b,
    int64_t bk, int64_t bc, int64_t kc, int64_t ncols, int range,
    uint8_t* col_irregular) {
  static_assert(kCodeRow == 128, "two 64-byte halves per code row");
  constexpr __mmask64 kLowBytes = 0x5555555555555555ull;
  for (int64_t kk = 0; kk < kc; ++kk) {
    const CompactColumns<NC> cols(b + kk * bk, bk, bc, ncols, m, range,
                                  col_irregular, base);
    uint32_t* t = tab + (kk << m) * (NC / 2);
    for (int64_t v = 0; v < int64_t{1} << m; ++v) {
      const __m512i* q = reinterpret_cast<const __m512i*>(codes + v * kCodeRow);
      const __m512i lo = _mm512_loadu_si512(q), hi = _mm512_loadu_si512(q + 1);
      for (int g = 0; g < cols.kGroups; ++g) {
        // Byte 2w of the index (word w's low byte) is j < 128.
        const __m512i e =
            _mm512_maskz_permutex2var_epi8(kLowBytes, lo, cols.j[g], hi);
        const __m512i r = _mm512_mask_add_epi16(cols.zero[g], cols.live[g], e,
                                                cols.add[g]);
        _mm512_store_si512(t + v * (NC / 2) + 16 * g, r);
      }
    }
  }
}

#endif

// Rows swept together, so that at least eight FMA chains are in flight.
template <int NC>
constexpr int RowsTogether() {
  return NC / kLanes >= 8 ? 1 : 8 / (NC / kLanes);
}

// Holds R rows of the output block cblk (rows NC apart) in registers while
// step(row, kk, acc) adds the products of k = kk to row `row`'s NC sums, for
// every k in order.
template <int NC, int R, typename Step>
inline void AccumulateRows(float* cblk, int64_t r, int64_t kc, Step& step) {
  constexpr int kV = NC / kLanes;
  Vec acc[R][kV];
  for (int q = 0; q < R; ++q) {
    const Vec* out = reinterpret_cast<const Vec*>(cblk + (r + q) * NC);
    for (int v = 0; v < kV; ++v) acc[q][v] = out[v];
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    for (int q = 0; q < R; ++q) step(r + q, kk, acc[q]);
  }
  for (int q = 0; q < R; ++q) {
    Vec* out = reinterpret_cast<Vec*>(cblk + (r + q) * NC);
    for (int v = 0; v < kV; ++v) out[v] = acc[q][v];
  }
}

// AccumulateRows over all `rows`, R rows at a time (then one at a time).
template <int NC, int R, typename Step>
inline void AccumulateAllRows(float* cblk, int64_t rows, int64_t kc,
                              Step step) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) AccumulateRows<NC, R>(cblk, r, kc, step);
  for (; r < rows; ++r) AccumulateRows<NC, 1>(cblk, r, kc, step);
}

template <int NC>
void TableSweep(float* cblk, int64_t rows, const uint16_t* idx,
                const float* scale, int64_t lr, int64_t lk, int64_t kc,
                const float* tab, int m) {
  constexpr int kV = NC / kLanes;
  const int64_t stride = (int64_t{1} << m) * NC;
  AccumulateAllRows<NC, RowsTogether<NC>()>(
      cblk, rows, kc, [=](int64_t r, int64_t kk, Vec* acc) {
        const int64_t at = r * lr + kk * lk;
        const Vec* row = reinterpret_cast<const Vec*>(
            tab + kk * stride + int64_t{idx[at]} * NC);
        const float s = scale[at];
        for (int v = 0; v < kV; ++v) acc[v] += row[v] * s;
      });
}

// Compact tables (gemm_kernels.h): a table of one k is built as floats, then
// each entry keeps its upper 16 bits (exact: the caller checked that every
// LUT entry's lower 16 bits are zero, and scaling by a power of two keeps
// them zero), two columns to a word.
template <int NC>
void BuildCompactTable(uint32_t* tab, const float* rows, int m,
                       const float* b, int64_t bk, int64_t bc, int64_t kc,
                       int64_t ncols, int range, uint8_t* col_irregular) {
  static_assert(NC % (2 * kLanes) == 0, "a row is whole word vectors");
  const int64_t size = int64_t{1} << m;
#if defined(__AVX2__)
  if (size >= 8) {  // fused: each pair of 8-column groups transposed, joined
    alignas(64) uint16_t jb[NC];
    alignas(64) float sb[NC];
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int64_t kk = 0; kk < kc; ++kk) {
      PackCols<NC>(b + kk * bk, bk, bc, 1, ncols, m, range, jb, sb,
                   col_irregular);
      uint32_t* t = tab + kk * size * (NC / 2);
      for (int w0 = 0; w0 < NC / 2; w0 += 8) {  // words w0..w0+7 of a row
        const int lo = w0 / kLanes * 2 * kLanes + w0 % kLanes;
        const int hi = lo + kLanes;
        const float *plo[8], *phi[8];
        for (int i = 0; i < 8; ++i) {
          plo[i] = rows + int64_t{jb[lo + i]} * size;
          phi[i] = rows + int64_t{jb[hi + i]} * size;
        }
        const __m256 slo = _mm256_load_ps(sb + lo), shi = _mm256_load_ps(sb + hi);
        for (int64_t v0 = 0; v0 < size; v0 += 8) {
          __m256 rl[8], rh[8];
          ScaledColumns(plo, v0, slo, rl);
          ScaledColumns(phi, v0, shi, rh);
          for (int i = 0; i < 8; ++i) {
            const __m256i word = _mm256_or_si256(
                _mm256_srli_epi32(_mm256_castps_si256(rl[i]), 16),
                _mm256_and_si256(_mm256_castps_si256(rh[i]), high));
            _mm256_store_si256(
                reinterpret_cast<__m256i*>(t + (v0 + i) * (NC / 2) + w0), word);
          }
        }
      }
    }
    return;
  }
#endif
  alignas(64) float one[(int64_t{1} << kCompactMaxBits) * NC];
  for (int64_t kk = 0; kk < kc; ++kk) {
    BuildTable<NC>(one, rows, m, b + kk * bk, bk, bc, 1, ncols, range,
                   col_irregular);
    uint32_t* t = tab + kk * size * (NC / 2);
    for (int64_t v = 0; v < size; ++v) {
      VecU* w = reinterpret_cast<VecU*>(t + v * (NC / 2));
      for (int q = 0; q < NC / (2 * kLanes); ++q) {
        VecU lo, hi;
        std::memcpy(&lo, one + v * NC + 2 * q * kLanes, sizeof(lo));
        std::memcpy(&hi, one + v * NC + (2 * q + 1) * kLanes, sizeof(hi));
        w[q] = (lo >> 16) | (hi & 0xffff0000u);
      }
    }
  }
}

template <int NC>
void CompactSweep(float* cblk, int64_t rows, const uint16_t* idx,
                  const float* scale, int64_t lr, int64_t lk, int64_t kc,
                  const uint32_t* tab, int m) {
  constexpr int kW = NC / (2 * kLanes);
  const int64_t stride = (int64_t{1} << m) * (NC / 2);
  AccumulateAllRows<NC, RowsTogether<NC>()>(
      cblk, rows, kc, [=](int64_t r, int64_t kk, Vec* acc) {
        const int64_t at = r * lr + kk * lk;
        const VecU* row = reinterpret_cast<const VecU*>(
            tab + kk * stride + int64_t{idx[at]} * (NC / 2));
        const float s = scale[at];
        for (int q = 0; q < kW; ++q) {
          acc[2 * q] += (Vec)(row[q] << 16) * s;
          acc[2 * q + 1] += (Vec)(row[q] & 0xffff0000u) * s;
        }
      });
}

// LUT scans (gemm_kernels.h), branch-free so that they vectorise.
void ScanLut(const uint32_t* words, int64_t n, uint32_t* odd,
             uint32_t* low_bits, uint32_t* emin, uint32_t* emax) {
  uint32_t o = 0, low = 0, lo = 255, hi = 0;
  for (int64_t e = 0; e < n; ++e) {
    const uint32_t bits = words[e], x = (bits >> 23) & 0xffu;
    o |= (bits & 0x80000000u) | static_cast<uint32_t>(x == 255) |
         static_cast<uint32_t>((x == 0) & (bits != 0));
    low |= bits;
    lo = std::min(lo, bits == 0 ? 255u : x);
    hi = std::max(hi, x);
  }
  *odd = o, *low_bits = low, *emin = lo, *emax = hi;
}

bool FactorsMatch(const float* lut, const float* f, const float* g,
                  int64_t size, bool rounded) {
  for (int64_t i = 0; i < size; ++i) {
    const double fi = f[i];
    const float* row = lut + i * size;
    int bad = 0;  // no early exit inside a row
    if (rounded) {  // a float32 product, rounded once; normal entries only
      const float fs = f[i];
      for (int64_t j = 0; j < size; ++j) {
        bad |= (fs * g[j] != row[j]) | (row[j] < 0x1p-126f);
      }
    } else {
      for (int64_t j = 0; j < size; ++j) {
        bad |= fi * static_cast<double>(g[j]) != static_cast<double>(row[j]);
      }
    }
    if (bad) return false;
  }
  return true;
}

// The tabled operand's block, transformed: tab[k][c] = g[j(b[k, c])] *
// scale(b[k, c]) (a table of one row per k), columns ncols..NC-1 zero.
template <int NC>
void BuildSeparable(float* tab, const float* g, int m, const float* b,
                    int64_t bk, int64_t bc, int64_t kc, int64_t ncols,
                    int range, uint8_t* col_irregular) {
  alignas(64) uint16_t jb[NC];
  alignas(64) float sb[NC];
  for (int64_t kk = 0; kk < kc; ++kk) {
    PackCols<NC>(b + kk * bk, bk, bc, 1, ncols, m, range, jb, sb,
                 col_irregular);
    float* t = tab + kk * NC;
    for (int c = 0; c < NC; ++c) t[c] = g[jb[c]] * sb[c];
  }
}

// Rows held in registers by the separable sweep: about three quarters of
// the vector registers (32 with AVX-512, 16 otherwise) as accumulators.
template <int NC>
constexpr int SeparableRows() {
  constexpr int regs = APPROXJAX_VEC_BYTES == 64 ? 32 : 16;
  constexpr int per_row = NC / kLanes;
  return per_row * 2 > regs * 3 / 4 ? 1 : regs * 3 / 4 / per_row;
}

// A value the compiler cannot see through: a product passed through it is
// rounded on its own, never contracted into a fused multiply-add with the
// sum it is added to (the kernels build with -ffp-contract=fast).
inline Vec Opaque(Vec x) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+v"(x));
#elif defined(__aarch64__)
  __asm__("" : "+w"(x));
#else
  volatile Vec held = x;
  x = held;
#endif
  return x;
}

// cblk[r][c] += sum over k < kc of tab[k][c] * scale[r, k], in order of k:
// a plain GEMM microkernel with exact products (the compiler loads each
// table row once for all the rows held in registers), or with each product
// rounded first (kRounded).
template <int NC, bool kRounded>
void SeparableSweepAs(float* cblk, int64_t rows, const float* scale,
                      int64_t lr, int64_t lk, int64_t kc, const float* tab) {
  constexpr int kV = NC / kLanes;
  AccumulateAllRows<NC, SeparableRows<NC>()>(
      cblk, rows, kc, [=](int64_t r, int64_t kk, Vec* acc) {
        const Vec* row = reinterpret_cast<const Vec*>(tab + kk * NC);
        const float s = scale[r * lr + kk * lk];
        for (int v = 0; v < kV; ++v) {
          if constexpr (kRounded) {
            acc[v] += Opaque(row[v] * s);
          } else {
            acc[v] += row[v] * s;
          }
        }
      });
}

template <int NC>
void SeparableSweep(float* cblk, int64_t rows, const float* scale,
                    int64_t lr, int64_t lk, int64_t kc, const float* tab,
                    bool rounded) {
  (rounded ? SeparableSweepAs<NC, true> : SeparableSweepAs<NC, false>)(
      cblk, rows, scale, lr, lk, kc, tab);
}

// kLanes table entries rows[j[0..kLanes-1]] (one table row, any column),
// by explicit gathers: left to itself the compiler emulates them with
// scalar loads and inserts.
inline Vec GatherRow(const float* row, const uint16_t* j) {
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
  const __m512i v = _mm512_cvtepu16_epi32(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(j)));
  return reinterpret_cast<Vec>(_mm512_i32gather_ps(v, row, 4));
#elif defined(__AVX2__) && APPROXJAX_VEC_BYTES == 32
  const __m256i v = _mm256_cvtepu16_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(j)));
  return reinterpret_cast<Vec>(_mm256_i32gather_ps(row, v, 4));
#else
  Vec g;
  for (int l = 0; l < kLanes; ++l) g[l] = row[j[l]];
  return g;
#endif
}

// Separable LUTs (gemm_kernels.h): the streamed operand transformed,
// out[e] = scale[e] * f[idx[e]] for n packed elements (gathers: 10-20% of a
// separable GEMM at 1024^3 against the compiler's scalar emulation).
void ScaleRows(float* __restrict out, const float* __restrict scale,
               const uint16_t* __restrict idx, int64_t n,
               const float* __restrict f) {
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) {
    Vec s;
    std::memcpy(&s, scale + e, sizeof(s));
    const Vec r = s * GatherRow(f, idx + e);
    std::memcpy(out + e, &r, sizeof(r));
  }
  for (; e < n; ++e) out[e] = scale[e] * f[idx[e]];
}

// k of the tabled operand packed at a time by DirectSweep (on the stack).
constexpr int64_t kDirectDepth = 64;

template <int NC>
void DirectSweep(float* cblk, int64_t rows, const uint16_t* idx,
                 const float* scale, int64_t lr, int64_t lk, int64_t kc,
                 const float* lut_rows, int m, const float* b, int64_t bk,
                 int64_t bc, int64_t ncols, int range, uint8_t* col_irregular) {
  constexpr int kV = NC / kLanes;
  alignas(64) uint16_t jb[kDirectDepth * NC];
  alignas(64) float sb[kDirectDepth * NC];
  for (int64_t k0 = 0; k0 < kc; k0 += kDirectDepth) {
    const int64_t kn = std::min(kDirectDepth, kc - k0);
    PackCols<NC>(b + k0 * bk, bk, bc, kn, ncols, m, range, jb, sb,
                 col_irregular);
    const uint16_t* ik = idx + k0 * lk;
    const float* sk = scale + k0 * lk;
    const auto step = [&](int64_t r, int64_t kk, Vec* acc) {
      const int64_t at = r * lr + kk * lk;
      const float* row = lut_rows + (int64_t{ik[at]} << m);
      const float s = sk[at];
      const Vec* sbk = reinterpret_cast<const Vec*>(sb + kk * NC);
      for (int v = 0; v < kV; ++v) {
        acc[v] += GatherRow(row, jb + kk * NC + v * kLanes) * sbk[v] * s;
      }
    };
    AccumulateAllRows<NC, 4>(cblk, rows, kn, step);
  }
}

// Reduced and approximate accumulation (gemm_kernels.h, accumulate.h).
//
// Sums to a format of m <= 21 fraction bits, rounded nearest-even, toward or
// away from zero, are vectorised: the exact sum is rounded to odd at float32
// (an inexact float32 sum with an even last bit steps to its odd neighbour
// on the exact sum's side), then rounded to m bits by integer arithmetic on
// its bits: the correct rounding of the exact sum (float32's 24 bits hold m
// + 2). Where Accumulator::NearestSumsExact, the float32 sum rounded to
// nearest serves instead. A product is rounded to the product format the
// same way (it is exact). Formats with float32's exponent range, subnormals
// and IEEE overflow (bfloat16, tf32) round by the integer rule alone, their
// subnormals and overflow included; float16 (with AVX-512) by the
// conversion instructions; other formats' lanes outside their normal range
// (the subnormal quantum, overflow, inf, NaN) are done again lane by lane
// with AddRounded. A table's products are finite (irregular operands are
// recomputed apart), so a sum can only overflow to inf, and inf plus a
// product stays inf, as the scalar rule gives: accumulator lanes need no
// check in those formats (IEEE products of raw operands, which may be inf
// or NaN, keep it). Stochastic rounding and approximate adders are scalar.
// The accumulating sweeps' pieces are inlined into one loop per rule (GCC
// otherwise leaves some of the many instances as calls per vector).
#define APPROXJAX_INLINE inline __attribute__((always_inline))

// The lanes rounded to IEEE binary16, nearest-even (subnormals, overflow to
// inf), and back: by the conversion instructions (AVX-512F, F16C).
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
constexpr bool kHalfInstructions = true;
APPROXJAX_INLINE Vec HalfRounded(Vec s) {
  const __m512 r = _mm512_cvtph_ps(_mm512_cvtps_ph(
      reinterpret_cast<const __m512&>(s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return reinterpret_cast<const Vec&>(r);
}
#elif defined(__F16C__) && APPROXJAX_VEC_BYTES == 32
constexpr bool kHalfInstructions = true;
APPROXJAX_INLINE Vec HalfRounded(Vec s) {
  const __m256 r = _mm256_cvtph_ps(_mm256_cvtps_ph(
      reinterpret_cast<const __m256&>(s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return reinterpret_cast<const Vec&>(r);
}
#else
constexpr bool kHalfInstructions = false;
APPROXJAX_INLINE Vec HalfRounded(Vec s) { return s; }  // never called
#endif

// Two vectors of float32 sums rounded nearest-even to bfloat16 by one
// vcvtne2ps2bf16 (AVX-512 BF16) and widened back by two word permutes: a
// third of the instructions of the integer rule per vector. Inline assembly,
// not a target attribute: the variant runs on CPUs without the instruction,
// and the plan uses it only where the CPU has it. The instruction treats
// subnormal inputs as zero and flushes subnormal results: the plan keeps
// every sum normal or zero (Plan::bfloat16_pairs).
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
constexpr bool kBfloat16Pairs = true;
struct Bfloat16Widen {
  // Word 2i + 1 of the result (the upper half of float32 lane i) takes word
  // i (first) or 16 + i (second) of the packed pair; even words are zeroed.
  __m512i first = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0,
                                   7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
  __m512i second = _mm512_add_epi16(first, _mm512_set1_epi16(16));
};
APPROXJAX_INLINE void RoundBfloat16Pair(Vec* a, Vec* b, const Bfloat16Widen& w) {
  __m512i packed;  // words 0-15: *a rounded, 16-31: *b rounded
  asm("vcvtne2ps2bf16 %2, %1, %0"
      : "=v"(packed)
      : "v"(reinterpret_cast<const __m512&>(*b)), "v"(reinterpret_cast<const __m512&>(*a)));
  constexpr __mmask32 kUpperWords = 0xAAAAAAAAu;
  *a = (Vec)_mm512_maskz_permutexvar_epi16(kUpperWords, w.first, packed);
  *b = (Vec)_mm512_maskz_permutexvar_epi16(kUpperWords, w.second, packed);
}
#else
constexpr bool kBfloat16Pairs = false;
struct Bfloat16Widen {};
APPROXJAX_INLINE void RoundBfloat16Pair(Vec*, Vec*, const Bfloat16Widen&) {}  // never called
#endif

struct RoundingConsts {
  uint32_t low, min_normal, max;
  float magic;  // 1.5 * 2**(emin - m + 23): s + magic - magic rounds s at the
                // subnormal quantum 2**(emin - m), nearest-even
  int mode;
  bool subnormals;
  // Narrow exponent ranges (float16, FP8) see subnormal sums often: their
  // subnormal quantum is computed for every lane, without a branch; wide
  // ones (bfloat16, tf32) almost never: such a lane goes to the scalar rule.
  bool vector_subnormals;
  int low_bits;  // 23 - m: the bits below the format's last
  // IEEE binary16 rounded nearest-even (AVX-512: by vcvtps2ph/vcvtph2ps,
  // subnormals included).
  bool half;
  // float32's exponent range with subnormals, its largest finite value
  // 2**127 (2 - 2**-m), and overflow to inf (but toward zero): the integer
  // rule is exact everywhere, subnormals and overflow included.
  bool wide;
  // Whether overflow, inf and NaN lanes are flagged even in formats that
  // need no check (products: their format may turn overflow into NaN).
  bool checked;
  bool active;
  RoundingConsts(const FormatSpec& f, bool on, bool check)
      : low(f.m >= 23 ? 0u : (1u << (23 - f.m)) - 1u),
        min_normal(FloatBits(std::ldexp(1.0f, f.emin))),
        max(FloatBits(f.max)),
        magic(std::ldexp(1.5f, f.emin - f.m + 23)),
        mode(f.rounding),
        subnormals(f.subnormals),
        vector_subnormals(f.rounding == kNearestEven && f.emin > -100),
        low_bits(f.m >= 23 ? 0 : 23 - f.m),
        half(kHalfInstructions && f.m == 10 && f.emin == -14 && f.max == 65504.0f &&
             f.subnormals && f.rounding == kNearestEven && f.overflow == 0 &&
             f.has_inf),
        wide(f.emin == -126 && f.subnormals && f.has_inf &&
             (f.overflow == 0 || f.rounding == kTowardZero) &&
             f.max == std::ldexp(2.0f - std::ldexp(1.0f, -f.m), 127)),
        checked(check),
        active(on) {}
};

// Float32 bits rounded nearest-even at the format's last fraction bit (c.low
// the bits below it, at least one; a carry steps into the next binade).
APPROXJAX_INLINE VecU NearestEvenBits(VecU b, const RoundingConsts& c) {
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
  // b + half where the last kept bit is odd, else b + half - 1, truncated.
  __m512i v;
  std::memcpy(&v, &b, sizeof(v));
  const __m512i half = _mm512_set1_epi32(static_cast<int>((c.low >> 1) + 1));
  const __mmask16 odd = _mm512_test_epi32_mask(v, _mm512_set1_epi32(static_cast<int>(c.low + 1)));
  const __m512i up = _mm512_mask_add_epi32(
      _mm512_add_epi32(v, _mm512_set1_epi32(static_cast<int>(c.low >> 1))), odd, v, half);
  const __m512i r = _mm512_andnot_si512(_mm512_set1_epi32(static_cast<int>(c.low)), up);
  std::memcpy(&b, &r, sizeof(b));
  return b;
#else
  return (b + (c.low >> 1) + ((b >> c.low_bits) & 1u)) & ~c.low;
#endif
}

// The lanes of s rounded at the format's precision by its mode (s exact, or
// rounded to odd); `bad` gets the lanes this cannot do: overflow, inf, NaN,
// and (but nearest-even) the subnormal range.
APPROXJAX_INLINE Vec RoundLanes(Vec s, const RoundingConsts& c, VecI* bad) {
  VecU b;
  std::memcpy(&b, &s, sizeof(b));
  const VecU mag = b & 0x7fffffffu;
  if (c.half) {  // the same bits as below, by the conversion instructions
    if (c.checked) *bad |= mag > c.max;
    return HalfRounded(s);
  }
  VecU r;
  if (c.mode == kTowardZero) {
    r = b & ~c.low;
  } else if (c.mode == kAwayFromZero) {
    r = (b + c.low) & ~c.low;
  } else {  // nearest-even (23 fraction bits: nothing to round)
    r = c.low == 0 ? b : NearestEvenBits(b, c);
  }
  if (c.wide) {  // overflow toward or away from zero: the scalar rule
    if (c.checked || c.mode != kNearestEven) *bad |= mag > c.max;
    Vec v;
    std::memcpy(&v, &r, sizeof(v));
    return v;
  }
  const VecI tiny = (mag < c.min_normal) & (mag != 0u);  // zeros round as normals
  if (c.vector_subnormals) {
    *bad |= mag > c.max;
    // The subnormal range: a fixed quantum, rounded by float addition (its
    // sign kept for a zero), flushed where the format keeps no subnormals.
    const Vec sub = (s + c.magic) - c.magic;
    VecU sb;
    std::memcpy(&sb, &sub, sizeof(sb));
    sb = (sb & 0x7fffffffu) | (b & 0x80000000u);
    if (!c.subnormals) {
      sb = ((sb & 0x7fffffffu) < c.min_normal) ? (b & 0x80000000u) : sb;
    }
    r = tiny ? sb : r;
  } else {
    *bad |= (mag > c.max) | tiny;
  }
  Vec v;
  std::memcpy(&v, &r, sizeof(v));
  return v;
}

#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
// Of a sum rounded down and up (embedded rounding), the one rounded to odd:
// they are equal where the sum is exact, else neighbours of which one is odd.
APPROXJAX_INLINE Vec OddOf(__m512 down, __m512 up) {
  const __mmask16 odd =
      _mm512_test_epi32_mask(_mm512_castps_si512(down), _mm512_set1_epi32(1));
  const __m512 r = _mm512_mask_blend_ps(odd, up, down);
  return reinterpret_cast<const Vec&>(r);
}
#endif

// sum + p rounded to odd at float32 precision (exact where it is exact).
// With AVX-512: the sum rounded down and up (OddOf). Otherwise TwoSum gives
// the error and an even inexact sum steps outward.
APPROXJAX_INLINE Vec SumToOddLanes(Vec sum, Vec p) {
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
  const __m512 a = reinterpret_cast<const __m512&>(sum);
  const __m512 b = reinterpret_cast<const __m512&>(p);
  return OddOf(_mm512_add_round_ps(a, b, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
               _mm512_add_round_ps(a, b, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
#else
  const Vec s = sum + p;
  const Vec bb = s - sum;
  const Vec err = (sum - (s - bb)) + (p - bb);
  VecU b;
  std::memcpy(&b, &s, sizeof(b));
  // (An infinite s has a NaN err: it stays, as the scalar rule keeps it.)
  const VecI inexact = ((err > 0.0f) | (err < 0.0f)) & ((b & 1u) == 0u);
  // +1 (a larger magnitude) where the exact sum lies beyond s, else -1.
  const VecI beyond = (err > 0.0f) == (s > 0.0f);
  const VecU step = ~reinterpret_cast<const VecU&>(beyond) | 1u;
  b += step & reinterpret_cast<const VecU&>(inexact);
  Vec out;
  std::memcpy(&out, &b, sizeof(out));
  return out;
#endif
}

// An exact product kept as its two factors (Accumulator::products_exact),
// so that the sum it is added to is formed by one fused multiply-add.
struct ExactProduct {
  Vec x, y;
};

APPROXJAX_INLINE Vec ProductValue(Vec p) { return p; }
APPROXJAX_INLINE Vec ProductValue(const ExactProduct& p) { return p.x * p.y; }

// sum + p rounded to nearest at float32 precision (an exact product fused).
APPROXJAX_INLINE Vec NearestSum(Vec sum, Vec p) { return sum + p; }
APPROXJAX_INLINE Vec NearestSum(Vec sum, const ExactProduct& p) { return p.x * p.y + sum; }

// sum + x * y (exact) rounded to odd at float32 precision: SumToOddLanes
// with the product fused into the additions rounded down and up (AVX-512).
APPROXJAX_INLINE Vec SumToOddLanes(Vec sum, const ExactProduct& p) {
#if defined(__AVX512F__) && APPROXJAX_VEC_BYTES == 64
  const __m512 a = reinterpret_cast<const __m512&>(p.x);
  const __m512 b = reinterpret_cast<const __m512&>(p.y);
  const __m512 c = reinterpret_cast<const __m512&>(sum);
  return OddOf(_mm512_fmadd_round_ps(a, b, c, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
               _mm512_fmadd_round_ps(a, b, c, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
#else
  return SumToOddLanes(sum, p.x * p.y);
#endif
}

// The lower-part-OR adder's sums of the lanes (LoaSum, then rounded to the
// format as AddRounded rounds them; c the accumulator's constants, m its
// fraction bits): both significands aligned to the larger exponent's quantum
// at m fraction bits, the `bits` low bits ORed where the signs agree, else
// the difference; a zero lane gives the other operand. The aligned sum
// (at most m + 2 bits) becomes a float by one conversion (nearest-even,
// which is the rounding of float32 sums) and is scaled by the quantum, an
// exact power of two; narrower formats then round it by RoundLanes. `bad`
// gets the lanes this does not do: inf, NaN, subnormal operands, a quantum
// below the normal range (or, for a format with a narrow exponent range,
// operands below its least normal), and what RoundLanes refuses.
APPROXJAX_INLINE Vec LoaLanes(Vec x, Vec y, const RoundingConsts& c, int m, int bits,
                              VecI* bad) {
  VecU bx, by;
  std::memcpy(&bx, &x, sizeof(bx));
  std::memcpy(&by, &y, sizeof(by));
  const VecU ex = (bx >> 23) & 0xffu, ey = (by >> 23) & 0xffu;
  const VecI zx = (bx & 0x7fffffffu) == 0u, zy = (by & 0x7fffffffu) == 0u;
  const VecU emax = ex > ey ? ex : ey;
  // The least biased exponent whose quantum 2**(e - 127 - m) is a normal
  // float32 and which is at least the format's least normal.
  const uint32_t least = std::max(static_cast<uint32_t>(1 + m), c.min_normal >> 23);
  *bad |= (ex == 255u) | (ey == 255u) | ((ex == 0u) & ~zx) | ((ey == 0u) & ~zy) |
          (~zx & ~zy & (emax < least));
  const uint32_t drop = static_cast<uint32_t>(23 - m);
  const VecU sx = emax - ex + drop, sy = emax - ey + drop;
  const VecU ax = ((bx & 0x7fffffu) | 0x800000u) >> (sx < 31u ? sx : 31u);
  const VecU ay = ((by & 0x7fffffu) | 0x800000u) >> (sy < 31u ? sy : 31u);
  const VecI same = ((bx ^ by) & 0x80000000u) == 0u;
  const uint32_t low = (1u << bits) - 1u;
  const VecU ored = (((ax >> bits) + (ay >> bits)) << bits) | ((ax | ay) & low);
  const VecI x_larger = ax >= ay;
  const VecU mag = same ? ored : x_larger ? ax - ay : ay - ax;
  const VecU sign = (same | x_larger ? bx : by) & 0x80000000u;
  const VecU quantum_bits = (emax - static_cast<uint32_t>(m)) << 23;
  Vec quantum;
  std::memcpy(&quantum, &quantum_bits, sizeof(quantum));
  Vec r = __builtin_convertvector((VecI)mag, Vec) * quantum;  // mag < 2**26
  VecU rb;
  std::memcpy(&rb, &r, sizeof(rb));
  rb |= mag == 0u ? 0u : sign;  // an exact cancellation is +0
  std::memcpy(&r, &rb, sizeof(r));
  r = zy ? (zx ? x + y : x) : (zx ? y : r);
  return m < 23 ? RoundLanes(r, c, bad) : r;
}

// How an accumulating sweep forms and rounds each sum, fixed per call so
// that its inner loop has no branch: the float32 sum rounded to nearest or
// to odd (kNearest: Accumulator::NearestSumsExact), then rounded to the
// format by the rule for any format (kAny: RoundLanes, with its checks), or
// by the integer rule of a wide format (kWide, nearest-even) or the
// conversion instructions of float16 (kHalf) or of bfloat16, two vectors at
// a time (kBfloat16Pairs: Plan::bfloat16_pairs), which check no lane (the
// integer rule checks lanes where the products may be inf or NaN, which it
// could turn into inf: kChecked, RoundingConsts::checked; the conversions
// round inf, NaN and overflow as the scalar rule does), or the
// lower-part-OR adder's (kLoa: LoaLanes); products rounded to a product
// format or not (kProduct).
enum class SumRule { kAny, kWide, kHalf, kBfloat16Pairs, kLoa };

template <SumRule kRule, bool kChecked>
APPROXJAX_INLINE Vec RoundSum(Vec s, const RoundingConsts& c, VecI* bad) {
  if constexpr (kRule == SumRule::kWide) {  // (wide formats have m <= 21)
    VecU b;
    std::memcpy(&b, &s, sizeof(b));
    if constexpr (kChecked) *bad |= (b & 0x7fffffffu) > c.max;  // overflow, inf, NaN
    b = NearestEvenBits(b, c);
    Vec v;
    std::memcpy(&v, &b, sizeof(v));
    return v;
  }
  if constexpr (kRule == SumRule::kHalf) return HalfRounded(s);
  return RoundLanes(s, c, bad);
}

// R rows of an accumulating sweep (rows NC floats apart in out): kc steps of
// NC columns; step(q, kk, v) gives the products of row q, step kk, vector v,
// and exact(q, kk, c) one product. The vectorised path runs without
// branching, R rows at a time (independent chains for the pipeline); if a
// lane left the range it handles anywhere, the rows are done again lane by
// lane from their first sums (AddRounded, the scalar rule), which is rare.
template <int NC, int R, bool kNearest, SumRule kRule, bool kChecked,
          bool kProduct, typename Step, typename Exact>
APPROXJAX_INLINE void AccumulateRows(float* out, int64_t r0, int64_t kc,
                           const Accumulator& a, const RoundingConsts& pc,
                           const RoundingConsts& ac, const TileCoords& at,
                           Step step, Exact exact) {
  constexpr int kV = NC / kLanes;
  if (kRule == SumRule::kLoa || a.FastPath()) {
    Vec acc[R][kV];
    std::memcpy(acc, out, sizeof(acc));
    VecI bad = {};
    [[maybe_unused]] const Bfloat16Widen widen;
    // The float32 sum, rounded to nearest or to odd (a product given by
    // its factors fused into it).
    const auto add = [](Vec sum, const auto& p) __attribute__((always_inline)) {
      return kNearest ? NearestSum(sum, p) : SumToOddLanes(sum, p);
    };
    for (int64_t kk = 0; kk < kc; ++kk) {
      for (int q = 0; q < R; ++q) {
        if constexpr (kRule == SumRule::kBfloat16Pairs) {
          for (int v = 0; v < kV; v += 2) {
            Vec s0 = add(acc[q][v], step(q, kk, v));
            Vec s1 = add(acc[q][v + 1], step(q, kk, v + 1));
            RoundBfloat16Pair(&s0, &s1, widen);
            acc[q][v] = s0;
            acc[q][v + 1] = s1;
          }
          continue;
        }
        for (int v = 0; v < kV; ++v) {
          if constexpr (kProduct || kRule == SumRule::kLoa) {
            Vec p = ProductValue(step(q, kk, v));
            if constexpr (kProduct) p = RoundLanes(p, pc, &bad);
            if constexpr (kRule == SumRule::kLoa) {
              acc[q][v] = LoaLanes(acc[q][v], p, ac, a.acc.m, a.loa_bits, &bad);
            } else {
              acc[q][v] = RoundSum<kRule, kChecked>(add(acc[q][v], p), ac, &bad);
            }
            continue;
          }
          acc[q][v] = RoundSum<kRule, kChecked>(add(acc[q][v], step(q, kk, v)), ac, &bad);
        }
      }
    }
    if (!AnyLane(bad)) {
      std::memcpy(out, acc, sizeof(acc));
      return;
    }
  }
  for (int q = 0; q < R; ++q) {
    float* row = out + q * NC;
    for (int64_t kk = 0; kk < kc; ++kk) {
      for (int c = 0; c < NC; ++c) {
        uint32_t rp = 0, rs = 0;
        if (a.Stochastic()) {
          const int64_t i = at.I(r0 + q, c), n = at.N(r0 + q, c), k = at.k0 + kk;
          rp = RandomBits(a.seed ^ 0x5bd1e995u, at.g, i, n, k);
          rs = RandomBits(a.seed, at.g, i, n, k);
        }
        row[c] = AddRounded(row[c], RoundProduct(exact(q, kk, c), a, rp), a, rs);
      }
    }
  }
}

// AccumulateRows over all rows, two at a time (then one), by given rules.
template <int NC, bool kNearest, SumRule kRule, bool kChecked, bool kProduct,
          typename Step, typename Exact>
inline void AccumulateAllAs(float* cblk, int64_t rows, int64_t kc,
                            const Accumulator& a, const RoundingConsts& pc,
                            const RoundingConsts& ac, const TileCoords& at,
                            Step& step, Exact& exact) {
  // (Pairs are quicker but longer chains: four rows hide their latency.)
  constexpr int kR = kRule == SumRule::kBfloat16Pairs ? 4 : 2;
  int64_t r = 0;
  for (; r + kR <= rows; r += kR) {
    AccumulateRows<NC, kR, kNearest, kRule, kChecked, kProduct>(
        cblk + r * NC, r, kc, a, pc, ac, at,
        [&](int q, int64_t kk, int v) __attribute__((always_inline)) {
          return step(r + q, kk, v);
        },
        [&](int q, int64_t kk, int c) { return exact(r + q, kk, c); });
  }
  for (; r < rows; ++r) {
    AccumulateRows<NC, 1, kNearest, kRule, kChecked, kProduct>(
        cblk + r * NC, r, kc, a, pc, ac, at,
        [&](int, int64_t kk, int v) __attribute__((always_inline)) {
          return step(r, kk, v);
        },
        [&](int, int64_t kk, int c) { return exact(r, kk, c); });
  }
}

// AccumulateAllAs with the rules this accumulator allows.
template <int NC, typename Step, typename Exact>
inline void AccumulateAll(float* cblk, int64_t rows, int64_t kc,
                          const Accumulator& a, const TileCoords& at, Step step,
                          Exact exact) {
  // IEEE products of raw operands may be inf or NaN (no regular range):
  // their sums keep the checks where the integer rule rounds them (kWide)
  // and in the general rule (RoundLanes).
  const RoundingConsts pc(a.prod, a.round_product, true);
  const RoundingConsts ac(a.acc, true, a.exact_product);
  const auto run = [&](auto nearest, auto rule, auto checked, auto product) {
    AccumulateAllAs<NC, decltype(nearest)::value, decltype(rule)::value,
                    decltype(checked)::value, decltype(product)::value>(
        cblk, rows, kc, a, pc, ac, at, step, exact);
  };
  const auto by_check = [&](auto nearest, auto rule) {
    if (ac.checked && decltype(rule)::value == SumRule::kWide) {
      run(nearest, rule, std::true_type{}, std::false_type{});
    } else {
      run(nearest, rule, std::false_type{}, std::false_type{});
    }
  };
  const auto by_sum = [&](auto rule) {
    if (a.NearestSumsExact()) {
      by_check(std::true_type{}, rule);
    } else {
      by_check(std::false_type{}, rule);
    }
  };
  using Any = std::integral_constant<SumRule, SumRule::kAny>;
  if (a.adder == 1) {  // LOA: vectorised where the format's rounding is
    const bool stochastic = a.Stochastic();
    const bool rounds = a.acc.m <= 21 || a.acc.IsFloat32NearestEven();
    if (!stochastic && rounds) {
      using Loa = std::integral_constant<SumRule, SumRule::kLoa>;
      if (a.round_product) {
        run(std::false_type{}, Loa{}, std::true_type{}, std::true_type{});
      } else {
        run(std::false_type{}, Loa{}, std::true_type{}, std::false_type{});
      }
      return;
    }
  }
  if (a.round_product) {
    run(std::false_type{}, Any{}, std::true_type{}, std::true_type{});
  } else if (ac.half) {
    by_sum(std::integral_constant<SumRule, SumRule::kHalf>{});
  } else if (ac.wide && ac.mode == kNearestEven) {
    if constexpr (kBfloat16Pairs && NC / kLanes % 2 == 0) {
      if (a.bfloat16_pairs) {
        by_sum(std::integral_constant<SumRule, SumRule::kBfloat16Pairs>{});
        return;
      }
    }
    by_sum(std::integral_constant<SumRule, SumRule::kWide>{});
  } else {
    by_sum(Any{});
  }
}

template <int NC>
void AccumulateTableSweep(float* cblk, int64_t rows, const uint16_t* idx,
                          const float* scale, int64_t lr, int64_t lk,
                          int64_t kc, const float* tab, int m,
                          const Accumulator& a, const TileCoords& at) {
  const int64_t stride = (int64_t{1} << m) * NC;
  const auto entry = [&](int64_t r, int64_t kk) __attribute__((always_inline)) {
    return tab + kk * stride + int64_t{idx[r * lr + kk * lk]} * NC;
  };
  AccumulateAll<NC>(
      cblk, rows, kc, a, at,
      [&](int64_t r, int64_t kk, int v) __attribute__((always_inline)) {
        Vec t;
        std::memcpy(&t, entry(r, kk) + v * kLanes, sizeof(t));
        return t * scale[r * lr + kk * lk];
      },
      [&](int64_t r, int64_t kk, int c) { return entry(r, kk)[c] * scale[r * lr + kk * lk]; });
}

template <int NC>
void AccumulateCompactSweep(float* cblk, int64_t rows, const uint16_t* idx,
                            const float* scale, int64_t lr, int64_t lk,
                            int64_t kc, const uint32_t* tab, int m,
                            const Accumulator& a, const TileCoords& at) {
  const int64_t stride = (int64_t{1} << m) * (NC / 2);
  const auto entry = [&](int64_t r, int64_t kk) __attribute__((always_inline)) {
    return tab + kk * stride + int64_t{idx[r * lr + kk * lk]} * (NC / 2);
  };
  // Vector v holds the lower (v even) or upper halves of word vector v / 2.
  AccumulateAll<NC>(
      cblk, rows, kc, a, at,
      [&](int64_t r, int64_t kk, int v) __attribute__((always_inline)) {
        VecU w;
        std::memcpy(&w, entry(r, kk) + v / 2 * kLanes, sizeof(w));
        return (Vec)(v % 2 == 0 ? w << 16 : w & 0xffff0000u) * scale[r * lr + kk * lk];
      },
      [&](int64_t r, int64_t kk, int c) {
        const int q = c / (2 * kLanes), half = c / kLanes % 2, lane = c % kLanes;
        const uint32_t w = entry(r, kk)[q * kLanes + lane];
        return BitsFloat(half == 0 ? w << 16 : w & 0xffff0000u) * scale[r * lr + kk * lk];
      });
}

// Products of separable factors or raw operands: where every product is
// exact in float32 (Accumulator::products_exact) they are passed as their
// factors, fused with the sum they are added to (the same bits, one
// instruction fewer), else each is rounded on its own.
template <int NC>
void AccumulateScaledSweep(float* cblk, int64_t rows, const float* a_vals,
                           int64_t lr, int64_t lk, int64_t kc, const float* tab,
                           const Accumulator& a, const TileCoords& at) {
  const auto row = [&](int64_t kk, int v) __attribute__((always_inline)) {
    Vec t;
    std::memcpy(&t, tab + kk * NC + v * kLanes, sizeof(t));
    return t;
  };
  const auto exact = [&](int64_t r, int64_t kk, int c) {
    return tab[kk * NC + c] * a_vals[r * lr + kk * lk];
  };
  if (a.products_exact) {
    AccumulateAll<NC>(
        cblk, rows, kc, a, at,
        [&](int64_t r, int64_t kk, int v) __attribute__((always_inline)) {
          return ExactProduct{row(kk, v), Vec{} + a_vals[r * lr + kk * lk]};
        },
        exact);
  } else {
    AccumulateAll<NC>(
        cblk, rows, kc, a, at,
        [&](int64_t r, int64_t kk, int v) __attribute__((always_inline)) {
          return Opaque(row(kk, v) * a_vals[r * lr + kk * lk]);
        },
        exact);
  }
}

#if defined(__AVX512BW__) && APPROXJAX_VEC_BYTES == 64
constexpr auto kBuildCompactPlanesWide = BuildCompactPlanes<kWideCols>;
constexpr auto kBuildCompactCodesWide = BuildCompactCodes<kWideCols>;
#else
constexpr decltype(BlockKernels::build_compact_planes)
    kBuildCompactPlanesWide = nullptr;
constexpr decltype(BlockKernels::build_compact_codes) kBuildCompactCodesWide =
    nullptr;
#endif

}  // namespace

const KernelTable& APPROXJAX_CAT(Kernels, APPROXJAX_VARIANT)() {
  static const KernelTable table = {
      APPROXJAX_STR(APPROXJAX_VARIANT),
      kBfloat16Pairs,
      PackRows,
      ScaleRows,
      ScanLut,
      FactorsMatch,
      {BuildTable<kNarrowCols>, TableSweep<kNarrowCols>, nullptr, nullptr,
       DirectSweep<kNarrowCols>, nullptr, nullptr, BuildSeparable<kNarrowCols>,
       SeparableSweep<kNarrowCols>, AccumulateTableSweep<kNarrowCols>,
       nullptr, AccumulateScaledSweep<kNarrowCols>},
      {BuildTable<kWideCols>, TableSweep<kWideCols>,
       BuildCompactTable<kWideCols>, CompactSweep<kWideCols>,
       DirectSweep<kWideCols>, kBuildCompactPlanesWide, kBuildCompactCodesWide,
       BuildSeparable<kWideCols>, SeparableSweep<kWideCols>,
       AccumulateTableSweep<kWideCols>, AccumulateCompactSweep<kWideCols>,
       AccumulateScaledSweep<kWideCols>},
  };
  return table;
}

}  // namespace approxjax

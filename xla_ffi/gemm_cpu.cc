// CPU approximate batched GEMM: the XLA FFI handler, the blocking and the
// threading. The inner loops live in gemm_kernels.cc (one object per
// instruction set); the bit-level multiply in approx_multiply.h.
//
// Design:
//   * One operand is "streamed" (a tile of its rows is packed into table index
//     and exact scale), the other is "tabled": for a block of NC of its
//     columns and a few k, the per-tile table
//     tab[k][v][c] = lut[v, j(b[k, c])] * scale(b[k, c]) turns the inner loop
//     into plain FMA streams over contiguous rows of the table. A cost model
//     picks which operand is streamed and NC (64, or 16 for narrow outputs).
//   * Separable LUTs, lut[i, j] == f[i] * g[j] exactly (truncated(m): the
//     products of the operands' truncated significands), need no tables: a
//     product is exactly (f[i] * scale(a)) * (g[j] * scale(b)), so the
//     kernel transforms both operands and runs a GEMM microkernel with
//     exact products in order of k (the same bits).
//   * Outputs with few rows and columns (weight gradients of small layers)
//     would rebuild a table for every few products: there the kernel gathers
//     each product from the LUT instead (direct_sweep), for m <= 8.
//   * Packing is fused into each tile (nothing operand-sized is allocated);
//     the tiles of a stack of multipliers that share operands are computed
//     together, so they share the packing of the streamed operand.
//   * Every output is the sum of its products in order of k, starting from
//     -0.0 (so a single product keeps its sign of zero), in blocks of
//     kSumBlock k whose sums are then added in order; products are exact, so
//     FMA or not, every instruction set gives the same bits. When the output
//     is too small to keep every thread busy, the blocks of a long
//     contraction run on different threads and are added in order at the end.
//   * Operands outside the "regular" exponent range (inf, NaN, extreme
//     exponents) mark their row or column; those outputs are recomputed with
//     ApproxMultiply itself, in the same order of k.
#include "gemm_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "approx_multiply.h"
#include "gemm_kernels.h"
#include "shapes.h"

namespace ffi = xla::ffi;

namespace approxjax {
namespace {

// Budgets measured on a 2-core Zen machine (benchmarks/RESULTS.md): an
// L2-sized table (fewer passes over the output block) beat an L1-sized one.
constexpr int64_t kTableFloats = 64 * 1024;  // 256 KiB of per-tile table
constexpr int64_t kBlockRows = 1024;         // rows of an output tile
constexpr int64_t kPackDepth = 128;         // k of the streamed tile packed at once
constexpr int64_t kTileFloats = 128 * 1024;  // output tiles of one unit
constexpr int64_t kMaxPartialFloats = 1 << 22;  // 16 MiB of block partials
constexpr int64_t kMaxPrepackBytes = int64_t{1} << 30;  // see Prepack
constexpr int64_t kMaxPrescaledBytes = int64_t{1} << 28;
constexpr double kDirectCost = 4.7;  // a gathered product, in wide-sweep MACs
constexpr int kMaxDirectBits = 8;    // gathers only from tables <= 256 KiB

struct AlignedDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using AlignedArray = std::unique_ptr<T[], AlignedDeleter>;

template <typename T>
AlignedArray<T> AllocateAligned(int64_t n) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return AlignedArray<T>(static_cast<T*>(p));
}

// Large per-call buffers (the prepacked operand), kept between calls up to
// kCachedBytes in all: allocated anew on every call, tens of MiB cost a page
// fault per 4 KiB page on every call (a quarter of the time of a stack of
// eight 1024^3 GEMMs).
constexpr int64_t kCachedBytes = int64_t{128} << 20;

class BlockCache {
 public:
  // A block of at least `bytes` (64-byte aligned): a kept one, or new.
  static AlignedArray<char> Take(int64_t bytes, int64_t* size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = blocks_.end();
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        if (it->first >= bytes &&
            (best == blocks_.end() || it->first < best->first)) {
          best = it;
        }
      }
      if (best != blocks_.end()) {
        *size = best->first;
        AlignedArray<char> block = std::move(best->second);
        kept_ -= best->first;
        blocks_.erase(best);
        return block;
      }
    }
    *size = bytes;
    return AllocateAligned<char>(bytes);
  }
  // Keeps a block for later calls (dropping the oldest beyond kCachedBytes).
  static void Give(AlignedArray<char> block, int64_t size) {
    if (size > kCachedBytes) return;
    std::lock_guard<std::mutex> lock(mutex_);
    blocks_.emplace_back(size, std::move(block));
    kept_ += size;
    while (kept_ > kCachedBytes) {
      kept_ -= blocks_.front().first;
      blocks_.erase(blocks_.begin());
    }
  }

 private:
  static inline std::mutex mutex_;
  static inline std::vector<std::pair<int64_t, AlignedArray<char>>> blocks_;
  static inline int64_t kept_ = 0;
};

// A block from BlockCache, given back when the call's problem is freed.
struct CachedBlock {
  AlignedArray<char> data;
  int64_t size = 0;
  CachedBlock() = default;
  CachedBlock(const CachedBlock&) = delete;
  CachedBlock& operator=(const CachedBlock&) = delete;
  void Release() {
    if (data) BlockCache::Give(std::move(data), size);
  }
  ~CachedBlock() { Release(); }
};

// n elements of `store` from a 64-byte boundary (resized to hold them).
template <typename T>
T* Aligned64(std::vector<T>& store, int64_t n) {
  store.resize(n + 64 / sizeof(T));
  const uintptr_t at = reinterpret_cast<uintptr_t>(store.data());
  return store.data() + (64 - at % 64) % 64 / sizeof(T);
}

// Output batch elements that read the same operand matrices (and differ only
// in their table): computed together so they share packing.
struct Group {
  int64_t oa, ob;
  std::vector<std::pair<int64_t, int64_t>> members;  // (batch index, lut offset)
};

// How the output is cut into units of work for one layout (see ChooseLayout).
struct Tiling {
  int64_t row_chunk, row_chunks;     // rows of the streamed side per unit
  int64_t group_size, member_chunks;  // multipliers per unit
  int64_t col_blocks;
  int64_t split;  // 1, or sum_blocks when blocks run as separate units
  int64_t Units(int64_t groups) const {
    return groups * member_chunks * col_blocks * row_chunks * split;
  }
};

// Columns [k, k + len) of every patch: contiguous in the input from its
// row's base plus off (consecutive taps merge where their channels abut).
struct PatchRun {
  int64_t k, off, len;
};

// The whole problem after validation, shared by every worker; its Tiling is
// the chosen layout's.
struct Problem : Tiling {
  const float* lhs;
  const float* rhs;
  const float* lut;
  float* out;
  int64_t m_rows, n_cols, depth;  // M, N, K
  int m;                          // mantissa bits
  int range;                      // regular exponent range
  bool transpose_lhs, transpose_rhs;
  bool swap;    // stream rhs^T and table lhs^T
  bool direct;  // gather products (direct_sweep) instead of per-tile tables
  bool compact_ok;  // wide tables may be compact (CompactTablesAllowed)
  bool compact;     // compact per-tile tables (build_compact, compact_sweep)
  // Separable LUTs, lut[i, j] == f[i] * g[j] exactly (FindSeparable): GEMMs
  // of the transformed operands (build_separable, separable_sweep). f and g
  // of LUT matrix t at t * 2**m, indexed by the lhs's and the rhs's index.
  bool separable = false;
  bool rounded = false;  // lut[i, j] == float32(f[i] * g[j]) instead
  std::vector<float> sep_f, sep_g;
  int nc;       // column block width: kWideCols or kNarrowCols
  std::vector<int64_t> out_lead;
  Operand a, b, l;
  int64_t batch;  // product of out_lead
  std::vector<Group> groups;
  int64_t lhs_matrix;  // elements of one lhs matrix (or one conv input)
  // Implicit im2col (approxjax_conv_gemm): patch row r, column k is element
  // RowBase(r) + tap_off[k / C] + k % C of the padded input; the lhs is the
  // patches, or their transpose (the weight gradient) with transpose_lhs.
  bool conv = false;
  ConvShape geometry;
  std::vector<PatchRun> runs;  // the patch, as runs contiguous in the input

  // Streamed side (rows R) and tabled side (cols C), both of depth K.
  int64_t rows, cols;
  int64_t s_rs, s_ks, t_ks, t_cs;  // element strides
  std::vector<float> lut_t;        // transposed tables (when swap == direct)
  // PackPlanes of each table, 64-byte aligned (plane builds), or nullptr.
  std::vector<uint16_t> plane_store;
  uint16_t* planes = nullptr;
  // PackCodes of each table (code builds), 64-byte aligned, and each
  // table's base (-1: none, planes instead); codes is nullptr where none.
  std::vector<uint8_t> code_store;
  uint8_t* codes = nullptr;
  std::vector<int> code_base;

  int64_t units;
  int64_t sum_blocks;          // ceil(depth / kSumBlock)
  float* partials = nullptr;  // [split][batch][M][N] when split > 1
  int64_t kc;  // k of one per-tile table
  int64_t kp;  // k packed at a time: a multiple of kc
  // The streamed operand packed once, before the units, where its tiles
  // would otherwise be packed again for every column block (Prepack): the
  // tile of group gi, row chunk rc and k from kp0 at PackedAt(gi, rc, kp0)
  // of pre_idx and pre_scale, or (prescaled, separable LUTs) transformed for
  // member q of the group at PackedAt(gi * scaled_members + q, rc, kp0) of
  // pre_scaled; its rows' irregular flags at IrregularAt(gi, rc, tile).
  bool prepacked = false, prescaled = false;
  int64_t tiles_per_block = 0, pack_units = 0, scaled_members = 1;
  CachedBlock pre_block;  // holds the four below
  uint16_t* pre_idx = nullptr;
  float *pre_scale = nullptr, *pre_scaled = nullptr;
  uint8_t* pre_irregular = nullptr;
  int64_t PackedAt(int64_t slot, int64_t rc, int64_t kp0) const {
    return ((slot * row_chunks + rc) * depth + kp0) * row_chunk;
  }
  int64_t IrregularAt(int64_t gi, int64_t rc, int64_t tile) const {
    return ((gi * row_chunks + rc) * sum_blocks * tiles_per_block + tile) *
           row_chunk;
  }
  const KernelTable* kernels;
  const BlockKernels* block;

  int64_t RowBase(int64_t i) const {
    const ConvShape& g = geometry;
    int64_t q = i % g.pixels, off = i / g.pixels * g.image;
    for (int d = static_cast<int>(g.out_dims.size()) - 1; d >= 0; --d) {
      off += q % g.out_dims[d] * g.row_step[d];
      q /= g.out_dims[d];
    }
    return off;
  }
  float Lhs(int64_t oa, int64_t i, int64_t k) const {
    const float* base = lhs + oa * lhs_matrix;
    if (conv) {
      const int64_t r = transpose_lhs ? k : i, col = transpose_lhs ? i : k;
      const int64_t c = geometry.channels;
      return base[RowBase(r) + geometry.tap_off[col / c] + col % c];
    }
    return transpose_lhs ? base[k * m_rows + i] : base[i * depth + k];
  }
  float Rhs(int64_t ob, int64_t k, int64_t n) const {
    const float* base = rhs + ob * depth * n_cols;
    return transpose_rhs ? base[n * depth + k] : base[k * n_cols + n];
  }
};

// One output by the reference rule over sum blocks [b0, b1): products in
// order of k from -0.0 per block, block sums added in order.
float SlowOutput(const Problem& p, int64_t oa, int64_t ob, const float* lut,
                 int64_t i, int64_t n, int64_t b0, int64_t b1) {
  float total = 0.0f;
  for (int64_t blk = b0; blk < b1; ++blk) {
    float acc = -0.0f;
    const int64_t k1 = std::min(p.depth, (blk + 1) * kSumBlock);
    for (int64_t k = blk * kSumBlock; k < k1; ++k) {
      acc += ApproxMultiply(p.Lhs(oa, i, k), p.Rhs(ob, k, n), lut, p.m);
    }
    total = blk == b0 ? acc : total + acc;
  }
  return total;
}

// An aligned buffer that keeps its memory between calls and grows on demand.
template <typename T>
class Buffer {
 public:
  T* get() const { return data_.get(); }
  void Reserve(int64_t n) {
    if (n <= capacity_) return;
    data_.reset();  // release before allocating the larger one
    capacity_ = 0;
    data_ = AllocateAligned<T>(n);
    capacity_ = n;
  }

 private:
  AlignedArray<T> data_;
  int64_t capacity_ = 0;
};

// A worker's buffers (up to a few MiB), kept per thread between calls rather
// than allocated and freed by every call. A worker runs start to end on one
// thread and never waits, so no two workers share one.
struct Scratch {
  Buffer<float> tab;
  Buffer<float> cblk;   // [group_size][row_chunk][nc]
  Buffer<float> total;  // the same, summing blocks (units of > 1 block)
  Buffer<uint16_t> idx;
  Buffer<float> scale;
  Buffer<float> scaled;           // the packed tile transformed (separable)
  Buffer<float> patch;            // a gathered tile of patches (conv)
  std::vector<int64_t> row_base;  // where each row's patch starts (conv)
  std::vector<uint8_t> row_irregular;
  std::vector<uint8_t> col_irregular;
};

// Copies patch columns [k0, k0 + kp) of `rows` rows (their patches starting
// at x + row_base[r]) into tile[r * kp + k - k0], run by run (Problem::runs).
// The patches are never held whole; this tile stays in cache.
void GatherPatches(const Problem& p, const float* x, const int64_t* row_base,
                   int64_t rows, int64_t k0, int64_t kp, float* tile) {
  // The parts of the runs that fall in [k0, k0 + kp): (k - k0, offset, len).
  struct Part {
    int64_t at, off, len;
  };
  std::vector<Part> parts;
  for (const PatchRun& run : p.runs) {
    const int64_t lo = std::max(k0, run.k), hi = std::min(k0 + kp, run.k + run.len);
    if (lo < hi) parts.push_back({lo - k0, run.off + (lo - run.k), hi - lo});
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + row_base[r];
    float* dst = tile + r * kp;
    for (const Part& part : parts) {
      if (part.len >= 16) {
        std::memcpy(dst + part.at, src + part.off, part.len * sizeof(float));
      } else {  // a few channels: cheaper than a call
        for (int64_t e = 0; e < part.len; ++e) {
          dst[part.at + e] = src[part.off + e];
        }
      }
    }
  }
}

// The streamed operand's matrix of a group (os: its operand offset).
const float* StreamedMatrix(const Problem& p, int64_t os) {
  return p.swap ? p.rhs + os * p.depth * p.rows : p.lhs + os * p.lhs_matrix;
}

// The factor of LUT matrix ol on the streamed side (f of the lhs, g of the
// rhs), or on the tabled side (separable LUTs).
const float* SeparableFactor(const Problem& p, int64_t ol, bool streamed) {
  return (p.swap == streamed ? p.sep_g : p.sep_f).data() + (ol << p.m);
}

// One tile of the prepacked streamed operand: group gi, row chunk rc, k from
// kp0 (tile `tile` of the depth), packed as RunUnit would pack it. Writes
// only its own tile and flags, so tiles pack in parallel.
void PackUnit(const Problem& p, int64_t unit, Scratch& s) {
  const int64_t tile = unit % (p.sum_blocks * p.tiles_per_block);
  unit /= p.sum_blocks * p.tiles_per_block;
  const int64_t rc = unit % p.row_chunks;
  const int64_t gi = unit / p.row_chunks;
  const int64_t blk = tile / p.tiles_per_block;
  const int64_t kp0 = blk * kSumBlock + tile % p.tiles_per_block * p.kp;
  const int64_t k_end = std::min(p.depth, (blk + 1) * kSumBlock);
  if (kp0 >= k_end) return;  // past the end of a short last block
  const int64_t kp = std::min(p.kp, k_end - kp0);
  const int64_t r0 = rc * p.row_chunk;
  const int64_t rows = std::min(p.row_chunk, p.rows - r0);
  const Group& group = p.groups[gi];
  const float* src = StreamedMatrix(p, p.swap ? group.ob : group.oa) +
                     r0 * p.s_rs + kp0 * p.s_ks;
  uint8_t* flags = p.pre_irregular + p.IrregularAt(gi, rc, tile);
  if (!p.prescaled) {
    const int64_t at = p.PackedAt(gi, rc, kp0);
    p.kernels->pack_rows(src, rows, kp, p.s_rs, p.s_ks, p.m, p.range,
                         p.pre_idx + at, p.pre_scale + at, flags);
    return;
  }
  p.kernels->pack_rows(src, rows, kp, p.s_rs, p.s_ks, p.m, p.range,
                       s.idx.get(), s.scale.get(), flags);
  for (size_t q = 0; q < group.members.size(); ++q) {  // shared packing
    const int64_t at = p.PackedAt(gi * p.scaled_members + q, rc, kp0);
    p.kernels->scale_rows(
        p.pre_scaled + at, s.scale.get(), s.idx.get(), rows * kp,
        SeparableFactor(p, group.members[q].second, true));
  }
}

void RunUnit(const Problem& p, int64_t unit, Scratch& s) {
  const int64_t part = unit % p.split;
  unit /= p.split;
  const int64_t b0 = p.split > 1 ? part : 0;
  const int64_t b1 = p.split > 1 ? part + 1 : p.sum_blocks;
  const int64_t rc = unit % p.row_chunks;
  unit /= p.row_chunks;
  const int64_t cb = unit % p.col_blocks;
  unit /= p.col_blocks;
  const int64_t mc = unit % p.member_chunks;
  const int64_t gi = unit / p.member_chunks;
  const Group& group = p.groups[gi];
  const int64_t m0 = mc * p.group_size;
  const int64_t members = std::min<int64_t>(
      p.group_size, static_cast<int64_t>(group.members.size()) - m0);
  if (members <= 0) return;  // a smaller group than the largest one
  const int64_t os = p.swap ? group.ob : group.oa;
  const int64_t ot = p.swap ? group.oa : group.ob;
  const int64_t lut_size = int64_t{1} << (2 * p.m);
  const int64_t r0 = rc * p.row_chunk;
  const int64_t rows = std::min(p.row_chunk, p.rows - r0);
  const int64_t c0 = cb * p.nc;
  const int64_t ncols = std::min<int64_t>(p.nc, p.cols - c0);
  const int64_t tile = p.row_chunk * p.nc;

  std::fill(s.row_irregular.begin(), s.row_irregular.end(), 0);
  std::fill(s.col_irregular.begin(), s.col_irregular.end(), 0);
  if (p.prepacked) {  // this unit's rows' flags, from its blocks' tiles
    for (int64_t t = b0 * p.tiles_per_block; t < b1 * p.tiles_per_block; ++t) {
      const uint8_t* flags = p.pre_irregular + p.IrregularAt(gi, rc, t);
      for (int64_t r = 0; r < rows; ++r) s.row_irregular[r] |= flags[r];
    }
  }

  const float* smat = StreamedMatrix(p, os);
  const bool stream_patches = p.conv && !p.swap;  // else tabled, or none
  if (stream_patches && !p.transpose_lhs) {  // patch rows are streamed rows
    for (int64_t r = 0; r < rows; ++r) s.row_base[r] = p.RowBase(r0 + r);
  }
  const float* tmat =
      p.swap ? p.lhs + ot * p.lhs_matrix : p.rhs + ot * p.depth * p.cols;
  for (int64_t blk = b0; blk < b1; ++blk) {
    std::fill(s.cblk.get(), s.cblk.get() + members * tile, -0.0f);
    const int64_t k_end = std::min(p.depth, (blk + 1) * kSumBlock);
    for (int64_t kp0 = blk * kSumBlock; kp0 < k_end; kp0 += p.kp) {
      // Pack this tile of the streamed operand once for every member, kp k
      // at a time: whole cache lines of each row (packing kc k at a time,
      // a few floats of each row, cost as much as the sweep on 1024^3).
      const int64_t kp = std::min(p.kp, k_end - kp0);
      // The packed tile: element (r, k) at r * lr + k * lk of tile_idx and
      // tile_scale (or of each member's transformed tile, prescaled).
      const uint16_t* tile_idx = s.idx.get();
      const float* tile_scale = s.scale.get();
      int64_t rs = p.s_rs, ks = p.s_ks;
      if (p.prepacked) {
        if (!p.prescaled) {
          const int64_t at = p.PackedAt(gi, rc, kp0);
          tile_idx = p.pre_idx + at;
          tile_scale = p.pre_scale + at;
        }
      } else {
        // The streamed tile: src[r * rs + k * ks] for `rows` rows and kp k.
        const float* src = s.patch.get();
        if (!stream_patches) {
          src = smat + r0 * p.s_rs + kp0 * p.s_ks;
        } else if (!p.transpose_lhs) {  // patches: rows x kp
          GatherPatches(p, smat, s.row_base.data(), rows, kp0, kp,
                        s.patch.get());
          rs = kp;
          ks = 1;
        } else {  // patch rows kp0.. are k: kp x rows
          for (int64_t r = 0; r < kp; ++r) s.row_base[r] = p.RowBase(kp0 + r);
          GatherPatches(p, smat, s.row_base.data(), kp, r0, rows,
                        s.patch.get());
          rs = 1;
          ks = rows;
        }
        p.kernels->pack_rows(src, rows, kp, rs, ks, p.m, p.range, s.idx.get(),
                             s.scale.get(), s.row_irregular.data());
      }
      // Where packed element (r, k) lies: r * lr + k * lk.
      const bool kmajor = PacksKMajor(rs, ks);
      const int64_t lr = kmajor ? 1 : kp, lk = kmajor ? rows : 1;
      for (int64_t k0 = kp0; k0 < kp0 + kp; k0 += p.kc) {
        const int64_t kc = std::min(p.kc, kp0 + kp - k0);
        const uint16_t* idx = tile_idx + (k0 - kp0) * lk;
        const float* scale = tile_scale + (k0 - kp0) * lk;
        // The tabled block: b[k * bk + c * bc] for kc k and ncols columns.
        const float* b = s.patch.get();
        int64_t bk = p.t_ks, bc = p.t_cs;
        if (!(p.conv && p.swap)) {
          b = tmat + k0 * p.t_ks + c0 * p.t_cs;
        } else if (!p.transpose_lhs) {  // lhs^T: patch rows c0.. are columns
          int64_t* base = s.row_base.data();
          for (int64_t c = 0; c < ncols; ++c) base[c] = p.RowBase(c0 + c);
          GatherPatches(p, tmat, base, ncols, k0, kc, s.patch.get());
          bk = 1;
          bc = kc;
        } else {  // the patches themselves: rows k0.. are k, columns c0..
          int64_t* base = s.row_base.data();
          for (int64_t kk = 0; kk < kc; ++kk) base[kk] = p.RowBase(k0 + kk);
          GatherPatches(p, tmat, base, kc, c0, ncols, s.patch.get());
          bk = ncols;
          bc = 1;
        }
        for (int64_t q = 0; q < members; ++q) {
          const int64_t ol = group.members[m0 + q].second;
          const float* lut_rows = p.swap != p.direct
                                      ? p.lut + ol * lut_size
                                      : p.lut_t.data() + ol * lut_size;
          if (p.separable) {  // kc == kp: this member's whole packed tile
            const float* g = SeparableFactor(p, ol, false);
            const float* scaled = s.scaled.get();
            if (p.prescaled) {
              scaled = p.pre_scaled +
                       p.PackedAt(gi * p.scaled_members + m0 + q, rc, kp0);
            } else {
              p.kernels->scale_rows(s.scaled.get(), tile_scale, tile_idx,
                                    rows * kp, SeparableFactor(p, ol, true));
            }
            p.block->build_separable(s.tab.get(), g, p.m, b, bk, bc, kc, ncols,
                                     p.range, s.col_irregular.data());
            p.block->separable_sweep(s.cblk.get() + q * tile, rows, scaled, lr,
                                     lk, kc, s.tab.get(), p.rounded);
            continue;
          }
          if (p.direct) {
            p.block->direct_sweep(s.cblk.get() + q * tile, rows, idx, scale,
                                  lr, lk, kc, lut_rows, p.m, b, bk, bc,
                                  ncols, p.range, s.col_irregular.data());
            continue;
          }
          if (p.compact) {
            uint32_t* tab = reinterpret_cast<uint32_t*>(s.tab.get());
            if (p.codes != nullptr && p.code_base[ol] >= 0) {
              p.block->build_compact_codes(
                  tab, p.codes + ol * (lut_size >> p.m) * kCodeRow,
                  p.code_base[ol], p.m, b, bk, bc, kc, ncols, p.range,
                  s.col_irregular.data());
            } else if (p.planes != nullptr) {
              p.block->build_compact_planes(
                  tab, p.planes + ol * (lut_size >> p.m) * kPlaneRow,
                  p.m, b, bk, bc, kc, ncols, p.range, s.col_irregular.data());
            } else {
              p.block->build_compact(tab, lut_rows, p.m, b, bk, bc, kc, ncols,
                                     p.range, s.col_irregular.data());
            }
            p.block->compact_sweep(s.cblk.get() + q * tile, rows, idx, scale,
                                   lr, lk, kc, tab, p.m);
            continue;
          }
          p.block->build_table(s.tab.get(), lut_rows, p.m, b, bk, bc,
                               kc, ncols, p.range, s.col_irregular.data());
          p.block->table_sweep(s.cblk.get() + q * tile, rows, idx, scale, lr,
                               lk, kc, s.tab.get(), p.m);
        }
      }
    }
    if (b1 - b0 > 1) {  // add this block's sums in order (the first as it is)
      float* t = s.total.get();
      const float* c = s.cblk.get();
      if (blk == b0) {
        std::copy(c, c + members * tile, t);
      } else {
        for (int64_t e = 0; e < members * tile; ++e) t[e] += c[e];
      }
    }
  }
  const float* sums = b1 - b0 > 1 ? s.total.get() : s.cblk.get();

  // Write back, and recompute outputs touched by irregular operands.
  const bool any_col_irregular =
      std::any_of(s.col_irregular.begin(), s.col_irregular.begin() + ncols,
                  [](uint8_t x) { return x != 0; });
  for (int64_t q = 0; q < members; ++q) {
    const auto [g, ol] = group.members[m0 + q];
    const float* lut = p.lut + ol * lut_size;
    float* out = (p.split > 1 ? p.partials + part * p.batch * p.m_rows * p.n_cols
                              : p.out) +
                 g * p.m_rows * p.n_cols;
    const float* cblk = sums + q * tile;
    if (p.swap) {  // transposed: contiguous runs of output row c0 + c
      for (int64_t c = 0; c < ncols; ++c) {
        float* dst = out + (c0 + c) * p.n_cols + r0;
        for (int64_t r = 0; r < rows; ++r) dst[r] = cblk[r * p.nc + c];
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (!p.swap) {  // a contiguous run of one output row
        std::memcpy(out + (r0 + r) * p.n_cols + c0, cblk + r * p.nc,
                    ncols * sizeof(float));
      }
      if (!s.row_irregular[r] && !any_col_irregular) continue;
      for (int64_t c = 0; c < ncols; ++c) {
        if (!s.row_irregular[r] && !s.col_irregular[c]) continue;
        const int64_t i = p.swap ? c0 + c : r0 + r;
        const int64_t n = p.swap ? r0 + r : c0 + c;
        out[i * p.n_cols + n] =
            SlowOutput(p, group.oa, group.ob, lut, i, n, b0, b1);
      }
    }
  }
}

struct SharedState {
  Problem problem;
  std::atomic<int64_t> next_pack{0};
  std::atomic<int64_t> packed{0};  // prepacked tiles finished
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  int64_t workers = 1;
  std::vector<float> partials;  // storage behind problem.partials
  ffi::CountDownPromise done;
};

// Adds the per-block partial outputs in order of block (split > 1).
void AddPartials(const Problem& p) {
  const int64_t size = p.batch * p.m_rows * p.n_cols;
  const float* part = p.partials;
  std::copy(part, part + size, p.out);
  for (int64_t b = 1; b < p.split; ++b) {
    part += size;
    for (int64_t e = 0; e < size; ++e) p.out[e] += part[e];
  }
}

void Worker(const std::shared_ptr<SharedState>& state) {
  const Problem& p = state->problem;
  try {
    thread_local Scratch s;
    const int64_t size = int64_t{1} << p.m;
    s.cblk.Reserve(p.group_size * p.row_chunk * p.nc);
    s.idx.Reserve(p.row_chunk * p.kp);
    s.scale.Reserve(p.row_chunk * p.kp);
    if (p.separable) s.scaled.Reserve(p.row_chunk * p.kp);
    s.row_irregular.assign(p.row_chunk, 0);
    if (p.conv) {
      s.patch.Reserve(std::max(p.row_chunk * p.kp, p.kc * p.nc));
      s.row_base.resize(std::max({p.row_chunk, p.kp, int64_t{p.nc}}));
    }
    s.col_irregular.assign(p.nc, 0);
    s.tab.Reserve(p.direct        ? 1
                  : p.separable ? p.kc * p.nc
                                : p.kc * size * p.nc / (p.compact ? 2 : 1));
    if (p.split == 1 && p.sum_blocks > 1) {
      s.total.Reserve(p.group_size * p.row_chunk * p.nc);
    }
    if (p.prepacked) {
      for (int64_t u = state->next_pack.fetch_add(1); u < p.pack_units;
           u = state->next_pack.fetch_add(1)) {
        PackUnit(p, u, s);  // allocates nothing: cannot throw
        state->packed.fetch_add(1, std::memory_order_release);
      }
      // Every tile is claimed by now, by a worker that is running: wait for
      // the others' last tiles (short), never for work not yet started.
      while (state->packed.load(std::memory_order_acquire) < p.pack_units) {
        std::this_thread::yield();
      }
    }
    for (int64_t u = state->next.fetch_add(1); u < p.units;
         u = state->next.fetch_add(1)) {
      RunUnit(p, u, s);
    }
    // The last worker to finish adds the block partials, and gives the
    // prepacked operand's block back before the call completes (the next
    // call may want it while this state is still held).
    if (state->finished.fetch_add(1) + 1 == state->workers) {
      if (p.split > 1) AddPartials(state->problem);
      state->problem.pre_block.Release();
    }
    state->done.CountDown();
  } catch (const std::bad_alloc&) {
    state->done.CountDown(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                                     "approxjax: out of memory in GEMM"));
  } catch (const std::exception& e) {
    state->done.CountDown(ffi::Error::Internal(
        std::string("approxjax: GEMM worker failed: ") + e.what()));
  }
}

ffi::Future Failed(ffi::Error error) {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetError(std::move(error));
  return future;
}

ffi::Future Done() {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetAvailable();
  return future;
}

// Scans tables for invalid entries and returns the regular exponent range
// and whether every entry is bfloat16-exact (its lower 16 bits zero).
ffi::Error ScanTables(const KernelTable& kernels, const char* target,
                      const float* lut, int64_t count, int m, int* range,
                      bool* compact = nullptr) {
  int lo = 0, hi = 0;
  bool any = false;
  uint32_t low_bits = 0;
  const int64_t elems = count << (2 * m);
  // A branch-free pass first: where no entry is negative, non-finite or
  // subnormal, the exponent range is that of the nonzero entries' biased
  // exponent fields. Otherwise the entry-by-entry loop below.
  uint32_t odd = 0, emin = 255, emax = 0;
  kernels.scan_lut(reinterpret_cast<const uint32_t*>(lut), elems, &odd,
                   &low_bits, &emin, &emax);
  if (odd == 0) {
    if (emax > 0) {
      lo = static_cast<int>(emin) - 127;
      hi = static_cast<int>(emax) - 127;
    }
    *range = RegularExponentRange(lo, hi);
    if (compact != nullptr) *compact = (low_bits & 0xffffu) == 0;
    return ffi::Error::Success();
  }
  low_bits = 0;
  for (int64_t e = 0; e < elems; ++e) {
    const float v = lut[e];
    const uint32_t bits = FloatBits(v);
    if (!std::isfinite(v) || (bits & kSignMask)) {
      return ffi::Error::InvalidArgument(
          std::string(target) +
          ": lut entries must be finite and >= +0.0; entry " +
          std::to_string(e) + " is " + std::to_string(v));
    }
    low_bits |= bits;
    if (bits == 0) continue;
    const int x = SplitLutEntry(v).exp - 127;
    lo = any ? std::min(lo, x) : x;
    hi = any ? std::max(hi, x) : x;
    any = true;
  }
  *range = RegularExponentRange(lo, hi);
  if (compact != nullptr) *compact = (low_bits & 0xffffu) == 0;
  return ffi::Error::Success();
}

// Whether an environment switch (APPROXJAX_CPU_...) is set to 0.
bool TurnedOff(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] == '0';
}

// Whether one LUT is separable: lut[i, j] == f[i] * g[j] exactly for normal
// f, g > 0, as for truncated(m) and DRUM, whose entries are products of the
// operands' modified significands. Then every product the model forms is
// exactly (f[i] * scale(a)) * (g[j] * scale(b)). Or, where only
// lut[i, j] == float32(f[i] * g[j]) (*rounded: truncated(12)), that product
// rounded. The factors are fixed up to a constant c: f = lut[:, 0] / c and
// g = lut[0, :] * c / lut[0, 0]. Tried: c = 1, c = lut[0, 0] and, where
// exact, c = sqrt(lut[0, 0]) (symmetric LUTs such as DRUM's, whose
// lut[0, 0] = f[0]**2 has no exact quotient by f[0] otherwise), the first
// with every f and g a normal float. Narrows *range so that the transformed
// operands stay normal.
bool FindSeparable(const KernelTable& kernels, const float* lut, int m,
                   float* f, float* g, int* range, bool* rounded) {
  const int64_t size = int64_t{1} << m;
  const double corner = lut[0];
  if (!(corner > 0)) return false;
  const double root = std::sqrt(corner);
  const double scales[] = {1.0, corner, root * root == corner ? root : 0.0};
  for (const double c : scales) {
    if (c == 0.0) continue;
    int lo = 0, hi = 0;
    const auto normal = [&](float x, bool first) {
      const int e = BiasedExponent(FloatBits(x));
      if (e == 0 || e == 255) return false;
      lo = first ? e - 127 : std::min(lo, e - 127);
      hi = first ? e - 127 : std::max(hi, e - 127);
      return true;
    };
    bool exact = true;
    for (int64_t i = 0; i < size && exact; ++i) {
      const double fi = double(lut[i * size]) / c;
      const double gi = double(lut[i]) * c / corner;
      f[i] = static_cast<float>(fi);
      g[i] = static_cast<float>(gi);
      exact = double(f[i]) == fi && double(g[i]) == gi && normal(f[i], i == 0) &&
              normal(g[i], false);
    }
    if (!exact) continue;
    *rounded = !kernels.factors_match(lut, f, g, size, false);
    if (*rounded && !kernels.factors_match(lut, f, g, size, true)) return false;
    *range = std::min({*range, 126 + lo, 127 - hi});
    return true;
  }
  return false;
}

// Whether wide table blocks may be compact (gemm_kernels.h), given whether
// every LUT entry is bfloat16-exact; APPROXJAX_CPU_COMPACT=0 turns compact
// tables off (tests, benchmarks).
bool CompactTablesAllowed(bool exact_luts, int m) {
  return exact_luts && m <= kCompactMaxBits &&
         !TurnedOff("APPROXJAX_CPU_COMPACT");
}

// Whether compact tables may be built from planes where the kernel variant
// can (APPROXJAX_CPU_PLANES=0 keeps the transposing build, for tests).
bool PlanesAllowed() { return !TurnedOff("APPROXJAX_CPU_PLANES"); }

// Whether compact tables may be built from byte codes where the kernel
// variant and the CPU (AVX-512 VBMI) can; APPROXJAX_CPU_CODES=0 keeps the
// planes (tests, benchmarks).
bool CodesAllowed() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool vbmi = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") != 0;
  }();
  return vbmi && !TurnedOff("APPROXJAX_CPU_CODES");
#else
  return false;
#endif
}

// Whether separable LUTs may skip the tables: not with
// APPROXJAX_CPU_SEPARABLE=0, nor where APPROXJAX_CPU_GEMM forces tables or
// gathers (tests, benchmarks).
bool SeparableAllowed() {
  const char* force = std::getenv("APPROXJAX_CPU_GEMM");
  return !TurnedOff("APPROXJAX_CPU_SEPARABLE") &&
         !(force && *force && std::string(force) != "auto");
}

Tiling TileLayout(const Problem& p, bool swap, int nc, int64_t most,
                  int64_t threads) {
  const int64_t rows = swap ? p.n_cols : p.m_rows;
  const int64_t cols = swap ? p.m_rows : p.n_cols;
  Tiling t;
  t.col_blocks = (cols + nc - 1) / nc;
  // Members of a group share a packed tile while their output tiles fit the
  // budget. Rows per tile stay as many as for one multiplier: a table is
  // built per member and row tile, and building costs more than packing.
  t.row_chunk = std::min(kBlockRows, rows);
  t.group_size = std::clamp<int64_t>(kTileFloats / (t.row_chunk * nc), 1, most);
  t.row_chunks = (rows + t.row_chunk - 1) / t.row_chunk;
  t.member_chunks = (most + t.group_size - 1) / t.group_size;
  t.split = 1;
  const int64_t tiles =
      static_cast<int64_t>(p.groups.size()) * t.member_chunks * t.col_blocks;
  // Too few units to keep several threads busy: run the sum blocks of a long
  // contraction as separate units (partial outputs, added in order at the
  // end), or else split rows further (which repeats the table builds).
  const int64_t out_elems = p.batch * p.m_rows * p.n_cols;
  if (threads == 1 || tiles * t.row_chunks >= 2 * threads) return t;
  if (p.sum_blocks > 1 && out_elems * p.sum_blocks <= kMaxPartialFloats) {
    t.split = p.sum_blocks;
  } else if (rows >= 64) {
    const int64_t chunks =
        std::min<int64_t>((2 * threads + tiles - 1) / tiles, rows / 32);
    t.row_chunk = (rows + chunks - 1) / chunks;
    t.row_chunks = (rows + t.row_chunk - 1) / t.row_chunk;
  }
  return t;
}

// Picks which operand is streamed (swap), the column block width and tables
// or gathers from a cost model fitted to this kernel's measured costs, in
// multiply-adds of the wide sweep: building a table entry costs about 2.5,
// a narrow block's multiply-add about 1.3, a gathered one about kDirectCost.
// Gathers are for small tables only (a random row per product). Tables are
// built once per row chunk, so a layout whose output has too few tiles for
// the threads (and is cut into more row chunks) pays for more builds; a
// layout with fewer units than threads leaves threads idle.
Tiling ChooseLayout(Problem& p, int64_t size, int64_t most, int64_t threads) {
  struct Option {
    bool swap, direct;
    int nc;
  };
  const Option options[] = {{false, false, kWideCols}, {false, false, kNarrowCols},
                            {true, false, kWideCols},  {true, false, kNarrowCols},
                            {false, true, kNarrowCols}, {true, true, kNarrowCols}};
  // APPROXJAX_CPU_GEMM=tables|gathers forces one kind (tests, benchmarks).
  const char* force = std::getenv("APPROXJAX_CPU_GEMM");
  const std::string only = force ? force : "";
  double best = -1;
  Tiling chosen{};
  for (const Option& o : options) {
    const bool gathers_ok = p.m <= kMaxDirectBits || only == "gathers";
    if (o.direct && (p.separable || !gathers_ok)) continue;
    if ((only == "tables" && o.direct) || (only == "gathers" && !o.direct)) {
      continue;
    }
    const Tiling t = TileLayout(p, o.swap, o.nc, most, threads);
    const double rows = o.swap ? p.n_cols : p.m_rows;
    const double padded = double(t.col_blocks) * o.nc;
    double cost;
    if (o.direct) {
      cost = kDirectCost * rows * padded;
    } else if (p.separable) {
      // An FMA per product; the streamed tile packed for every column block
      // and the tabled block transformed for every row chunk, at about a
      // dozen FMAs per element where its columns are strided in memory.
      const bool strided = o.swap ? !p.transpose_lhs : p.transpose_rhs;
      cost = rows * padded * (o.nc == kNarrowCols ? 0.4 : 0.25) *
             (p.rounded ? 2.0 : 1.0);  // a multiply and an add per product
      cost += 3.0 * rows * double(t.col_blocks);
      cost += (strided ? 15.0 : 3.0) * padded * double(t.row_chunks);
    } else {
      const bool compact = o.nc == kWideCols && p.compact_ok;
      cost = rows * padded * (o.nc == kNarrowCols ? 1.3 : compact ? 0.55 : 1.0);
      cost += 2.5 * double(size) * padded * t.row_chunks;
    }
    const int64_t units = t.Units(static_cast<int64_t>(p.groups.size()));
    cost /= double(std::min(units, threads));
    if (best < 0 || cost < best) {
      best = cost;
      p.swap = o.swap;
      p.direct = o.direct;
      p.nc = o.nc;
      chosen = t;
    }
  }
  return chosen;
}

// Sets up packing the streamed operand once (Problem::prepacked) where a
// unit would pack it again for every column block or chunk of members, and
// its patches are not gathered on the fly (no im2col buffer): for separable
// LUTs transformed for each member of a group (prescaled: 4 bytes per
// element and member) within kMaxPrescaledBytes, else as indices and scales
// (6 bytes per element) within kMaxPrepackBytes; a failed allocation leaves
// the per-unit packing.
void Prepack(Problem& p, int64_t most) {
  p.prepacked = false;
  if ((p.conv && !p.swap) || p.col_blocks * p.member_chunks < 2 ||
      TurnedOff("APPROXJAX_CPU_PREPACK")) {
    return;
  }
  const int64_t chunks = static_cast<int64_t>(p.groups.size()) * p.row_chunks;
  const int64_t elems = chunks * p.row_chunk * p.depth;
  p.tiles_per_block =
      (std::min(p.depth, kSumBlock) + p.kp - 1) / p.kp;
  const int64_t flags = chunks * p.sum_blocks * p.tiles_per_block * p.row_chunk;
  p.prescaled =
      p.separable && (most == 1 || elems * most * 4 <= kMaxPrescaledBytes);
  p.scaled_members = p.prescaled ? most : 1;
  if (elems * (p.prescaled ? 4 * most : 6) + flags > kMaxPrepackBytes) return;
  // One block: the arrays at 64-byte boundaries.
  const auto up = [](int64_t bytes) { return (bytes + 63) / 64 * 64; };
  const int64_t scaled_bytes = p.prescaled ? up(elems * most * 4) : 0;
  const int64_t idx_bytes = p.prescaled ? 0 : up(elems * 2);
  const int64_t scale_bytes = p.prescaled ? 0 : up(elems * 4);
  try {
    p.pre_block.data = BlockCache::Take(
        scaled_bytes + idx_bytes + scale_bytes + up(flags), &p.pre_block.size);
  } catch (const std::bad_alloc&) {
    return;
  }
  char* at = p.pre_block.data.get();
  p.pre_scaled = p.prescaled ? reinterpret_cast<float*>(at) : nullptr;
  at += scaled_bytes;
  p.pre_idx = p.prescaled ? nullptr : reinterpret_cast<uint16_t*>(at);
  at += idx_bytes;
  p.pre_scale = p.prescaled ? nullptr : reinterpret_cast<float*>(at);
  at += scale_bytes;
  p.pre_irregular = reinterpret_cast<uint8_t*>(at);
  std::memset(p.pre_irregular, 0, flags);
  p.pack_units = chunks * p.sum_blocks * p.tiles_per_block;
  p.prepacked = true;
}

// Asks Linux for 2 MiB pages under the whole 2 MiB pages of a large output
// (MADV_HUGEPAGE: only a hint for how the pages are backed; the memory stays
// XLA's). XLA allocates outputs anew per call, and where transparent huge
// pages are "madvise" (as here) their first touch otherwise faults every
// 4 KiB page: a stack of eight 1024^3 outputs, 32 MiB, faulted 8,000 pages
// per call. APPROXJAX_CPU_HUGEPAGES=0 turns it off.
void AdviseHugePages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < int64_t{4} << 20 || TurnedOff("APPROXJAX_CPU_HUGEPAGES")) return;
  const uintptr_t at = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (at + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (at + bytes) & ~(kHuge - 1);
  if (end > begin) {
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)data, (void)bytes;
#endif
}

std::mutex last_layout_mutex;
std::string last_layout;

// Keeps a description of the layout of the latest GEMM (LastGemmLayout).
void RecordLayout(const Problem& p) {
  std::string d = p.direct      ? "gathers"
                  : p.separable ? (p.rounded ? "separable rounded" : "separable")
                  : p.compact   ? "compact tables"
                                : "tables";
  d += " nc=" + std::to_string(p.nc) + (p.swap ? " stream=rhs" : " stream=lhs");
  if (p.conv) d += " im2col";
  if (p.prepacked) d += p.prescaled ? " prescaled" : " prepacked";
  if (p.planes != nullptr) d += p.codes != nullptr ? " codes" : " planes";
  d += " row_chunk=" + std::to_string(p.row_chunk) +
       " split=" + std::to_string(p.split) + " units=" + std::to_string(p.units);
  std::lock_guard<std::mutex> lock(last_layout_mutex);
  last_layout = std::move(d);
}

// Runs a checked problem: operands, transposes (and geometry) already set.
ffi::Future Launch(std::shared_ptr<SharedState> state, ffi::ThreadPool pool,
                   const BatchShape& shape, const char* target) {
  Problem& p = state->problem;
  const bool transpose_lhs = p.transpose_lhs, transpose_rhs = p.transpose_rhs;
  p.m_rows = shape.m_rows;
  p.n_cols = shape.n_cols;
  p.depth = shape.depth;
  p.m = shape.m;
  const int m = shape.m;
  p.out_lead = shape.out_lead;
  p.batch = shape.batch;
  p.a = shape.a;
  p.b = shape.b;
  p.l = shape.l;
  if (!p.conv) p.lhs_matrix = p.m_rows * p.depth;
  const int64_t out_elems = p.batch * p.m_rows * p.n_cols;
  if (out_elems == 0) return Done();
  if (p.depth == 0) {
    std::fill(p.out, p.out + out_elems, 0.0f);
    return Done();
  }
  p.kernels = &SelectKernels();
  if (auto e = ScanTables(*p.kernels, target, p.lut, p.l.matrix_count, m,
                          &p.range, &p.compact_ok);
      e.failure()) {
    return Failed(e);
  }
  p.compact_ok = CompactTablesAllowed(p.compact_ok, m);
  p.separable = p.range >= 0 && SeparableAllowed();
  try {
    if (p.separable) {
      p.sep_f.resize(p.l.matrix_count << m);
      p.sep_g.resize(p.l.matrix_count << m);
    }
  } catch (const std::bad_alloc&) {
    return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                             std::string(target) + ": out of memory"));
  }
  // One rounded LUT rounds every product: exact ones are unchanged by it.
  p.rounded = false;
  for (int64_t t = 0; t < p.l.matrix_count && p.separable; ++t) {
    bool rounded = false;
    p.separable = FindSeparable(*p.kernels, p.lut + (t << (2 * m)), m,
                                p.sep_f.data() + (t << m),
                                p.sep_g.data() + (t << m), &p.range, &rounded);
    p.rounded = p.rounded || rounded;
  }

  const int64_t size = int64_t{1} << m;
  // Group the batch by operand matrices: members differ only in their table.
  std::map<std::pair<int64_t, int64_t>, size_t> where;
  for (int64_t g = 0; g < p.batch; ++g) {
    int64_t oa, ob, ol;
    BatchOffsets(g, p.out_lead, p.a, p.b, p.l, &oa, &ob, &ol);
    auto [it, fresh] = where.try_emplace({oa, ob}, p.groups.size());
    if (fresh) p.groups.push_back(Group{oa, ob, {}});
    p.groups[it->second].members.emplace_back(g, ol);
  }
  int64_t most = 1;
  for (const Group& grp : p.groups) {
    most = std::max(most, static_cast<int64_t>(grp.members.size()));
  }
  // Small problems run inline; others on XLA's intra-op pool plus this thread.
  const double work = double(p.batch) * p.m_rows * p.n_cols * p.depth;
  const int64_t threads =
      work < 2e6 ? 1 : std::max<int64_t>(pool.num_threads(), 1);
  p.sum_blocks = (p.depth + kSumBlock - 1) / kSumBlock;
  const Tiling tiling = ChooseLayout(p, size, most, threads);
  p.block = p.nc == kWideCols ? &p.kernels->wide : &p.kernels->narrow;
  p.compact = !p.direct && !p.separable && p.nc == kWideCols && p.compact_ok;
  const int64_t lhs_rs = transpose_lhs ? 1 : p.depth;
  const int64_t lhs_ks = transpose_lhs ? p.m_rows : 1;
  const int64_t rhs_ks = transpose_rhs ? 1 : p.n_cols;
  const int64_t rhs_cs = transpose_rhs ? p.depth : 1;
  if (!p.swap) {
    p.rows = p.m_rows, p.cols = p.n_cols;
    p.s_rs = lhs_rs, p.s_ks = lhs_ks, p.t_ks = rhs_ks, p.t_cs = rhs_cs;
  } else {
    p.rows = p.n_cols, p.cols = p.m_rows;
    p.s_rs = rhs_cs, p.s_ks = rhs_ks, p.t_ks = lhs_ks, p.t_cs = lhs_rs;
  }

  try {
    if (p.swap == p.direct && !p.separable) {  // rows by the rhs index: lut^T
      p.lut_t.resize(p.l.matrix_count * size * size);
      for (int64_t t = 0; t < p.l.matrix_count; ++t) {
        const float* src = p.lut + t * size * size;
        float* dst = p.lut_t.data() + t * size * size;
        for (int64_t i = 0; i < size; ++i) {
          for (int64_t j = 0; j < size; ++j) {
            dst[j * size + i] = src[i * size + j];
          }
        }
      }
    }
    p.planes = nullptr;
    p.codes = nullptr;
    if (p.compact && p.block->build_compact_planes != nullptr &&
        PlanesAllowed()) {
      p.planes = Aligned64(p.plane_store, p.l.matrix_count * size * kPlaneRow);
      const bool codes =
          p.block->build_compact_codes != nullptr && CodesAllowed();
      uint8_t* code_rows =
          codes ? Aligned64(p.code_store, p.l.matrix_count * size * kCodeRow)
                : nullptr;
      p.code_base.assign(p.l.matrix_count, -1);
      for (int64_t t = 0; t < p.l.matrix_count; ++t) {
        const float* rows = p.swap ? p.lut + t * size * size
                                   : p.lut_t.data() + t * size * size;
        PackPlanes(rows, p.m, p.planes + t * size * kPlaneRow);
        if (!codes) continue;
        p.code_base[t] = PackCodes(rows, p.m, code_rows + t * size * kCodeRow);
        if (p.code_base[t] >= 0) p.codes = code_rows;
      }
    }
  } catch (const std::bad_alloc&) {
    return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                             std::string(target) + ": out of memory"));
  }

  // At most kPackDepth k per table (small m would allow thousands), so that a
  // worker's packed tile, kept between calls, stays under 1 MiB.
  p.kc = p.direct || p.separable
             ? std::min(p.depth, kPackDepth)
             : std::clamp<int64_t>(kTableFloats / (size * p.nc) *
                                            (p.compact ? 2 : 1),
                                        1,
                                        std::min(p.depth, kPackDepth));
  p.kp = std::min(p.depth, (kPackDepth + p.kc - 1) / p.kc * p.kc);
  static_cast<Tiling&>(p) = tiling;
  if (p.split > 1) {
    try {
      state->partials.resize(out_elems * p.split);
    } catch (const std::bad_alloc&) {
      return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                               std::string(target) + ": out of memory"));
    }
    p.partials = state->partials.data();
  }
  p.units = p.Units(static_cast<int64_t>(p.groups.size()));
  Prepack(p, most);

  RecordLayout(p);
  AdviseHugePages(p.out, out_elems * static_cast<int64_t>(sizeof(float)));
  const int64_t workers = std::min<int64_t>(threads, p.units);
  state->workers = workers;
  state->done = ffi::CountDownPromise(workers);
  ffi::Future future(state->done);
  for (int64_t w = 1; w < workers; ++w) {
    pool.Schedule([state] { Worker(state); });
  }
  Worker(state);
  return future;
}

ffi::Future ApproxGemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> lhs,
                           ffi::Buffer<ffi::F32> rhs, ffi::Buffer<ffi::F32> lut,
                           ffi::ResultBuffer<ffi::F32> out, bool transpose_lhs,
                           bool transpose_rhs) {
  auto state = std::make_shared<SharedState>();
  Problem& p = state->problem;
  BatchShape shape;
  if (auto e = CheckGemm(lhs.dimensions(), rhs.dimensions(), lut.dimensions(),
                         out->dimensions(), transpose_lhs, transpose_rhs,
                         &shape);
      e.failure()) {
    return Failed(e);
  }
  p.transpose_lhs = transpose_lhs;
  p.transpose_rhs = transpose_rhs;
  p.lhs = lhs.typed_data();
  p.rhs = rhs.typed_data();
  p.lut = lut.typed_data();
  p.out = out->typed_data();
  return Launch(std::move(state), pool, shape, "approxjax_gemm");
}

ffi::Future ApproxConvGemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> rhs,
                               ffi::Buffer<ffi::F32> lut,
                               ffi::ResultBuffer<ffi::F32> out,
                               ffi::Span<const int64_t> kernel,
                               ffi::Span<const int64_t> strides,
                               ffi::Span<const int64_t> dilation,
                               bool transpose_lhs) {
  auto state = std::make_shared<SharedState>();
  Problem& p = state->problem;
  if (auto e = CheckConvGemm(x.dimensions(), rhs.dimensions(),
                             lut.dimensions(), out->dimensions(), kernel,
                             strides, dilation, transpose_lhs, &p.geometry);
      e.failure()) {
    return Failed(e);
  }
  p.conv = true;
  const int64_t c = p.geometry.channels;
  for (size_t t = 0; t < p.geometry.tap_off.size() && c > 0; ++t) {
    const int64_t off = p.geometry.tap_off[t];
    if (!p.runs.empty() && p.runs.back().off + p.runs.back().len == off) {
      p.runs.back().len += c;
    } else {
      p.runs.push_back({static_cast<int64_t>(t) * c, off, c});
    }
  }
  p.transpose_lhs = transpose_lhs;
  p.transpose_rhs = false;
  p.lhs_matrix = p.geometry.images * p.geometry.image;
  p.lhs = x.typed_data();
  p.rhs = rhs.typed_data();
  p.lut = lut.typed_data();
  p.out = out->typed_data();
  return Launch(std::move(state), pool, p.geometry.gemm, "approxjax_conv_gemm");
}

ffi::Error ApproxMultiplyImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                              ffi::Buffer<ffi::F32> lut,
                              ffi::ResultBuffer<ffi::F32> out) {
  BatchShape shape;
  if (auto e = CheckMultiply(a.dimensions(), b.dimensions(), lut.dimensions(),
                             out->dimensions(), &shape);
      e.failure()) {
    return e;
  }
  const int m = shape.m;
  const int64_t n = shape.n_cols, batch = shape.batch;
  const std::vector<int64_t>& lead = shape.out_lead;
  const Operand &oa = shape.a, &ob = shape.b, &ol = shape.l;
  const float* lp = lut.typed_data();
  int range;
  if (auto e = ScanTables(SelectKernels(), "approxjax_multiply", lp,
                          ol.matrix_count, m, &range);
      e.failure()) {
    return e;
  }
  for (int64_t g = 0; g < batch; ++g) {
    int64_t xa, xb, xl;
    BatchOffsets(g, lead, oa, ob, ol, &xa, &xb, &xl);
    const float* pa = a.typed_data() + xa * n;
    const float* pb = b.typed_data() + xb * n;
    const float* pl = lp + (xl << (2 * m));
    float* po = out->typed_data() + g * n;
    for (int64_t e = 0; e < n; ++e) po[e] = ApproxMultiply(pa[e], pb[e], pl, m);
  }
  return ffi::Error::Success();
}

}  // namespace

const char* CpuKernelName() { return SelectKernels().name; }

std::string LastGemmLayout() {
  std::lock_guard<std::mutex> lock(last_layout_mutex);
  return last_layout;
}

const KernelTable& SelectKernels() {
  static const KernelTable* chosen = [] {
    const char* force = std::getenv("APPROXJAX_CPU_KERNEL");
    std::string want = force ? force : "";
    std::transform(want.begin(), want.end(), want.begin(),
                   [](unsigned char c) { return std::tolower(c); });
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    const bool avx2 =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw");
    if (want == "baseline") return &KernelsBaseline();
    if (want == "avx2" && avx2) return &KernelsAvx2();
    if (want == "avx512" && avx512) return &KernelsAvx512();
    if (want.empty() && avx512) return &KernelsAvx512();
    if (want.empty() && avx2) return &KernelsAvx2();
#endif
    return &KernelsBaseline();
  }();
  return *chosen;
}

// Both GEMM targets bind the thread pool, lhs (or the padded input x), rhs
// and lut, and return out; then their attributes.
static auto BindGemm() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // lhs [..., M, K] or x [..., N, S.., C]
      .Arg<ffi::Buffer<ffi::F32>>()   // rhs [..., K, N]
      .Arg<ffi::Buffer<ffi::F32>>()   // lut [..., 2**m, 2**m]
      .Ret<ffi::Buffer<ffi::F32>>();  // out [..., M, N] or [..., N, P, O]
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxGemmCpu, ApproxGemmImpl,
                              BindGemm()
                                  // lhs stored as [..., K, M]
                                  .Attr<bool>("transpose_lhs")
                                  // rhs stored as [..., N, K]
                                  .Attr<bool>("transpose_rhs"));

// x is the padded input; rhs [..., prod(kernel) * C, O] (shapes.h).
XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxConvGemmCpu, ApproxConvGemmImpl,
                              BindGemm()
                                  .Attr<ffi::Span<const int64_t>>("kernel")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  // out = patches^T @ rhs (weight gradient)
                                  .Attr<bool>("transpose_lhs"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxMultiplyCpu, ApproxMultiplyImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a [..., n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [..., n]
                                  // lut [..., 2**m, 2**m]
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out

}  // namespace approxjax

// Executing the CPU approximate batched GEMM (see gemm_execute.h). The plan
// comes from gemm_plan.cc, the inner loops from gemm_kernels.cc (one object
// per instruction set), the bit-level multiply from approx_multiply.h.
//
// Design:
//   * One operand is "streamed" (a tile of its rows is packed into table index
//     and exact scale), the other is "tabled": for a block of NC of its
//     columns and a few k, a per-kind TileSweep builds what the inner loop
//     reads (per-tile tables tab[k][v][c] = lut[v, j(b[k, c])] * scale(b[k, c]),
//     compact ones, the transformed block of a separable LUT, or nothing for
//     gathers) and sweeps the packed tile against it with FMA streams.
//   * Separable LUTs, lut[i, j] == f[i] * g[j] exactly (truncated(m): the
//     products of the operands' truncated significands), need no tables: a
//     product is exactly (f[i] * scale(a)) * (g[j] * scale(b)), so the
//     kernel transforms both operands and runs a GEMM microkernel with
//     exact products in order of k (the same bits).
//   * The tiles of a stack of multipliers that share operands are computed
//     together, so they share the packing of the streamed operand; where the
//     plan says so, that operand is packed once per call before the units.
//   * Every output is the sum of its products in order of k, starting from
//     -0.0 (so a single product keeps its sign of zero), in blocks of
//     kSumBlock k whose sums are then added in order; products are exact, so
//     FMA or not, every instruction set gives the same bits. Additions are
//     IEEE float32 with subnormal results kept (fp_env.h). When the output is
//     too small to keep every thread busy, the blocks of a long contraction
//     run on different threads and are added in order at the end.
//   * Operands outside the "regular" exponent range (inf, NaN, extreme
//     exponents) mark their row or column; those outputs are recomputed with
//     ApproxMultiply itself, in the same order of k.
//   * Every allocation failure becomes RESOURCE_EXHAUSTED; nothing aborts.
#include "gemm_execute.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <map>
#include <new>
#include <string>
#include <thread>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "approx_multiply.h"
#include "fp_env.h"
#include "table_facts.h"

namespace approxjax {
namespace {

ffi::Error OutOfMemory(const char* target) {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                    std::string(target) + ": out of memory");
}

// The addition of block sums (or partial sums) under the accumulator: the
// k of its random bits lies past the products' (depth + block).
float AddBlocks(const Problem& p, const Accumulator& a, float total,
                float block, int64_t g, int64_t i, int64_t n, int64_t blk) {
  if (!a.enabled) return total + block;
  const uint32_t rnd =
      a.Stochastic() ? RandomBits(a.seed, g, i, n, p.depth + blk) : 0u;
  return AddRounded(total, block, a, rnd);
}

// One output by the reference rule over sum blocks [b0, b1): products in
// order of k from -0.0 per block, block sums added in order (under the
// accumulator, if any).
float SlowOutput(const Problem& p, int64_t g, int64_t oa, int64_t ob,
                 int64_t ol, int64_t i, int64_t n, int64_t b0, int64_t b1) {
  const Accumulator a = p.AccumulatorOf(ol);
  const float* lut = p.lut + (ol << (2 * p.m));
  float total = 0.0f;
  for (int64_t blk = b0; blk < b1; ++blk) {
    float acc = -0.0f;
    const int64_t k1 = std::min(p.depth, (blk + 1) * kSumBlock);
    for (int64_t k = blk * kSumBlock; k < k1; ++k) {
      const float x = p.Lhs(oa, i, k), y = p.Rhs(ob, k, n);
      if (!a.enabled) {
        acc += ApproxMultiply(x, y, lut, p.m);
        continue;
      }
      const float prod = a.exact_product ? x * y : ApproxMultiply(x, y, lut, p.m);
      uint32_t rp = 0, rs = 0;
      if (a.Stochastic()) {
        rp = RandomBits(a.seed ^ 0x5bd1e995u, g, i, n, k);
        rs = RandomBits(a.seed, g, i, n, k);
      }
      acc = AddRounded(acc, RoundProduct(prod, a, rp), a, rs);
    }
    total = blk == b0 ? acc : AddBlocks(p, a, total, acc, g, i, n, blk);
  }
  return total;
}

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
  Part parts[64];
  int n = 0;
  std::vector<Part> more;
  for (const PatchRun& run : p.runs) {
    const int64_t lo = std::max(k0, run.k), hi = std::min(k0 + kp, run.k + run.len);
    if (lo >= hi) continue;
    const Part part{lo - k0, run.off + (lo - run.k), hi - lo};
    if (n < 64) {
      parts[n++] = part;
    } else {
      more.push_back(part);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + row_base[r];
    float* dst = tile + r * kp;
    for (int q = 0; q < n + static_cast<int>(more.size()); ++q) {
      const Part& part = q < n ? parts[q] : more[q - n];
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

// Copies `rows` x `k` elements src[r * rs + k * ks] as pack_rows lays out
// its packed tile (k-major where PacksKMajor), unchanged: the raw operands
// of IEEE products.
void RawRows(const float* src, int64_t rows, int64_t k, int64_t rs, int64_t ks,
             float* out) {
  const bool kmajor = PacksKMajor(rs, ks);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t kk = 0; kk < k; ++kk) {
      out[kmajor ? kk * rows + r : r * k + kk] = src[r * rs + kk * ks];
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
  const TableFacts facts(p.FactsOf(ol), p.m);
  return p.swap == streamed ? facts.g() : facts.f();
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
    p.kernels->scale_rows(p.pre_scaled + at, s.scale.get(), s.idx.get(),
                          rows * kp, SeparableFactor(p, group.members[q].second, true));
  }
}

// What one member's build-and-sweep step of a unit works on: kc k of the
// packed streamed tile (rows x kc at idx/scale, element (r, k) at r * lr +
// k * lk) and of the tabled block (b[k * bk + c * bc], ncols columns), added
// into its output tile cblk.
struct TileStep {
  float* cblk;
  int64_t rows, lr, lk, kc;
  const uint16_t* idx;
  const float* scale;
  const float* b;
  int64_t bk, bc, ncols;
  // The whole packed tile (kp k from kp0) and where the unit is, for the
  // separable transform (its kc == kp).
  const uint16_t* tile_idx;
  const float* tile_scale;
  int64_t gi, rc, kp0, slot;
  TileCoords at;  // where the member's tile lies (stochastic bits)
};

// One inner-kernel kind: what it builds from the tabled block and how it
// sweeps the packed tile. New kinds (reduced accumulators, integer tables)
// are new TileSweeps.
class TileSweep {
 public:
  virtual ~TileSweep() = default;
  // Floats of per-tile table a worker needs.
  virtual int64_t TableFloats(const Problem& p) const = 0;
  virtual void Run(const Problem& p, int64_t ol, const TileStep& t,
                   Scratch& s) const = 0;
};

const float* LutRows(const Problem& p, int64_t ol) {
  const int64_t lut_size = int64_t{1} << (2 * p.m);
  return p.transposed_lut ? p.lut_t.data() + ol * lut_size : p.lut + ol * lut_size;
}

class TablesSweep final : public TileSweep {
 public:
  int64_t TableFloats(const Problem& p) const override {
    return p.kc * (int64_t{1} << p.m) * p.nc;
  }
  void Run(const Problem& p, int64_t ol, const TileStep& t,
           Scratch& s) const override {
    p.block->build_table(s.tab.get(), LutRows(p, ol), p.m, t.b, t.bk, t.bc,
                         t.kc, t.ncols, p.range, s.col_irregular.data());
    p.block->table_sweep(t.cblk, t.rows, t.idx, t.scale, t.lr, t.lk, t.kc,
                         s.tab.get(), p.m);
  }
};

// Builds the compact tables of one step (from the LUT's codes, planes or
// rows) into the worker's table buffer, and returns them.
const uint32_t* BuildCompactTables(const Problem& p, int64_t ol,
                                   const TileStep& t, Scratch& s) {
  uint32_t* tab = reinterpret_cast<uint32_t*>(s.tab.get());
  const TableFacts facts(p.FactsOf(ol), p.m);
  const bool transposed = !p.swap;  // tables read along the rhs index
  if (p.codes && facts.has(kCodes)) {
    p.block->build_compact_codes(tab, facts.codes(transposed),
                                 facts.code_base(), p.m, t.b, t.bk, t.bc,
                                 t.kc, t.ncols, p.range, s.col_irregular.data());
  } else if (p.planes) {
    p.block->build_compact_planes(tab, facts.planes(transposed), p.m, t.b,
                                  t.bk, t.bc, t.kc, t.ncols, p.range,
                                  s.col_irregular.data());
  } else {
    p.block->build_compact(tab, LutRows(p, ol), p.m, t.b, t.bk, t.bc, t.kc,
                           t.ncols, p.range, s.col_irregular.data());
  }
  return tab;
}

class CompactSweep final : public TileSweep {
 public:
  int64_t TableFloats(const Problem& p) const override {
    return p.kc * (int64_t{1} << p.m) * p.nc / 2;
  }
  void Run(const Problem& p, int64_t ol, const TileStep& t,
           Scratch& s) const override {
    p.block->compact_sweep(t.cblk, t.rows, t.idx, t.scale, t.lr, t.lk, t.kc,
                           BuildCompactTables(p, ol, t, s), p.m);
  }
};

class GathersSweep final : public TileSweep {
 public:
  int64_t TableFloats(const Problem&) const override { return 1; }
  void Run(const Problem& p, int64_t ol, const TileStep& t,
           Scratch& s) const override {
    p.block->direct_sweep(t.cblk, t.rows, t.idx, t.scale, t.lr, t.lk, t.kc,
                          LutRows(p, ol), p.m, t.b, t.bk, t.bc, t.ncols,
                          p.range, s.col_irregular.data());
  }
};

class SeparableSweep final : public TileSweep {
 public:
  int64_t TableFloats(const Problem& p) const override { return p.kc * p.nc; }
  void Run(const Problem& p, int64_t ol, const TileStep& t,
           Scratch& s) const override {
    const float* scaled = s.scaled.get();
    if (p.prescaled) {
      scaled = p.pre_scaled + p.PackedAt(t.slot, t.rc, t.kp0);
    } else {  // kc == kp: this member's whole packed tile
      p.kernels->scale_rows(s.scaled.get(), t.tile_scale, t.tile_idx,
                            t.rows * t.kc, SeparableFactor(p, ol, true));
    }
    p.block->build_separable(s.tab.get(), SeparableFactor(p, ol, false), p.m,
                             t.b, t.bk, t.bc, t.kc, t.ncols, p.range,
                             s.col_irregular.data());
    p.block->separable_sweep(t.cblk, t.rows, scaled, t.lr, t.lk, t.kc,
                             s.tab.get(), p.rounded);
  }
};

// Sums in a reduced or approximate accumulator (accumulate.h): products from
// per-tile tables, from a separable LUT's transformed operands, or IEEE
// products of the raw operands (no table), each added with AddRounded.
class AccumulateSweep final : public TileSweep {
 public:
  int64_t TableFloats(const Problem& p) const override {
    if (p.accumulate_separable) return p.kc * p.nc;
    return p.kc * (int64_t{1} << p.m) * p.nc / (p.accumulate_compact ? 2 : 1);
  }
  void Run(const Problem& p, int64_t ol, const TileStep& t,
           Scratch& s) const override {
    Accumulator a = p.AccumulatorOf(ol);
    // A product is a LUT entry times powers of two (the separable factors'
    // too), so it has the entry's bits; IEEE products of raw operands any.
    if (!a.exact_product) {
      a.product_bits = TableFacts(p.FactsOf(ol), p.m).significant_bits();
      // Separable factors' products that need no rounding are exact (the
      // float32 separable sweep fuses them likewise).
      a.products_exact = p.accumulate_separable && !p.rounded;
    }
    a.bfloat16_pairs = p.bfloat16_pairs;
    if (p.accumulate_compact) {
      p.block->accumulate_compact_sweep(t.cblk, t.rows, t.idx, t.scale, t.lr,
                                        t.lk, t.kc, BuildCompactTables(p, ol, t, s),
                                        p.m, a, t.at);
      return;
    }
    if (!p.accumulate_separable) {
      p.block->build_table(s.tab.get(), LutRows(p, ol), p.m, t.b, t.bk, t.bc,
                           t.kc, t.ncols, p.range, s.col_irregular.data());
      p.block->accumulate_table_sweep(t.cblk, t.rows, t.idx, t.scale, t.lr,
                                      t.lk, t.kc, s.tab.get(), p.m, a, t.at);
      return;
    }
    const float* values = s.scaled.get();
    float* tab = s.tab.get();
    if (a.exact_product) {  // raw operands: the packed tile holds them already
      values = t.tile_scale;
      for (int64_t kk = 0; kk < t.kc; ++kk) {
        for (int64_t c = 0; c < p.nc; ++c) {
          tab[kk * p.nc + c] = c < t.ncols ? t.b[kk * t.bk + c * t.bc] : 0.0f;
        }
      }
    } else {
      if (p.prescaled) {
        values = p.pre_scaled + p.PackedAt(t.slot, t.rc, t.kp0);
      } else {
        p.kernels->scale_rows(s.scaled.get(), t.tile_scale, t.tile_idx,
                              t.rows * t.kc, SeparableFactor(p, ol, true));
      }
      p.block->build_separable(tab, SeparableFactor(p, ol, false), p.m, t.b,
                               t.bk, t.bc, t.kc, t.ncols, p.range,
                               s.col_irregular.data());
    }
    p.block->accumulate_scaled_sweep(t.cblk, t.rows, values, t.lr, t.lk, t.kc,
                                     tab, a, t.at);
  }
};

const TileSweep& SweepFor(Sweep kind) {
  static const TablesSweep tables;
  static const CompactSweep compact;
  static const GathersSweep gathers;
  static const SeparableSweep separable;
  static const AccumulateSweep accumulate;
  switch (kind) {
    case Sweep::kAccumulate:
      return accumulate;
    case Sweep::kCompact:
      return compact;
    case Sweep::kGathers:
      return gathers;
    case Sweep::kSeparable:
      return separable;
    case Sweep::kTables:
    default:
      return tables;
  }
}

void RunUnit(const Problem& p, int64_t unit, Scratch& s) {
  const TileSweep& sweep = SweepFor(p.sweep);
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
  const int64_t r0 = rc * p.row_chunk;
  const int64_t rows = std::min(p.row_chunk, p.rows - r0);
  const int64_t c0 = cb * p.nc;
  const int64_t ncols = std::min<int64_t>(p.nc, p.cols - c0);
  const int64_t tile = p.row_chunk * p.nc;

  std::fill(s.row_irregular.begin(), s.row_irregular.end(), 0);
  std::fill(s.col_irregular.begin(), s.col_irregular.end(), 0);
  if (p.prepack) {  // this unit's rows' flags, from its blocks' tiles
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
      if (p.prepack) {
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
        if (p.accumulator.exact_product) {
          RawRows(src, rows, kp, rs, ks, s.scale.get());
        } else {
          p.kernels->pack_rows(src, rows, kp, rs, ks, p.m, p.range, s.idx.get(),
                               s.scale.get(), s.row_irregular.data());
        }
      }
      // Where packed element (r, k) lies: r * lr + k * lk.
      const bool kmajor = PacksKMajor(rs, ks);
      const int64_t lr = kmajor ? 1 : kp, lk = kmajor ? rows : 1;
      for (int64_t k0 = kp0; k0 < kp0 + kp; k0 += p.kc) {
        const int64_t kc = std::min(p.kc, kp0 + kp - k0);
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
        TileStep step{nullptr, rows, lr, lk, kc, tile_idx + (k0 - kp0) * lk,
                      tile_scale + (k0 - kp0) * lk, b, bk, bc, ncols,
                      tile_idx, tile_scale, gi, rc, kp0, 0, TileCoords{}};
        for (int64_t q = 0; q < members; ++q) {
          step.cblk = s.cblk.get() + q * tile;
          step.slot = gi * p.scaled_members + m0 + q;
          step.at = TileCoords{group.members[m0 + q].first, r0, c0, k0, p.swap};
          sweep.Run(p, group.members[m0 + q].second, step, s);
        }
      }
    }
    if (b1 - b0 > 1) {  // add this block's sums in order (the first as it is)
      float* t = s.total.get();
      const float* c = s.cblk.get();
      if (blk == b0) {
        std::copy(c, c + members * tile, t);
      } else if (!p.accumulator.enabled) {
        for (int64_t e = 0; e < members * tile; ++e) t[e] += c[e];
      } else {
        for (int64_t e = 0; e < members * tile; ++e) {
          const int64_t q = e / tile, r = e % tile / p.nc, col = e % p.nc;
          const TileCoords at{0, r0, c0, 0, p.swap};
          const auto [g, ol] = group.members[m0 + q];
          t[e] = AddBlocks(p, p.AccumulatorOf(ol), t[e], c[e], g, at.I(r, col),
                           at.N(r, col), blk);
        }
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
    float* out =
        (p.split > 1 ? p.partials + part * p.batch * p.m_rows * p.n_cols
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
            SlowOutput(p, g, group.oa, group.ob, ol, i, n, b0, b1);
      }
    }
  }
}

struct SharedState {
  std::unique_ptr<Problem> problem;
  std::atomic<int64_t> next_pack{0};
  std::atomic<int64_t> packed{0};  // prepacked tiles finished
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  std::atomic<bool> failed{false};
  int64_t workers = 1;
  ffi::CountDownPromise done;
};

// Adds the per-block partial outputs in order of block (split > 1).
void AddPartials(const Problem& p) {
  const int64_t size = p.batch * p.m_rows * p.n_cols;
  const float* part = p.partials;
  std::copy(part, part + size, p.out);
  for (int64_t b = 1; b < p.split; ++b) {
    part += size;
    if (!p.accumulator.enabled) {
      for (int64_t e = 0; e < size; ++e) p.out[e] += part[e];
      continue;
    }
    for (int64_t e = 0; e < size; ++e) {
      const int64_t g = e / (p.m_rows * p.n_cols);
      const int64_t i = e / p.n_cols % p.m_rows, n = e % p.n_cols;
      int64_t oa, ob, ol;
      BatchOffsets(g, p.out_lead, p.a, p.b, p.l, &oa, &ob, &ol);
      p.out[e] = AddBlocks(p, p.AccumulatorOf(ol), p.out[e], part[e], g, i, n, b);
    }
  }
}

// Reserves a worker's buffers for the plan (may throw std::bad_alloc).
void ReserveScratch(const Problem& p, Scratch& s) {
  s.cblk.Reserve(p.group_size * p.row_chunk * p.nc);
  s.idx.Reserve(p.row_chunk * p.kp);
  s.scale.Reserve(p.row_chunk * p.kp);
  if (p.sweep == Sweep::kSeparable || p.sweep == Sweep::kAccumulate) {
    s.scaled.Reserve(p.row_chunk * p.kp);
  }
  s.row_irregular.assign(p.row_chunk, 0);
  if (p.conv) {
    s.patch.Reserve(std::max(p.row_chunk * p.kp, p.kc * p.nc));
    s.row_base.resize(std::max({p.row_chunk, p.kp, int64_t{p.nc}}));
  }
  s.col_irregular.assign(p.nc, 0);
  s.tab.Reserve(SweepFor(p.sweep).TableFloats(p));
  if (p.split == 1 && p.sum_blocks > 1) {
    s.total.Reserve(p.group_size * p.row_chunk * p.nc);
  }
}

void Worker(const std::shared_ptr<SharedState>& state) {
  const Problem& p = *state->problem;
  const IeeeSubnormals ieee;  // keep subnormal sums while this worker runs
  try {
    thread_local Scratch s;
    ReserveScratch(p, s);
    if (p.prepack) {
      for (int64_t u = state->next_pack.fetch_add(1); u < p.pack_units;
           u = state->next_pack.fetch_add(1)) {
        PackUnit(p, u, s);  // allocates nothing: cannot throw
        state->packed.fetch_add(1, std::memory_order_release);
      }
      // Every tile is claimed by now, by a worker that is running: wait for
      // the others' last tiles (short), never for work not yet started.
      while (state->packed.load(std::memory_order_acquire) < p.pack_units &&
             !state->failed.load(std::memory_order_relaxed)) {
        std::this_thread::yield();
      }
    }
    for (int64_t u = state->next.fetch_add(1); u < p.units;
         u = state->next.fetch_add(1)) {
      RunUnit(p, u, s);
    }
  } catch (const std::bad_alloc&) {
    state->failed.store(true);
    state->done.CountDown(
        ffi::Error(ffi::ErrorCode::kResourceExhausted,
                   "approxjax: out of memory in a GEMM worker"));
    return;
  } catch (const std::exception& e) {
    state->failed.store(true);
    state->done.CountDown(ffi::Error::Internal(
        std::string("approxjax: GEMM worker failed: ") + e.what()));
    return;
  }
  // The last worker to finish adds the block partials, and gives the
  // prepacked operand's block back before the call completes (the next call
  // may want it while this state is still held).
  if (state->finished.fetch_add(1) + 1 == state->workers &&
      !state->failed.load()) {
    if (p.split > 1) AddPartials(p);
    state->problem->pre_block.Release();
  }
  state->done.CountDown();
}

// The summary of the call's tables, from their facts (checked to be theirs).
ffi::Error SummarizeTables(const Problem& p, const char* target,
                           TableSummary* summary) {
  const int64_t size = int64_t{1} << p.m;
  bool first = true;
  for (int64_t t = 0; t < p.l.matrix_count; ++t) {
    const TableFacts facts(p.FactsOf(t), p.m);
    if (!facts.BelongTo(p.lut + t * size * size)) {
      return ffi::Error::InvalidArgument(
          std::string(target) + ": the facts of table " + std::to_string(t) +
          " do not belong to it (they come from approxjax_analyze_lut of the "
          "same table)");
    }
    const bool sep = facts.has(kSeparable);
    summary->range = first ? facts.range() : std::min(summary->range, facts.range());
    summary->separable = (first || summary->separable) && sep;
    summary->separable_range =
        first ? facts.separable_range()
              : std::min(summary->separable_range, facts.separable_range());
    summary->rounded = summary->rounded || (sep && facts.has(kRounded));
    summary->compact_ok = (first || summary->compact_ok) &&
                          facts.has(kBfloat16Exact) && p.m <= kCompactMaxBits;
    summary->planes = (first || summary->planes) && facts.has(kPlanes);
    summary->codes = summary->codes || facts.has(kCodes);
    summary->significant_bits = first ? facts.significant_bits()
                                      : std::max(summary->significant_bits,
                                                 facts.significant_bits());
    first = false;
  }
  return ffi::Error::Success();
}

// The instruction-set extensions the kernels ask for at run time.
struct CpuExtensions {
  bool vbmi = false;  // AVX-512 VBMI: byte permutes
  bool bf16 = false;  // AVX-512 BF16: vcvtne2ps2bf16
};

const CpuExtensions& Cpu() {
  static const CpuExtensions cpu = [] {
    CpuExtensions c;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    c.vbmi = __builtin_cpu_supports("avx512vbmi") != 0;
    c.bf16 = __builtin_cpu_supports("avx512bf16") != 0;
#endif
    return c;
  }();
  return cpu;
}

}  // namespace

// Asks Linux for 2 MiB pages under the whole 2 MiB pages of a large output
// (MADV_HUGEPAGE: only a hint for how the pages are backed; the memory stays
// XLA's). XLA allocates outputs anew per call, and where transparent huge
// pages are "madvise" (as here) their first touch otherwise faults every
// 4 KiB page: a stack of eight 1024 x 1024 outputs, 32 MiB, faulted 8,000
// pages per call. KernelOptions(huge_pages=False) turns it off.
void AdviseHugePages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < int64_t{4} << 20) return;
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

Capabilities CapabilitiesOf(const KernelTable& kernels) {
  Capabilities caps;
  caps.bfloat16_pairs = kernels.bfloat16_pairs && Cpu().bf16;
  caps.planes = kernels.wide.build_compact_planes != nullptr;
  caps.codes = caps.planes && kernels.wide.build_compact_codes != nullptr &&
               Cpu().vbmi;
  return caps;
}

int64_t GemmInputs::RowBase(int64_t i) const {
  const ConvShape& g = geometry;
  int64_t q = i % g.pixels, off = i / g.pixels * g.image;
  for (int d = static_cast<int>(g.out_dims.size()) - 1; d >= 0; --d) {
    off += q % g.out_dims[d] * g.row_step[d];
    q /= g.out_dims[d];
  }
  return off;
}

float GemmInputs::Lhs(int64_t oa, int64_t i, int64_t k) const {
  const float* base = lhs + oa * lhs_matrix;
  if (conv) {
    const int64_t r = transpose_lhs ? k : i, col = transpose_lhs ? i : k;
    const int64_t c = geometry.channels;
    return base[RowBase(r) + geometry.tap_off[col / c] + col % c];
  }
  return transpose_lhs ? base[k * m_rows + i] : base[i * depth + k];
}

float GemmInputs::Rhs(int64_t ob, int64_t k, int64_t n) const {
  const float* base = rhs + ob * depth * n_cols;
  return transpose_rhs ? base[n * depth + k] : base[k * n_cols + n];
}

ffi::Future RunGemm(std::unique_ptr<Problem> problem, ffi::ThreadPool pool,
                    const GemmOptions& options, const KernelTable& kernels,
                    const char* target) {
  try {
    Problem& p = *problem;
    const int64_t out_elems = p.batch * p.m_rows * p.n_cols;
    if (out_elems == 0) return Done();
    if (p.depth == 0) {
      std::fill(p.out, p.out + out_elems, 0.0f);
      return Done();
    }
    p.kernels = &kernels;
    TableSummary summary;
    if (auto e = SummarizeTables(p, target, &summary); e.failure()) {
      return Failed(e);
    }
    // Group the batch by operand matrices: members differ only in their table.
    std::map<std::pair<int64_t, int64_t>, size_t> where;
    for (int64_t g = 0; g < p.batch; ++g) {
      int64_t oa, ob, ol;
      BatchOffsets(g, p.out_lead, p.a, p.b, p.l, &oa, &ob, &ol);
      auto [it, fresh] = where.try_emplace({oa, ob}, p.groups.size());
      if (fresh) p.groups.push_back(Group{oa, ob, {}});
      p.groups[it->second].members.emplace_back(g, ol);
    }
    ProblemShape shape;
    shape.m_rows = p.m_rows;
    shape.n_cols = p.n_cols;
    shape.depth = p.depth;
    shape.batch = p.batch;
    shape.groups = static_cast<int64_t>(p.groups.size());
    for (const Group& grp : p.groups) {
      shape.most = std::max(shape.most, static_cast<int64_t>(grp.members.size()));
    }
    shape.m = p.m;
    shape.transpose_lhs = p.transpose_lhs;
    shape.transpose_rhs = p.transpose_rhs;
    shape.conv = p.conv;
    shape.accumulate = p.accumulator.enabled;
    shape.exact_product = p.accumulator.exact_product;
    shape.bfloat16_sums = p.accumulator.Bfloat16Sums();
    static_cast<Plan&>(p) = PlanGemm(shape, summary, options,
                                     CapabilitiesOf(kernels), pool.num_threads());
    p.block = p.nc == kWideCols ? &kernels.wide : &kernels.narrow;
    const int64_t lhs_rs = p.transpose_lhs ? 1 : p.depth;
    const int64_t lhs_ks = p.transpose_lhs ? p.m_rows : 1;
    const int64_t rhs_ks = p.transpose_rhs ? 1 : p.n_cols;
    const int64_t rhs_cs = p.transpose_rhs ? p.depth : 1;
    if (!p.swap) {
      p.rows = p.m_rows, p.cols = p.n_cols;
      p.s_rs = lhs_rs, p.s_ks = lhs_ks, p.t_ks = rhs_ks, p.t_cs = rhs_cs;
    } else {
      p.rows = p.n_cols, p.cols = p.m_rows;
      p.s_rs = rhs_cs, p.s_ks = rhs_ks, p.t_ks = lhs_ks, p.t_cs = lhs_rs;
    }
    const int64_t size = int64_t{1} << p.m;
    if (p.transposed_lut) {  // rows by the rhs index
      p.lut_t.resize(p.l.matrix_count * size * size);
      for (int64_t t = 0; t < p.l.matrix_count; ++t) {
        const float* src = p.lut + t * size * size;
        float* dst = p.lut_t.data() + t * size * size;
        for (int64_t i = 0; i < size; ++i) {
          for (int64_t j = 0; j < size; ++j) dst[j * size + i] = src[i * size + j];
        }
      }
    }
    if (p.split > 1) {
      p.partial_store.resize(out_elems * p.split);
      p.partials = p.partial_store.data();
    }
    if (p.prepack) {  // one block, the arrays at 64-byte boundaries
      const auto up = [](int64_t bytes) { return (bytes + 63) / 64 * 64; };
      const int64_t elems = p.prepack_elems;
      const int64_t scaled_bytes =
          p.prescaled ? up(elems * p.scaled_members * 4) : 0;
      const int64_t idx_bytes = p.prescaled ? 0 : up(elems * 2);
      const int64_t scale_bytes = p.prescaled ? 0 : up(elems * 4);
      try {
        p.pre_block.data = BlockCache::Take(
            scaled_bytes + idx_bytes + scale_bytes + up(p.prepack_flags),
            &p.pre_block.size);
        char* at = p.pre_block.data.get();
        p.pre_scaled = p.prescaled ? reinterpret_cast<float*>(at) : nullptr;
        at += scaled_bytes;
        p.pre_idx = p.prescaled ? nullptr : reinterpret_cast<uint16_t*>(at);
        at += idx_bytes;
        p.pre_scale = p.prescaled ? nullptr : reinterpret_cast<float*>(at);
        at += scale_bytes;
        p.pre_irregular = reinterpret_cast<uint8_t*>(at);
        std::memset(p.pre_irregular, 0, p.prepack_flags);
      } catch (const std::bad_alloc&) {
        // Too little memory for the packed operand: pack per unit instead
        // (neither prepacked nor prescaled, so no unit reads the block).
        p.prepack = p.prescaled = false;
        p.pack_units = 0;
        p.scaled_members = 1;
      }
    }
    if (p.huge_pages) {
      AdviseHugePages(p.out, out_elems * static_cast<int64_t>(sizeof(float)));
    }
    const int64_t workers = std::min<int64_t>(p.threads, p.units);
    auto state = std::make_shared<SharedState>();
    state->problem = std::move(problem);
    state->workers = workers;
    return RunOnWorkers(pool, state, workers, Worker);
  } catch (const std::bad_alloc&) {
    return Failed(OutOfMemory(target));
  } catch (const std::exception& e) {
    return Failed(ffi::Error::Internal(std::string(target) + ": " + e.what()));
  }
}

}  // namespace approxjax

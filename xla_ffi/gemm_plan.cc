// The CPU GEMM's planner (gemm_plan.h): a cost model fitted to the kernels'
// measured costs, no global state.
#include "gemm_plan.h"

#include <algorithm>

#include "approx_multiply.h"
#include "gemm_kernels.h"

namespace approxjax {
namespace {

Tiling TileLayout(const ProblemShape& s, int64_t sum_blocks, bool swap, int nc,
                  int64_t threads) {
  const int64_t rows = swap ? s.n_cols : s.m_rows;
  const int64_t cols = swap ? s.m_rows : s.n_cols;
  Tiling t;
  t.col_blocks = (cols + nc - 1) / nc;
  // Members of a group share a packed tile while their output tiles fit the
  // budget. Rows per tile stay as many as for one multiplier: a table is
  // built per member and row tile, and building costs more than packing.
  t.row_chunk = std::min(kBlockRows, rows);
  t.group_size = std::clamp<int64_t>(kTileFloats / (t.row_chunk * nc), 1, s.most);
  t.row_chunks = (rows + t.row_chunk - 1) / t.row_chunk;
  t.member_chunks = (s.most + t.group_size - 1) / t.group_size;
  t.split = 1;
  const int64_t tiles = s.groups * t.member_chunks * t.col_blocks;
  // Too few units to keep several threads busy: run the sum blocks of a long
  // contraction as separate units (partial outputs, added in order at the
  // end), or else split rows further (which repeats the table builds).
  const int64_t out_elems = s.batch * s.m_rows * s.n_cols;
  if (threads == 1 || tiles * t.row_chunks >= 2 * threads) return t;
  if (sum_blocks > 1 && out_elems * sum_blocks <= kMaxPartialFloats) {
    t.split = sum_blocks;
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
// multiply-adds of the wide sweep: building a table entry costs about 2.5
// (8 for tables of m > 8, which outgrow the caches), a narrow block's
// multiply-add about 1.3, a gathered product DirectCost(m); transposing the
// LUT for tables read along the rhs index about 2 a LUT entry, once per
// call. Tables are built once per row chunk, so a layout whose output has
// too few tiles for the threads (and is cut into more row chunks) pays for
// more builds; a layout with fewer units than threads leaves threads idle.
void ChooseLayout(const ProblemShape& s, bool separable, bool rounded,
                  bool compact_ok, int64_t force, Plan* plan) {
  struct Option {
    bool swap, direct;
    int nc;
  };
  const Option options[] = {
      {false, false, kWideCols}, {false, false, kNarrowCols},
      {true, false, kWideCols},  {true, false, kNarrowCols},
      {false, true, kNarrowCols}, {true, true, kNarrowCols}};
  const double size = double(int64_t{1} << s.m);
  const double build = s.m <= 8 ? 2.5 : 8.0;
  const double depth = double(std::max<int64_t>(s.depth, 1));
  double best = -1;
  for (const Option& o : options) {
    if (o.direct && separable) continue;
    if ((force == 1 && o.direct) || (force == 2 && !o.direct)) continue;
    const Tiling t = TileLayout(s, plan->sum_blocks, o.swap, o.nc, plan->threads);
    const double rows = o.swap ? s.n_cols : s.m_rows;
    const double padded = double(t.col_blocks) * o.nc;
    double cost;  // per k
    double fixed = 0;
    if (o.direct) {
      cost = DirectCost(s.m) * rows * padded;
    } else if (separable) {
      // An FMA per product; the streamed tile packed for every column block
      // and the tabled block transformed for every row chunk, at about a
      // dozen FMAs per element where its columns are strided in memory.
      const bool strided = o.swap ? !s.transpose_lhs : s.transpose_rhs;
      cost = rows * padded * (o.nc == kNarrowCols ? 0.4 : 0.25) *
             (rounded ? 2.0 : 1.0);  // a multiply and an add per product
      cost += 3.0 * rows * double(t.col_blocks);
      cost += (strided ? 15.0 : 3.0) * padded * double(t.row_chunks);
    } else {
      const bool compact = o.nc == kWideCols && compact_ok;
      cost = rows * padded * (o.nc == kNarrowCols ? 1.3 : compact ? 0.55 : 1.0);
      cost += build * size * padded * t.row_chunks;
      if (!o.swap) fixed = 2.0 * size * size * double(s.most);  // lut^T of each table
    }
    const int64_t units = t.Units(s.groups);
    const double total = cost * depth / double(std::min(units, plan->threads)) + fixed;
    if (best < 0 || total < best) {
      best = total;
      plan->swap = o.swap;
      plan->sweep = o.direct ? Sweep::kGathers : Sweep::kTables;
      plan->nc = o.nc;
      static_cast<Tiling&>(*plan) = t;
    }
  }
}

// Packing the streamed operand once (Plan::prepack) where a unit would pack
// it again for every column block or chunk of members, and its patches are
// not gathered on the fly (no im2col buffer): for separable LUTs transformed
// for each member of a group (prescaled: 4 bytes per element and member)
// within kMaxPrescaledBytes, else as indices and scales (6 bytes per
// element) within kMaxPrepackBytes. Execution allocates it; a failed
// allocation leaves the per-unit packing.
void PlanPrepack(const ProblemShape& s, bool enabled, Plan* p) {
  p->prepack = p->prescaled = false;
  if (!enabled || (s.conv && !p->swap) || p->col_blocks * p->member_chunks < 2) {
    return;
  }
  const int64_t chunks = s.groups * p->row_chunks;
  const int64_t elems = chunks * p->row_chunk * s.depth;
  p->tiles_per_block = (std::min(s.depth, kSumBlock) + p->kp - 1) / p->kp;
  const int64_t flags = chunks * p->sum_blocks * p->tiles_per_block * p->row_chunk;
  const bool transformed = p->sweep == Sweep::kSeparable ||
                           (p->sweep == Sweep::kAccumulate && p->accumulate_separable);
  const bool prescaled = transformed &&
                         (s.most == 1 || elems * s.most * 4 <= kMaxPrescaledBytes);
  const int64_t members = prescaled ? s.most : 1;
  if (elems * (prescaled ? 4 * members : 6) + flags > kMaxPrepackBytes) return;
  p->prepack = true;
  p->prescaled = prescaled;
  p->scaled_members = members;
  p->prepack_elems = elems;
  p->prepack_flags = flags;
  p->pack_units = chunks * p->sum_blocks * p->tiles_per_block;
}

// bfloat16 sums rounded by vcvtne2ps2bf16, which flushes subnormals, where
// the products come from tables (or their separable factors) whose entries
// have b significant bits. A product of exponent e is then a multiple of
// 2**(e - b + 1); narrowing the regular range by b / 2 keeps e >= -126 + b
// - 1 (RegularExponentRange: e >= -126 for the full range, the separable
// range likewise), so every product, every sum of them (from zero) and
// every sum rounded to bfloat16, or to nearest or odd at float32, is a
// multiple of 2**-126: zero or normal. Operands beyond the narrowed range
// (|x| < 2**-59 for Mitchell's tables) take the exact scalar rule, as other
// irregular operands do. IEEE products of raw operands have no range: they
// take the pairs where the operand formats make every product a multiple of
// 2**-126 (ProblemShape::bfloat16_sums: E4M3 x E4M3 products are multiples
// of 2**-18), not otherwise.
void PlanBfloat16Pairs(const ProblemShape& s, const TableSummary& tables,
                       const Capabilities& caps, Plan* p) {
  constexpr int kLeastRange = 32;  // not worth narrowing below
  if (!s.accumulate || !s.bfloat16_sums || !caps.bfloat16_pairs || p->nc != kWideCols) {
    return;
  }
  if (!s.exact_product) {  // (IEEE products are multiples of 2**-126: bfloat16_sums)
    const int narrowed = p->range - tables.significant_bits / 2;
    if (narrowed < kLeastRange) return;
    p->range = narrowed;
  }
  p->bfloat16_pairs = true;
}

}  // namespace

Plan PlanGemm(const ProblemShape& s, const TableSummary& tables,
              const GemmOptions& options, const Capabilities& caps,
              int64_t threads) {
  Plan p;
  // Small problems run inline; others on XLA's intra-op pool plus the caller.
  const double work = double(s.batch) * s.m_rows * s.n_cols * s.depth;
  p.threads = work < 2e6 ? 1 : std::max<int64_t>(threads, 1);
  p.sum_blocks = std::max<int64_t>((s.depth + kSumBlock - 1) / kSumBlock, 1);
  // IEEE products (no table) run as a separable LUT with raw operands.
  const bool separable = s.exact_product ||
                         (tables.separable && tables.separable_range >= 0 &&
                          options.separable && options.gemm == 0);
  const bool compact_ok = tables.compact_ok && options.compact;
  ChooseLayout(s, separable, separable && (tables.rounded || s.exact_product),
               compact_ok, s.accumulate ? 1 : options.gemm, &p);
  if (separable) p.sweep = Sweep::kSeparable;
  p.rounded = separable && tables.rounded;
  p.range = separable ? tables.separable_range : tables.range;
  if (p.sweep == Sweep::kTables && p.nc == kWideCols && compact_ok) {
    p.sweep = Sweep::kCompact;
    p.planes = caps.planes && options.planes && tables.planes;
    p.codes = p.planes && caps.codes && options.codes && tables.codes;
  }
  const bool compact = p.sweep == Sweep::kCompact;
  if (s.accumulate) {
    p.accumulate_separable = separable;
    p.accumulate_compact = compact;
    p.sweep = Sweep::kAccumulate;
    p.range = s.exact_product ? -1 : p.range;
    PlanBfloat16Pairs(s, tables, caps, &p);
  }
  const bool direct = p.sweep == Sweep::kGathers;
  p.transposed_lut = p.swap == direct && !separable;
  // At most kPackDepth k per table (small m would allow thousands), so that a
  // worker's packed tile, kept between calls, stays under 1 MiB.
  const int64_t size = int64_t{1} << s.m;
  const int64_t depth = std::max<int64_t>(s.depth, 1);
  p.kc = direct || separable
             ? std::min(depth, kPackDepth)
             : std::clamp<int64_t>(
                   kTableFloats / (size * p.nc) * (compact ? 2 : 1),
                   1, std::min(depth, kPackDepth));
  p.kp = std::min(depth, (kPackDepth + p.kc - 1) / p.kc * p.kc);
  p.units = p.Units(s.groups);
  PlanPrepack(s, options.prepack && !s.exact_product, &p);
  p.huge_pages = options.huge_pages;
  return p;
}

std::string DescribePlan(const Plan& p, bool conv) {
  std::string d = p.sweep == Sweep::kGathers     ? "gathers"
                  : p.sweep == Sweep::kSeparable ? (p.rounded ? "separable rounded"
                                                              : "separable")
                  : p.sweep == Sweep::kCompact   ? "compact tables"
                  : p.sweep == Sweep::kAccumulate
                      ? (p.accumulate_separable ? "accumulate separable"
                         : p.accumulate_compact   ? "accumulate compact tables"
                                                  : "accumulate tables")
                      : "tables";
  d += " nc=" + std::to_string(p.nc) + (p.swap ? " stream=rhs" : " stream=lhs");
  if (conv) d += " im2col";
  if (p.prepack) d += p.prescaled ? " prescaled" : " prepacked";
  if (p.planes) d += p.codes ? " codes" : " planes";
  if (p.bfloat16_pairs) d += " bfloat16-pairs range=" + std::to_string(p.range);
  d += " row_chunk=" + std::to_string(p.row_chunk) +
       " split=" + std::to_string(p.split) + " units=" + std::to_string(p.units);
  return d;
}

}  // namespace approxjax

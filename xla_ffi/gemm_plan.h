// Planning the CPU GEMM: a pure function from the problem's shape, the facts
// of its tables, the call's options and the thread count to a Plan (which
// inner kernel, which operand is streamed, block width, tiling, packing).
// Execution (gemm_execute.cc) only follows the plan; the Python module
// exposes PlanGemm to tests, so planning is tested deterministically.
#ifndef APPROXJAX_GEMM_PLAN_H_
#define APPROXJAX_GEMM_PLAN_H_

#include <cstdint>
#include <string>

namespace approxjax {

// Budgets measured on a 2-core Zen machine (benchmarks/RESULTS.md): an
// L2-sized table (fewer passes over the output block) beat an L1-sized one.
constexpr int64_t kTableFloats = 64 * 1024;  // 256 KiB of per-tile table
constexpr int64_t kBlockRows = 1024;         // rows of an output tile
constexpr int64_t kPackDepth = 128;  // k of the streamed tile packed at once
constexpr int64_t kTileFloats = 128 * 1024;     // output tiles of one unit
constexpr int64_t kMaxPartialFloats = 1 << 22;  // 16 MiB of block partials
constexpr int64_t kMaxPrepackBytes = int64_t{1} << 30;  // see PlanGemm
constexpr int64_t kMaxPrescaledBytes = int64_t{1} << 28;
// A gathered product, in wide-sweep multiply-adds, by m: tables up to m = 8
// (256 KiB) stay in cache; from larger ones most gathers miss (measured at
// 128^3 and 256^3 on the 2-core Xeon: 0.4, 0.9 and 3 ns a product at m = 9,
// 10 and 12, against 0.03 ns for a multiply-add of the sweep).
inline double DirectCost(int m) {
  return m <= 8 ? 4.7 : m == 9 ? 14.0 : m == 10 ? 29.0 : m == 11 ? 60.0 : 100.0;
}

// Kernel choices of one call: static FFI attributes of the custom call, so
// part of the compiled program (approxjax.KernelOptions in Python).
// Decoded from the dictionary attribute "options" (gemm_handlers.cc); the
// members' order is the decoding's.
struct GemmOptions {
  int64_t gemm = 0;        // 0: cost model; 1: force tables; 2: force gathers
  bool separable = true;   // separable LUTs as GEMMs of transformed operands
  bool compact = true;     // compact (16-bit) tables for bfloat16-exact LUTs
  bool planes = true;      // ... built from planes by word permutes
  bool codes = true;       // ... or from byte codes (AVX-512 VBMI)
  bool prepack = true;     // pack the streamed operand once per call
  bool huge_pages = true;  // MADV_HUGEPAGE on large outputs
  int64_t variant = 0;     // 0: best for this CPU; 1 baseline, 2 AVX2, 3 AVX-512
  bool check = false;      // GPU: synchronise and check after every launch
};

// What the planner needs to know of the operands.
struct ProblemShape {
  int64_t m_rows = 0, n_cols = 0, depth = 0;  // M, N, K
  int64_t batch = 1;   // output matrices
  int64_t groups = 1;  // distinct operand pairs (members differ in tables)
  int64_t most = 1;    // members of the largest group
  int m = 0;           // mantissa bits
  bool transpose_lhs = false, transpose_rhs = false;
  bool conv = false;   // the lhs is a padded input's patches (implicit im2col)
  bool accumulate = false;     // a reduced or approximate accumulator
  bool exact_product = false;  // IEEE float32 products (no table)
  // bfloat16 sums, nearest-even, exact adder, products not rounded (and
  // IEEE products multiples of 2**-126: Accumulator::Bfloat16Sums)
  bool bfloat16_sums = false;
};

// What the planner needs to know of the call's tables (from their facts).
struct TableSummary {
  int range = -1;            // least regular exponent range of the tables
  bool separable = false;    // every table separable
  int separable_range = -1;  // least range of the transformed operands
  bool rounded = false;      // some table factors only after rounding
  bool compact_ok = false;   // every table bfloat16-exact (and m small)
  bool planes = false;       // every table has planes
  bool codes = false;        // some table has byte codes
  int significant_bits = 24;  // the most of any table's entries
};

// What the chosen kernel variant and the CPU can do.
struct Capabilities {
  bool planes = false;  // compact tables built from planes (AVX-512BW)
  bool codes = false;   // ... from byte codes (AVX-512 VBMI)
  bool bfloat16_pairs = false;  // bfloat16 rounding by vcvtne2ps2bf16
};

enum class Sweep : int {
  kTables = 0,
  kCompact = 1,
  kGathers = 2,
  kSeparable = 3,
  kAccumulate = 4,  // tables, transformed or raw operands, then AddRounded
};

// How the output is cut into units of work.
struct Tiling {
  int64_t row_chunk = 1, row_chunks = 1;      // rows of the streamed side per unit
  int64_t group_size = 1, member_chunks = 1;  // multipliers per unit
  int64_t col_blocks = 1;
  int64_t split = 1;  // 1, or sum_blocks when blocks run as separate units
  int64_t Units(int64_t groups) const {
    return groups * member_chunks * col_blocks * row_chunks * split;
  }
};

struct Plan : Tiling {
  Sweep sweep = Sweep::kTables;
  bool swap = false;  // stream rhs^T and table lhs^T
  int nc = 64;        // column block width: kWideCols or kNarrowCols
  int range = -1;     // regular exponent range the kernels use
  bool rounded = false;
  bool accumulate_separable = false;  // kAccumulate on transformed operands
  bool accumulate_compact = false;    // kAccumulate on compact tables
  // kAccumulate: bfloat16 sums rounded by vcvtne2ps2bf16 (Capabilities),
  // the range narrowed so that no sum is subnormal (PlanBfloat16Pairs).
  bool bfloat16_pairs = false;
  bool transposed_lut = false;  // tables read along the rhs index: lut^T
  bool planes = false;  // compact tables from planes, where a table has them
  bool codes = false;   // ... or from codes, where a table has them
  int64_t threads = 1;  // workers wanted
  int64_t sum_blocks = 1;
  int64_t kc = 1;  // k of one per-tile table
  int64_t kp = 1;  // k packed at a time: a multiple of kc
  int64_t units = 0;
  // Packing the streamed operand once, before the units (or per unit):
  bool prepack = false, prescaled = false;
  int64_t tiles_per_block = 0, pack_units = 0, scaled_members = 1;
  int64_t prepack_elems = 0, prepack_flags = 0;  // sizes of its buffers
  bool huge_pages = false;
};

// The plan of one call. `threads` is the pool's size (the plan uses one
// thread for small problems).
Plan PlanGemm(const ProblemShape& shape, const TableSummary& tables,
              const GemmOptions& options, const Capabilities& caps,
              int64_t threads);

// A one-line description: "compact tables nc=64 stream=lhs codes ...".
std::string DescribePlan(const Plan& plan, bool conv);

}  // namespace approxjax

#endif  // APPROXJAX_GEMM_PLAN_H_

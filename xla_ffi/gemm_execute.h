// Executing a planned CPU GEMM: the validated inputs of a call, its plan and
// its buffers, and the launch of its units of work on XLA's thread pool.
#ifndef APPROXJAX_GEMM_EXECUTE_H_
#define APPROXJAX_GEMM_EXECUTE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "accumulate.h"
#include "cpu_buffers.h"
#include "gemm_kernels.h"
#include "gemm_plan.h"
#include "shapes.h"
#include "xla/ffi/api/ffi.h"

namespace approxjax {

namespace ffi = xla::ffi;

// Output batch elements that read the same operand matrices (and differ only
// in their table): computed together so they share packing.
struct Group {
  int64_t oa, ob;
  std::vector<std::pair<int64_t, int64_t>> members;  // (batch index, lut offset)
};

// Columns [k, k + len) of every patch: contiguous in the input from its
// row's base plus off (consecutive taps merge where their channels abut).
struct PatchRun {
  int64_t k, off, len;
};

// The validated operands of one call.
struct GemmInputs {
  const float* lhs = nullptr;
  const float* rhs = nullptr;
  const float* lut = nullptr;
  const uint32_t* facts = nullptr;  // FactsWords(m) per table
  float* out = nullptr;
  int64_t m_rows = 0, n_cols = 0, depth = 0;  // M, N, K
  int m = 0;                                  // mantissa bits
  bool transpose_lhs = false, transpose_rhs = false;
  std::vector<int64_t> out_lead;
  Operand a, b, l;
  int64_t batch = 1;  // product of out_lead
  std::vector<Group> groups;
  int64_t lhs_matrix = 0;  // elements of one lhs matrix (or one conv input)
  int64_t facts_words = 0;
  Accumulator accumulator;  // reduced or approximate sums (accumulate.h)
  const uint32_t* noise = nullptr;  // two words per table: stochastic seeds
  // Implicit im2col (approxjax_conv_gemm): patch row r, column k is element
  // RowBase(r) + tap_off[k / C] + k % C of the padded input; the lhs is the
  // patches, or their transpose (the weight gradient) with transpose_lhs.
  bool conv = false;
  ConvShape geometry;
  std::vector<PatchRun> runs;

  int64_t RowBase(int64_t i) const;
  float Lhs(int64_t oa, int64_t i, int64_t k) const;
  float Rhs(int64_t ob, int64_t k, int64_t n) const;
};

// The buffers of one call (besides each worker's own): the transposed
// tables, the block partials and the prepacked streamed operand.
struct GemmBuffers {
  std::vector<float> lut_t;     // per table, when the plan reads lut^T
  std::vector<float> partial_store;  // behind partials
  float* partials = nullptr;         // [split][batch][M][N] when split > 1
  CachedBlock pre_block;        // holds the four below
  uint16_t* pre_idx = nullptr;
  float* pre_scale = nullptr;
  float* pre_scaled = nullptr;
  uint8_t* pre_irregular = nullptr;
};

// One call: inputs, plan and buffers, and the layout derived from them.
struct Problem : GemmInputs, Plan, GemmBuffers {
  // Streamed side (rows R) and tabled side (cols C), both of depth K.
  int64_t rows = 0, cols = 0;
  int64_t s_rs = 0, s_ks = 0, t_ks = 0, t_cs = 0;  // element strides
  const KernelTable* kernels = nullptr;
  const BlockKernels* block = nullptr;

  // Where the prepacked tile of group gi, row chunk rc and k from kp0 is (for
  // member q of the group at slot gi * scaled_members + q when prescaled),
  // and its rows' irregular flags.
  int64_t PackedAt(int64_t slot, int64_t rc, int64_t kp0) const {
    return ((slot * row_chunks + rc) * depth + kp0) * row_chunk;
  }
  int64_t IrregularAt(int64_t gi, int64_t rc, int64_t tile) const {
    return ((gi * row_chunks + rc) * sum_blocks * tiles_per_block + tile) *
           row_chunk;
  }
  const uint32_t* FactsOf(int64_t ol) const {
    return facts + ol * facts_words;
  }
  // The accumulator of table ol's members (its stochastic seed).
  Accumulator AccumulatorOf(int64_t ol) const {
    Accumulator a = accumulator;
    if (noise != nullptr) {
      a.seed = (uint64_t{noise[2 * ol]} << 32) | noise[2 * ol + 1];
    }
    return a;
  }
};

// What a kernel variant and this CPU can do (for the planner).
Capabilities CapabilitiesOf(const KernelTable& kernels);

// A future that has already failed with `error`, or already completed: what
// an asynchronous handler returns when it decides before any work starts.
inline ffi::Future Failed(ffi::Error error) {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetError(std::move(error));
  return future;
}

inline ffi::Future Done() {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetAvailable();
  return future;
}

// Asks Linux for 2 MiB pages under the whole 2 MiB pages of an output of
// at least 4 MiB (gemm_execute.cc).
void AdviseHugePages(void* data, int64_t bytes);

// Runs worker(state) on `workers` threads, this one and workers - 1 of the
// pool; the future completes when each has counted state->done down.
template <typename State, typename Worker>
ffi::Future RunOnWorkers(ffi::ThreadPool& pool, std::shared_ptr<State> state,
                         int64_t workers, Worker worker) {
  state->done = ffi::CountDownPromise(workers);
  ffi::Future future(state->done);
  for (int64_t w = 1; w < workers; ++w) {
    pool.Schedule([state, worker] { worker(state); });
  }
  worker(state);
  return future;
}

// Plans and runs a checked problem (inputs set; the plan is made here).
ffi::Future RunGemm(std::unique_ptr<Problem> problem, ffi::ThreadPool pool,
                    const GemmOptions& options, const KernelTable& kernels,
                    const char* target);

}  // namespace approxjax

#endif  // APPROXJAX_GEMM_EXECUTE_H_

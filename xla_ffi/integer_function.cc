// approxjax_int_function_gemm: out[g, m, n] = sum_k f(a[g, m, k], b[g, k, n])
// for integer multipliers whose operands are too wide for a table (more than
// 12 bits): f is the user's compiled C model, called in process through the
// address of approxjax_integer_entry (long long f(long long, long long), the
// wrapper c_build.build_library adds). Operands are int32 operand values
// (not bit patterns: 16-bit codes use all 65536 patterns), checked against
// [lo, hi] before any call; each leading dimension of lhs and rhs is out's or
// 1. Sums are exact in int64 (an int64 overflow is an error); an int32 result
// is an error where a sum does not fit it, a float32 result is each exact
// sum rounded once to nearest-even.
//
// One call per product, through a pointer: this path is slow by nature
// (benchmarks/RESULTS.md measures it); threads share the rows.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gemm_cpu.h"
#include "gemm_execute.h"
#include "shapes.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace approxjax {
namespace {

using IntegerEntry = long long (*)(long long, long long);

constexpr int64_t kRowsPerUnit = 4;

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("approxjax_int_function_gemm: " + what);
}

struct FnProblem {
  const int32_t* a = nullptr;
  const int32_t* b = nullptr;
  int32_t* out_i32 = nullptr;
  float* out_f32 = nullptr;
  IntegerEntry fn = nullptr;
  BatchShape shape;  // M, N, K; out's leading dims; lhs, rhs broadcast
  int64_t chunks = 1, units = 0;
};

struct FnState {
  std::unique_ptr<FnProblem> problem;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::string error;  // the first failure's message
  ffi::CountDownPromise done;
};

// Rows [r0, r0 + rows) of batch member g; false (with `why`) on an overflow.
bool RunRows(const FnProblem& p, int64_t g, int64_t r0, int64_t rows,
             std::vector<int64_t>& acc, std::string& why) {
  const int64_t n = p.shape.n_cols, k_len = p.shape.depth;
  const int32_t* a = p.a + MatrixOffset(g, p.shape.out_lead, p.shape.a) * p.shape.m_rows * k_len;
  const int32_t* b = p.b + MatrixOffset(g, p.shape.out_lead, p.shape.b) * k_len * n;
  acc.resize(static_cast<size_t>(n));
  for (int64_t r = r0; r < r0 + rows; ++r) {
    std::fill(acc.begin(), acc.end(), 0);
    bool overflow = false;
    for (int64_t k = 0; k < k_len; ++k) {
      const long long x = a[r * k_len + k];
      const int32_t* brow = b + k * n;
      for (int64_t j = 0; j < n; ++j) {
        const long long prod = p.fn(x, brow[j]);
        overflow |= __builtin_add_overflow(acc[j], prod, &acc[j]);
      }
    }
    const int64_t at = (g * p.shape.m_rows + r) * n;
    if (overflow) {
      why = "a sum of row " + std::to_string(r) + " of batch member " +
            std::to_string(g) + " overflows int64";
      return false;
    }
    if (p.out_f32 != nullptr) {
      for (int64_t j = 0; j < n; ++j) p.out_f32[at + j] = static_cast<float>(acc[j]);
      continue;
    }
    for (int64_t j = 0; j < n; ++j) {
      if (acc[j] > std::numeric_limits<int32_t>::max() ||
          acc[j] < std::numeric_limits<int32_t>::min()) {
        why = "the sum at out[" + std::to_string(g) + ", " + std::to_string(r) +
              ", " + std::to_string(j) + "] = " + std::to_string(acc[j]) +
              " does not fit int32 (ask for float32 sums: "
              "preferred_element_type=jnp.float32)";
        return false;
      }
      p.out_i32[at + j] = static_cast<int32_t>(acc[j]);
    }
  }
  return true;
}

void FnWorker(const std::shared_ptr<FnState>& state) {
  const FnProblem& p = *state->problem;
  std::vector<int64_t> acc;
  std::string why;
  try {
    for (int64_t u = state->next.fetch_add(1); u < p.units && !state->failed;
         u = state->next.fetch_add(1)) {
      const int64_t g = u / p.chunks, r0 = (u % p.chunks) * kRowsPerUnit;
      const int64_t rows = std::min(kRowsPerUnit, p.shape.m_rows - r0);
      if (!RunRows(p, g, r0, rows, acc, why)) {
        std::lock_guard<std::mutex> lock(state->mutex);
        if (!state->failed.exchange(true)) state->error = why;
        break;
      }
    }
  } catch (const std::bad_alloc&) {
    std::lock_guard<std::mutex> lock(state->mutex);
    if (!state->failed.exchange(true)) state->error = "out of memory";
  }
  if (state->failed) {
    std::lock_guard<std::mutex> lock(state->mutex);
    state->done.CountDown(Invalid(state->error));
    return;
  }
  state->done.CountDown();
}

// The first value of x[0, n) outside [lo, hi], or false.
bool OutOfRange(const int32_t* x, int64_t n, int64_t lo, int64_t hi,
                int64_t* at) {
  for (int64_t e = 0; e < n; ++e) {
    if (x[e] < lo || x[e] > hi) {
      *at = e;
      return true;
    }
  }
  return false;
}

ffi::Future IntFunctionGemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> lhs,
                                ffi::Buffer<ffi::S32> rhs,
                                ffi::Result<ffi::AnyBuffer> out,
                                int64_t address, int64_t lo_a, int64_t hi_a,
                                int64_t lo_b, int64_t hi_b) {
  try {
    const auto ld = lhs.dimensions(), rd = rhs.dimensions(),
               od = out->dimensions();
    const auto type = out->element_type();
    if (type != ffi::DataType::S32 && type != ffi::DataType::F32) {
      return Failed(Invalid("out must be int32 or float32"));
    }
    if (address == 0) return Failed(Invalid("no function address"));
    auto p = std::make_unique<FnProblem>();
    if (auto e = CheckIntGemm("approxjax_int_function_gemm", ld, rd, nullptr, od,
                              &p->shape);
        e.failure()) {
      return Failed(std::move(e));
    }
    const int64_t count_a = p->shape.a.matrix_count, count_b = p->shape.b.matrix_count;
    p->a = lhs.typed_data();
    p->b = rhs.typed_data();
    int64_t at = 0;
    if (OutOfRange(p->a, count_a * p->shape.m_rows * p->shape.depth, lo_a, hi_a, &at)) {
      return Failed(Invalid("lhs holds " + std::to_string(p->a[at]) +
                            ", outside the operand range [" +
                            std::to_string(lo_a) + ", " + std::to_string(hi_a) + "]"));
    }
    if (OutOfRange(p->b, count_b * p->shape.depth * p->shape.n_cols, lo_b, hi_b, &at)) {
      return Failed(Invalid("rhs holds " + std::to_string(p->b[at]) +
                            ", outside the operand range [" +
                            std::to_string(lo_b) + ", " + std::to_string(hi_b) + "]"));
    }
    const int64_t out_elems = p->shape.batch * p->shape.m_rows * p->shape.n_cols;
    if (type == ffi::DataType::F32) {
      p->out_f32 = static_cast<float*>(out->untyped_data());
      std::fill(p->out_f32, p->out_f32 + out_elems, 0.0f);
    } else {
      p->out_i32 = static_cast<int32_t*>(out->untyped_data());
      std::fill(p->out_i32, p->out_i32 + out_elems, 0);
    }
    if (out_elems == 0 || p->shape.depth == 0) return Done();
    p->fn = reinterpret_cast<IntegerEntry>(static_cast<uintptr_t>(address));
    p->chunks = (p->shape.m_rows + kRowsPerUnit - 1) / kRowsPerUnit;
    p->units = p->shape.batch * p->chunks;
    const int64_t threads = std::max<int64_t>(1, pool.num_threads());
    const int64_t workers = std::min(threads, p->units);
    auto state = std::make_shared<FnState>();
    state->problem = std::move(p);
    return RunOnWorkers(pool, state, workers, FnWorker);
  } catch (const std::bad_alloc&) {
    return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                             "approxjax_int_function_gemm: out of memory"));
  } catch (const std::exception& e) {
    return Failed(ffi::Error::Internal(
        std::string("approxjax_int_function_gemm: ") + e.what()));
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntegerFunctionGemmCpu, IntFunctionGemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lhs [..., M, K]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // rhs [..., K, N]
                                  .Ret<ffi::AnyBuffer>()         // out [..., M, N]
                                  .Attr<int64_t>("address")
                                  .Attr<int64_t>("lo_a")
                                  .Attr<int64_t>("hi_a")
                                  .Attr<int64_t>("lo_b")
                                  .Attr<int64_t>("hi_b"));

}  // namespace approxjax

// CUDA host handlers of the FFI targets "approxjax_gemm",
// "approxjax_multiply" and "approxjax_int_gemm" (and the benchmark-only
// "approxjax_prior_art_gemm").
// Shapes are checked by xla_ffi/shapes.h, exactly as on the CPU; the
// operands are the CPU targets' (the tables' facts, which the CUDA kernels do
// not read: they scan each table on the device) and so are the attributes
// (GemmOptions: the CPU's kernel choices, ignored here, and `check`). Kernels
// run on the stream XLA hands over, with no synchronisation, unless the
// options ask to check: then each launch is followed by a synchronisation
// and a check of the stream (for first runs on a new GPU). Every launch is
// checked and a failure comes back as an ffi::Error.
#include "gemm_cuda.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "accumulate.h"
#include "attribute_decoding.h"
#include "gemm_plan.h"
#include "kernels.h"
#include "shapes.h"

namespace approxjax {
namespace {

using cuda::GemmArgs;
using cuda::TableInfo;

ffi::Error CudaError(const char* target, const char* what, cudaError_t e) {
  return ffi::Error::Internal(std::string(target) + ": " + what + ": " +
                              cudaGetErrorString(e));
}

// Fills the launch arguments shared by all targets; allocates the per-table
// scratch from XLA's allocator.
ffi::Error Prepare(const char* target, const BatchShape& s,
                   ffi::ScratchAllocator& scratch, GemmArgs* args) {
  if (s.out_lead.size() > size_t(cuda::kMaxLead)) {
    return ffi::Error::InvalidArgument(
        std::string(target) + ": at most " + std::to_string(cuda::kMaxLead) +
        " leading dimensions on the GPU; got " +
        std::to_string(s.out_lead.size()));
  }
  args->m_rows = s.m_rows;
  args->n_cols = s.n_cols;
  args->depth = s.depth;
  args->m = s.m;
  args->batch = s.batch;
  args->table_count = s.l.matrix_count;
  args->layout.nlead = static_cast<int>(s.out_lead.size());
  for (size_t d = 0; d < s.out_lead.size(); ++d) {
    args->layout.out_lead[d] = s.out_lead[d];
    args->layout.a_stride[d] = s.a.lead_stride[d];
    args->layout.b_stride[d] = s.b.lead_stride[d];
    args->layout.l_stride[d] = s.l.lead_stride[d];
  }
  auto mem = scratch.Allocate(sizeof(TableInfo) * s.l.matrix_count,
                              alignof(TableInfo));
  if (!mem.has_value()) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(target) + ": no scratch memory for " +
                          std::to_string(s.l.matrix_count) + " table checks");
  }
  args->tables = static_cast<TableInfo*>(*mem);
  return ffi::Error::Success();
}

using Launcher = cudaError_t (*)(const GemmArgs&, cudaStream_t);

// A launch's error, or with `check` the stream's after a synchronisation.
ffi::Error Launched(const char* target, cudaError_t launched,
                    cudaStream_t stream, bool check) {
  if (launched != cudaSuccess) return CudaError(target, "kernel launch", launched);
  if (!check) return ffi::Error::Success();
  if (cudaError_t e = cudaStreamSynchronize(stream); e != cudaSuccess) {
    return CudaError(target, "kernel run (checked)", e);
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    return CudaError(target, "kernel run (checked)", e);
  }
  return ffi::Error::Success();
}

ffi::Error GemmWith(const char* target, Launcher launch, cudaStream_t stream,
                    int32_t device, ffi::ScratchAllocator& scratch,
                    ffi::Buffer<ffi::F32> lhs, ffi::Buffer<ffi::F32> rhs,
                    ffi::Buffer<ffi::F32> lut, ffi::ResultBuffer<ffi::F32> out,
                    bool transpose_lhs, bool transpose_rhs, bool check) {
  BatchShape s;
  if (auto e = CheckGemm(lhs.dimensions(), rhs.dimensions(), lut.dimensions(),
                         out->dimensions(), transpose_lhs, transpose_rhs, &s);
      e.failure()) {
    return e;
  }
  const int64_t out_elems = s.batch * s.m_rows * s.n_cols;
  if (out_elems == 0) return ffi::Error::Success();
  if (s.depth == 0) {  // empty sums are +0.0, as on the CPU
    if (cudaError_t e = cudaMemsetAsync(out->typed_data(), 0,
                                        sizeof(float) * out_elems, stream);
        e != cudaSuccess) {
      return CudaError(target, "cudaMemsetAsync", e);
    }
    return ffi::Error::Success();
  }
  GemmArgs args{};
  if (auto e = Prepare(target, s, scratch, &args); e.failure()) return e;
  args.lhs = lhs.typed_data();
  args.rhs = rhs.typed_data();
  args.lut = lut.typed_data();
  args.out = out->typed_data();
  args.transpose_lhs = transpose_lhs;
  args.transpose_rhs = transpose_rhs;
  args.device = device;
  return Launched(target, launch(args, stream), stream, check);
}

// What the GPU kernels do not run yet: a clear error, not a wrong result.
ffi::Error Unsupported(const char* target, const ArithmeticSpec& a) {
  if (!a.enabled) return ffi::Error::Success();
  return ffi::Error(
      ffi::ErrorCode::kUnimplemented,
      std::string(target) +
          ": reduced or approximate accumulators, product formats and IEEE "
          "products (Arithmetic with accumulator=, product=, adder= or no "
          "multiplier) run on the CPU only for now; run this GEMM with "
          "JAX_PLATFORMS=cpu");
}

ffi::Error ApproxGemmImpl(cudaStream_t stream, int32_t device,
                          ffi::ScratchAllocator scratch,
                          ffi::Buffer<ffi::F32> lhs, ffi::Buffer<ffi::F32> rhs,
                          ffi::Buffer<ffi::F32> lut, ffi::Buffer<ffi::U32>,
                          ffi::Buffer<ffi::U32>, ffi::ResultBuffer<ffi::F32> out,
                          bool transpose_lhs, bool transpose_rhs,
                          GemmOptions options, ArithmeticSpec arithmetic) {
  if (auto e = Unsupported("approxjax_gemm", arithmetic); e.failure()) return e;
  return GemmWith("approxjax_gemm", cuda::LaunchApproxGemm, stream, device,
                  scratch, lhs, rhs, lut, out, transpose_lhs, transpose_rhs,
                  options.check);
}

ffi::Error PriorArtGemmImpl(cudaStream_t stream, int32_t device,
                            ffi::ScratchAllocator scratch,
                            ffi::Buffer<ffi::F32> lhs,
                            ffi::Buffer<ffi::F32> rhs,
                            ffi::Buffer<ffi::F32> lut, ffi::Buffer<ffi::U32>,
                            ffi::Buffer<ffi::U32>, ffi::ResultBuffer<ffi::F32> out,
                            bool transpose_lhs, bool transpose_rhs,
                            GemmOptions options, ArithmeticSpec arithmetic) {
  if (auto e = Unsupported("approxjax_prior_art_gemm", arithmetic); e.failure()) {
    return e;
  }
  return GemmWith("approxjax_prior_art_gemm", cuda::LaunchPriorArtGemm, stream,
                  device, scratch, lhs, rhs, lut, out, transpose_lhs,
                  transpose_rhs, options.check);
}

ffi::Error ApproxMultiplyImpl(cudaStream_t stream, int32_t device,
                              ffi::ScratchAllocator scratch,
                              ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                              ffi::Buffer<ffi::F32> lut,
                              ffi::Buffer<ffi::U32>,
                              ffi::ResultBuffer<ffi::F32> out) {
  const char* target = "approxjax_multiply";
  BatchShape s;
  if (auto e = CheckMultiply(a.dimensions(), b.dimensions(), lut.dimensions(),
                             out->dimensions(), &s);
      e.failure()) {
    return e;
  }
  if (s.batch * s.n_cols == 0) return ffi::Error::Success();
  GemmArgs args{};
  if (auto e = Prepare(target, s, scratch, &args); e.failure()) return e;
  args.lhs = a.typed_data();
  args.rhs = b.typed_data();
  args.lut = lut.typed_data();
  args.out = out->typed_data();
  args.device = device;
  return Launched(target, cuda::LaunchApproxMultiply(args, stream), stream,
                  false);
}

// approxjax_int_gemm on the GPU (the CPU target's operands and attributes;
// variant, gemm, pairs and bytes choose CPU kernels and are ignored here).
// The sums' overflow bound is checked on the Python side, as on the CPU
// (whose handler also scans the table: here the table is on the device).
// An index outside the table is reported after the kernel: the handler
// synchronises with the stream to read the flag.
ffi::Error IntegerGemmImpl(cudaStream_t stream, ffi::ScratchAllocator scratch,
                           ffi::Buffer<ffi::U16> lhs, ffi::Buffer<ffi::U16> rhs,
                           ffi::Buffer<ffi::S32> lut, ffi::ResultBuffer<ffi::S32> out,
                           int64_t, int64_t, bool, bool, bool) {
  const char* target = "approxjax_int_gemm";
  const auto ld = lhs.dimensions(), rd = rhs.dimensions(), td = lut.dimensions(),
             od = out->dimensions();
  BatchShape shape;
  if (auto e = CheckIntGemm(target, ld, rd, &td, od, &shape); e.failure()) return e;
  cuda::IntGemmArgs args{};
  args.m_rows = shape.m_rows;
  args.depth = shape.depth;
  args.n_cols = shape.n_cols;
  args.side_a = td[td.size() - 2];
  args.side_b = td[td.size() - 1];
  if (args.side_a < 1 || args.side_a > 4096 || args.side_b < 1 || args.side_b > 4096) {
    return ffi::Error::InvalidArgument(std::string(target) +
                                       ": table sides must be 1..4096; got " + DimsString(td));
  }
  const std::vector<int64_t>& lead = shape.out_lead;
  if (lead.size() > size_t(cuda::kMaxLead)) {
    return ffi::Error::InvalidArgument(std::string(target) + ": at most " +
                                       std::to_string(cuda::kMaxLead) +
                                       " leading dimensions on the GPU");
  }
  const Operand &a = shape.a, &b = shape.b, &l = shape.l;
  args.batch = shape.batch;
  const int64_t out_elems = args.batch * args.m_rows * args.n_cols;
  if (out_elems == 0) return ffi::Error::Success();
  if (args.depth == 0) {
    if (cudaError_t e = cudaMemsetAsync(out->typed_data(), 0, sizeof(int32_t) * out_elems,
                                        stream);
        e != cudaSuccess) {
      return CudaError(target, "cudaMemsetAsync", e);
    }
    return ffi::Error::Success();
  }
  args.layout.nlead = static_cast<int>(lead.size());
  for (size_t d = 0; d < lead.size(); ++d) {
    args.layout.out_lead[d] = lead[d];
    args.layout.a_stride[d] = a.lead_stride[d];
    args.layout.b_stride[d] = b.lead_stride[d];
    args.layout.l_stride[d] = l.lead_stride[d];
  }
  auto flag = scratch.Allocate(sizeof(int), alignof(int));
  if (!flag.has_value()) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(target) + ": no scratch memory for its flag");
  }
  args.lhs = lhs.typed_data();
  args.rhs = rhs.typed_data();
  args.lut = lut.typed_data();
  args.out = out->typed_data();
  args.bad = static_cast<int*>(*flag);
  if (auto e = Launched(target, cuda::LaunchIntegerGemm(args, stream), stream, false);
      e.failure()) {
    return e;
  }
  int bad = 0;
  if (cudaError_t e = cudaMemcpyAsync(&bad, args.bad, sizeof(int), cudaMemcpyDeviceToHost,
                                      stream);
      e != cudaSuccess) {
    return CudaError(target, "reading the range flag", e);
  }
  if (cudaError_t e = cudaStreamSynchronize(stream); e != cudaSuccess) {
    return CudaError(target, "kernel run", e);
  }
  if (bad != 0) {
    return ffi::Error::InvalidArgument(
        std::string(target) +
        ": an operand code is outside the multiplier's code range (its index is outside "
        "the table " + DimsString(td) + ")");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntegerGemmCuda, IntegerGemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::Buffer<ffi::U16>>()  // lhs [..., M, K]
                                  .Arg<ffi::Buffer<ffi::U16>>()  // rhs [..., K, N]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lut [..., A, B]
                                  .Ret<ffi::Buffer<ffi::S32>>()  // out [..., M, N]
                                  .Attr<int64_t>("variant")      // CPU only
                                  .Attr<int64_t>("gemm")         // CPU only
                                  .Attr<bool>("pairs")           // CPU only
                                  .Attr<bool>("bytes")           // CPU only
                                  .Attr<bool>("huge_pages"));    // CPU only

#define APPROXJAX_GEMM_BINDING                                   \
  ffi::Ffi::Bind()                                               \
      .Ctx<ffi::PlatformStream<cudaStream_t>>()                  \
      .Ctx<ffi::DeviceOrdinal>()                                 \
      .Ctx<ffi::ScratchAllocator>()                              \
      .Arg<ffi::Buffer<ffi::F32>>() /* lhs [..., M, K] */        \
      .Arg<ffi::Buffer<ffi::F32>>() /* rhs [..., K, N] */        \
      .Arg<ffi::Buffer<ffi::F32>>() /* lut [..., 2**m, 2**m] */  \
      .Arg<ffi::Buffer<ffi::U32>>() /* facts (CPU only) */       \
      .Arg<ffi::Buffer<ffi::U32>>() /* noise (CPU only) */       \
      .Ret<ffi::Buffer<ffi::F32>>() /* out [..., M, N] */        \
      .Attr<bool>("transpose_lhs")  /* lhs stored [..., K, M] */ \
      .Attr<bool>("transpose_rhs")  /* rhs stored [..., N, K] */ \
      .Attr<GemmOptions>("options") /* kernel choices, check */  \
      .Attr<ArithmeticSpec>("arithmetic") /* CPU only when on */

XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxGemmCuda, ApproxGemmImpl,
                              APPROXJAX_GEMM_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PriorArtGemmCuda, PriorArtGemmImpl,
                              APPROXJAX_GEMM_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    ApproxMultiplyCuda, ApproxMultiplyImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Ctx<ffi::DeviceOrdinal>()
        .Ctx<ffi::ScratchAllocator>()
        .Arg<ffi::Buffer<ffi::F32>>()   // a [..., n]
        .Arg<ffi::Buffer<ffi::F32>>()   // b [..., n]
        .Arg<ffi::Buffer<ffi::F32>>()   // lut [..., 2**m, 2**m]
        .Arg<ffi::Buffer<ffi::U32>>()   // facts (CPU only)
        .Ret<ffi::Buffer<ffi::F32>>());  // out [..., n]

}  // namespace approxjax

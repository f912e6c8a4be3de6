// The CUDA FFI handlers, registered for platform "CUDA" under the same target
// names as the CPU handlers (xla_ffi/gemm_cpu.h documents the operands).
#ifndef APPROXJAX_CUDA_GEMM_CUDA_H_
#define APPROXJAX_CUDA_GEMM_CUDA_H_

#include "xla/ffi/api/ffi.h"

namespace approxjax {

XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxGemmCuda);      // "approxjax_gemm"
XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxMultiplyCuda);  // "approxjax_multiply"
XLA_FFI_DECLARE_HANDLER_SYMBOL(IntegerGemmCuda);     // "approxjax_int_gemm"
// The prior art's 16x16-tile design, for benchmarks only.
XLA_FFI_DECLARE_HANDLER_SYMBOL(PriorArtGemmCuda);  // "approxjax_prior_art_gemm"

}  // namespace approxjax

#endif  // APPROXJAX_CUDA_GEMM_CUDA_H_

// The CPU approximate batched GEMM behind the FFI target "approxjax_gemm".
#ifndef APPROXJAX_GEMM_CPU_H_
#define APPROXJAX_GEMM_CPU_H_

#include <string>

#include "xla/ffi/api/ffi.h"

namespace approxjax {

// XLA FFI handler: out[..., M, N] = sum_k approx(lhs[..., M, K], rhs[..., K, N])
// with numpy-style broadcasting over the leading dimensions of lhs, rhs, lut
// and out (all of one rank), lhs stored (K, M) when transpose_lhs and rhs
// stored (N, K) when transpose_rhs, and lut[..., 2**m, 2**m].
XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxGemmCpu);

// XLA FFI handler: the same GEMM with the patches of a padded input as lhs,
// read in place (implicit im2col): out[..., N, P, O] from x[..., N, S.., C],
// rhs[..., prod(kernel) * C, O] and attributes kernel, strides, dilation
// (shapes.h, CheckConvGemm).
XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxConvGemmCpu);

// XLA FFI handler: out[..., n] = approx(a[..., n], b[..., n]) elementwise, with
// the leading dimensions of a, b, lut[..., 2**m, 2**m] and out broadcast.
XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxMultiplyCpu);

// Name of the kernel variant chosen on this CPU ("Avx2", "Baseline", ...).
const char* CpuKernelName();

// The layout the latest CPU GEMM ran with ("tables nc=64 stream=lhs ...";
// empty before the first): for tests and profiling.
std::string LastGemmLayout();

}  // namespace approxjax

#endif  // APPROXJAX_GEMM_CPU_H_

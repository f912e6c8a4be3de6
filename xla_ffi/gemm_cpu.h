// The CPU FFI targets of approxjax and what the Python module asks of them.
//
//   approxjax_gemm       out[..., M, N] = sum_k approx(lhs[..., M, K],
//                        rhs[..., K, N]) under lut[..., 2**m, 2**m] and its
//                        facts (table_facts.h), numpy-style broadcasting over
//                        the leading dimensions; lhs stored (K, M) when
//                        transpose_lhs, rhs (N, K) when transpose_rhs
//   approxjax_conv_gemm  the same GEMM with the patches of a padded input as
//                        lhs, read in place (implicit im2col; shapes.h)
//   approxjax_multiply   out[..., n] = approx(a[..., n], b[..., n])
//   approxjax_int_gemm   out[..., M, N] = sum_k lut[..., a[..., M, K],
//                        b[..., K, N]] in int32 (integer multipliers;
//                        integer_gemm.cc)
//   approxjax_analyze_lut  facts[..., FactsWords(m)] of lut[..., 2**m, 2**m]
//
// The GEMMs take their kernel choices as the dictionary attribute "options"
// (GemmOptions, gemm_plan.h).
#ifndef APPROXJAX_GEMM_CPU_H_
#define APPROXJAX_GEMM_CPU_H_

#include <cstdint>
#include <string>

#include "gemm_plan.h"
#include "xla/ffi/api/ffi.h"

namespace approxjax {

XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxGemmCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxConvGemmCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ApproxMultiplyCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(IntegerGemmCpu);
XLA_FFI_DECLARE_HANDLER_SYMBOL(IntegerFunctionGemmCpu);

// Name of the default kernel variant on this CPU ("Avx2", "Baseline", ...).
const char* CpuKernelName();

// DescribePlan of the plan a GEMM of `shape` would run (for tests); empty
// where the options name a variant this CPU lacks.
std::string PlanDescription(const ProblemShape& shape,
                            const TableSummary& tables,
                            const GemmOptions& options, int64_t threads);

}  // namespace approxjax

#endif  // APPROXJAX_GEMM_CPU_H_

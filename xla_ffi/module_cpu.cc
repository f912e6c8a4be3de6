// nanobind module _approxjax_cpu: exports the CPU FFI handlers as capsules,
// and the planner (for tests).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "capsule.h"
#include "gemm_cpu.h"
#include "table_facts.h"

namespace nb = nanobind;

using approxjax::EncapsulateFfiHandler;

namespace {

template <typename T>
T Get(const nb::dict& d, const char* key, T fallback) {
  return d.contains(key) ? nb::cast<T>(d[key]) : fallback;
}

// The plan of a GEMM described by `shape`, `tables` and `options` (dicts
// whose keys are the C++ structs' members; gemm_plan.h).
std::string Plan(const nb::dict& shape, const nb::dict& tables,
                 const nb::dict& options, int64_t threads) {
  approxjax::ProblemShape s;
  s.m_rows = Get<int64_t>(shape, "m_rows", 0);
  s.n_cols = Get<int64_t>(shape, "n_cols", 0);
  s.depth = Get<int64_t>(shape, "depth", 0);
  s.batch = Get<int64_t>(shape, "batch", 1);
  s.groups = Get<int64_t>(shape, "groups", 1);
  s.most = Get<int64_t>(shape, "most", 1);
  s.m = Get<int>(shape, "m", 0);
  s.transpose_lhs = Get<bool>(shape, "transpose_lhs", false);
  s.transpose_rhs = Get<bool>(shape, "transpose_rhs", false);
  s.conv = Get<bool>(shape, "conv", false);
  approxjax::TableSummary t;
  t.range = Get<int>(tables, "range", -1);
  t.separable = Get<bool>(tables, "separable", false);
  t.separable_range = Get<int>(tables, "separable_range", -1);
  t.rounded = Get<bool>(tables, "rounded", false);
  t.compact_ok = Get<bool>(tables, "compact_ok", false);
  t.planes = Get<bool>(tables, "planes", false);
  t.codes = Get<bool>(tables, "codes", false);
  approxjax::GemmOptions o;
  o.gemm = Get<int64_t>(options, "gemm", 0);
  o.separable = Get<bool>(options, "separable", true);
  o.compact = Get<bool>(options, "compact", true);
  o.planes = Get<bool>(options, "planes", true);
  o.codes = Get<bool>(options, "codes", true);
  o.prepack = Get<bool>(options, "prepack", true);
  o.huge_pages = Get<bool>(options, "huge_pages", true);
  o.variant = Get<int64_t>(options, "variant", 0);
  return approxjax::PlanDescription(s, t, o, threads);
}

}  // namespace

NB_MODULE(_approxjax_cpu, m) {
  m.doc() = "approxjax CPU kernels (XLA FFI handlers).";
  m.def("registrations", []() {
    nb::dict d;
    d["approxjax_gemm"] = EncapsulateFfiHandler(approxjax::ApproxGemmCpu);
    d["approxjax_conv_gemm"] =
        EncapsulateFfiHandler(approxjax::ApproxConvGemmCpu);
    d["approxjax_multiply"] =
        EncapsulateFfiHandler(approxjax::ApproxMultiplyCpu);
    d["approxjax_int_gemm"] = EncapsulateFfiHandler(approxjax::IntegerGemmCpu);
    d["approxjax_int_function_gemm"] =
        EncapsulateFfiHandler(approxjax::IntegerFunctionGemmCpu);
    d["approxjax_analyze_lut"] = EncapsulateFfiHandler(approxjax::AnalyzeLutCpu);
    return d;
  });
  m.def("kernel_variant", []() { return approxjax::CpuKernelName(); },
        "The default instruction-set variant of the CPU kernels on this CPU.");
  m.def("facts_words", [](int mbits) { return approxjax::FactsWords(mbits); },
        "Words of a table's facts for m mantissa bits.");
  m.def("plan", &Plan, nb::arg("shape"), nb::arg("tables"), nb::arg("options"),
        nb::arg("threads"),
        "The plan (a description) of a CPU GEMM: a pure function of the "
        "problem's shape, its tables' facts, the options and the threads.");
}

// nanobind module _approxjax_cpu: exports the CPU FFI handlers as capsules.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "capsule.h"
#include "gemm_cpu.h"

namespace nb = nanobind;

using approxjax::EncapsulateFfiHandler;

NB_MODULE(_approxjax_cpu, m) {
  m.doc() = "approxjax CPU kernels (XLA FFI handlers).";
  m.def("registrations", []() {
    nb::dict d;
    d["approxjax_gemm"] = EncapsulateFfiHandler(approxjax::ApproxGemmCpu);
    d["approxjax_conv_gemm"] =
        EncapsulateFfiHandler(approxjax::ApproxConvGemmCpu);
    d["approxjax_multiply"] =
        EncapsulateFfiHandler(approxjax::ApproxMultiplyCpu);
    return d;
  });
  m.def("kernel_variant", []() { return approxjax::CpuKernelName(); },
        "The instruction-set variant of the CPU kernels chosen on this CPU.");
  m.def("last_gemm_layout", []() { return approxjax::LastGemmLayout(); },
        "The layout the latest CPU GEMM ran with (tests, profiling).");
}

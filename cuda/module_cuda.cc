// nanobind module _approxjax_cuda: exports the CUDA FFI handlers as capsules.
// Compiled by the host compiler (nanobind never goes through nvcc); cudart is
// linked statically, so the module imports on machines without a GPU.
#include <cuda_runtime.h>
#include <nanobind/nanobind.h>

#include "capsule.h"
#include "gemm_cuda.h"

namespace nb = nanobind;

using approxjax::EncapsulateFfiHandler;

NB_MODULE(_approxjax_cuda, m) {
  m.doc() = "approxjax CUDA kernels (XLA FFI handlers).";
  m.def("registrations", []() {
    nb::dict d;
    d["approxjax_gemm"] = EncapsulateFfiHandler(approxjax::ApproxGemmCuda);
    d["approxjax_multiply"] =
        EncapsulateFfiHandler(approxjax::ApproxMultiplyCuda);
    d["approxjax_int_gemm"] = EncapsulateFfiHandler(approxjax::IntegerGemmCuda);
    d["approxjax_prior_art_gemm"] =
        EncapsulateFfiHandler(approxjax::PriorArtGemmCuda);
    return d;
  });
  m.def(
      "device_count",
      []() {
        int n = 0;
        return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
      },
      "CUDA devices visible to this process (0 without a GPU or driver).");
}

// How the GEMM targets decode their two struct attributes, "options"
// (KernelOptions.attribute()) and "arithmetic" (ArithmeticAttribute), for the
// CPU and the CUDA handlers alike. The member names and types here are the
// keys and types of the Python dicts.
#ifndef APPROXJAX_XLA_FFI_ATTRIBUTE_DECODING_H_
#define APPROXJAX_XLA_FFI_ATTRIBUTE_DECODING_H_

#include <cstdint>

#include "accumulate.h"
#include "gemm_plan.h"
#include "xla/ffi/api/ffi.h"

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    approxjax::GemmOptions, ::xla::ffi::StructMember<int64_t>("gemm"),
    ::xla::ffi::StructMember<bool>("separable"),
    ::xla::ffi::StructMember<bool>("compact"),
    ::xla::ffi::StructMember<bool>("planes"),
    ::xla::ffi::StructMember<bool>("codes"),
    ::xla::ffi::StructMember<bool>("prepack"),
    ::xla::ffi::StructMember<bool>("huge_pages"),
    ::xla::ffi::StructMember<int64_t>("variant"),
    ::xla::ffi::StructMember<bool>("check"));

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    approxjax::ArithmeticSpec, ::xla::ffi::StructMember<bool>("enabled"),
    ::xla::ffi::StructMember<bool>("exact_product"),
    ::xla::ffi::StructMember<int64_t>("product_bits"),
    ::xla::ffi::StructMember<int64_t>("product_exponent"),
    ::xla::ffi::StructMember<bool>("products_exact"),
    ::xla::ffi::StructMember<int64_t>("acc_m"),
    ::xla::ffi::StructMember<int64_t>("acc_emin"),
    ::xla::ffi::StructMember<float>("acc_max"),
    ::xla::ffi::StructMember<bool>("acc_subnormals"),
    ::xla::ffi::StructMember<int64_t>("acc_overflow"),
    ::xla::ffi::StructMember<int64_t>("acc_nan"),
    ::xla::ffi::StructMember<bool>("acc_inf"),
    ::xla::ffi::StructMember<int64_t>("acc_rounding"),
    ::xla::ffi::StructMember<bool>("product"),
    ::xla::ffi::StructMember<int64_t>("prod_m"),
    ::xla::ffi::StructMember<int64_t>("prod_emin"),
    ::xla::ffi::StructMember<float>("prod_max"),
    ::xla::ffi::StructMember<bool>("prod_subnormals"),
    ::xla::ffi::StructMember<int64_t>("prod_overflow"),
    ::xla::ffi::StructMember<int64_t>("prod_nan"),
    ::xla::ffi::StructMember<bool>("prod_inf"),
    ::xla::ffi::StructMember<int64_t>("prod_rounding"),
    ::xla::ffi::StructMember<int64_t>("adder"),
    ::xla::ffi::StructMember<int64_t>("loa_bits"),
    ::xla::ffi::StructMember<int64_t>("adder_address"));

#endif  // APPROXJAX_XLA_FFI_ATTRIBUTE_DECODING_H_

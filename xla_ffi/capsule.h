// The one way both extension modules hand an FFI handler to Python.
#ifndef APPROXJAX_CAPSULE_H_
#define APPROXJAX_CAPSULE_H_

#include <nanobind/nanobind.h>

namespace approxjax {

// A capsule holding an XLA FFI handler, for jax.ffi.register_ffi_target.
template <typename T>
nanobind::capsule EncapsulateFfiHandler(T* fn) {
  return nanobind::capsule(reinterpret_cast<void*>(fn));
}

}  // namespace approxjax

#endif  // APPROXJAX_CAPSULE_H_

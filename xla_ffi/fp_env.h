// The floating-point environment of the CPU kernels: IEEE float32 additions
// that keep subnormal results. XLA runs its CPU threads with flush-to-zero
// and denormals-are-zero set; a kernel that summed under those modes would
// flush a running sum that became subnormal, which the model (and
// reference.sequential_dot_general, and the CUDA kernels) keep. A guard
// clears the two modes while a kernel runs on a thread and restores them.
#ifndef APPROXJAX_FP_ENV_H_
#define APPROXJAX_FP_ENV_H_

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace approxjax {

class IeeeSubnormals {
 public:
  IeeeSubnormals() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ & ~(kFlushToZero | kDenormalsAreZero));
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    saved_ = fpcr;
    fpcr &= ~(uint64_t{1} << 24);  // FZ
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr));
#endif
  }
  ~IeeeSubnormals() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    _mm_setcsr(static_cast<unsigned>(saved_));
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_));
#endif
  }
  IeeeSubnormals(const IeeeSubnormals&) = delete;
  IeeeSubnormals& operator=(const IeeeSubnormals&) = delete;

 private:
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  uint64_t saved_ = 0;
};

}  // namespace approxjax

#endif  // APPROXJAX_FP_ENV_H_

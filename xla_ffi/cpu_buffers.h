// Memory of the CPU GEMM: aligned arrays, a small cache of large blocks kept
// between calls, and per-worker buffers that grow on demand. Every
// allocation here throws std::bad_alloc on failure; the handlers turn that
// into an ffi::Error (RESOURCE_EXHAUSTED), never a crash.
#ifndef APPROXJAX_CPU_BUFFERS_H_
#define APPROXJAX_CPU_BUFFERS_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace approxjax {

struct AlignedDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using AlignedArray = std::unique_ptr<T[], AlignedDeleter>;

template <typename T>
AlignedArray<T> AllocateAligned(int64_t n) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return AlignedArray<T>(static_cast<T*>(p));
}

// Large per-call buffers (the prepacked operand), kept between calls up to
// kCachedBytes in all: allocated anew on every call, tens of MiB cost a page
// fault per 4 KiB page on every call (a quarter of the time of a stack of
// eight 1024^3 GEMMs).
constexpr int64_t kCachedBytes = int64_t{128} << 20;

class BlockCache {
 public:
  // A block of at least `bytes` (64-byte aligned): a kept one, or new.
  static AlignedArray<char> Take(int64_t bytes, int64_t* size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = blocks_.end();
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        if (it->first >= bytes &&
            (best == blocks_.end() || it->first < best->first)) {
          best = it;
        }
      }
      if (best != blocks_.end()) {
        *size = best->first;
        AlignedArray<char> block = std::move(best->second);
        kept_ -= best->first;
        blocks_.erase(best);
        return block;
      }
    }
    *size = bytes;
    return AllocateAligned<char>(bytes);
  }
  // Keeps a block for later calls (dropping the oldest beyond kCachedBytes).
  static void Give(AlignedArray<char> block, int64_t size) noexcept {
    if (size > kCachedBytes) return;
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      blocks_.emplace_back(size, std::move(block));
    } catch (const std::bad_alloc&) {
      return;  // not kept: the block is freed
    }
    kept_ += size;
    while (kept_ > kCachedBytes) {
      kept_ -= blocks_.front().first;
      blocks_.erase(blocks_.begin());
    }
  }

 private:
  static inline std::mutex mutex_;
  static inline std::vector<std::pair<int64_t, AlignedArray<char>>> blocks_;
  static inline int64_t kept_ = 0;
};

// A block from BlockCache, given back when the call's problem is freed.
struct CachedBlock {
  AlignedArray<char> data;
  int64_t size = 0;
  CachedBlock() = default;
  CachedBlock(const CachedBlock&) = delete;
  CachedBlock& operator=(const CachedBlock&) = delete;
  void Release() noexcept {
    if (data) BlockCache::Give(std::move(data), size);
  }
  ~CachedBlock() { Release(); }
};

// An aligned buffer that keeps its memory between calls and grows on demand.
template <typename T>
class Buffer {
 public:
  T* get() const { return data_.get(); }
  void Reserve(int64_t n) {
    if (n <= capacity_) return;
    data_.reset();  // release before allocating the larger one
    capacity_ = 0;
    data_ = AllocateAligned<T>(n);
    capacity_ = n;
  }

 private:
  AlignedArray<T> data_;
  int64_t capacity_ = 0;
};

}  // namespace approxjax

#endif  // APPROXJAX_CPU_BUFFERS_H_

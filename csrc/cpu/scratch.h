// Per-thread, 64-byte (cache-line) aligned scratch buffers (reused across chunks, never shared):
// a 16-float vector access that straddles two lines costs two.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

// Internal linkage on purpose: this header is compiled once per instruction set (encode.cpp,
// decode.cpp built with and without -mavx2), and shared linkage would let the linker keep one
// set's copy of these inline functions for both.
namespace dk {
namespace {

template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t n = 0) { resize(n); }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  void resize(size_t n) {  // contents are zeroed
    std::free(data_);
    size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!data_) throw std::bad_alloc();
    for (size_t i = 0; i < n; ++i) data_[i] = T();
    size_ = n;
  }
  T* data() { return data_; }
  T& operator[](size_t i) { return data_[i]; }
  size_t size() const { return size_; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace
}  // namespace dk

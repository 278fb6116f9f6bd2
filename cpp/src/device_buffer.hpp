// A device buffer that grows to the largest batch seen, with the out-of-memory rule the Python
// TensorRT backend follows: a failed allocation is a typed BackendUnavailableError naming the
// tensor, the size and the fix, and leaves the buffer empty (not "reserved" with a null
// pointer), so a later, smaller batch allocates again and runs.
//
// The allocator is a parameter (cudaMalloc/cudaFree in backend_tensorrt.cpp), so the rule is
// tested without a GPU (tests/test_device_buffer.cpp).
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>

#include "dit/errors.hpp"

namespace dit {

/// Allocator: `std::string allocate(void** ptr, std::size_t bytes)` returns "" on success, else
/// the allocator's reason ("out of memory"); `void release(void* ptr)` frees.
template <typename Allocator>
class GrowingBuffer {
 public:
  explicit GrowingBuffer(Allocator allocator = Allocator()) : allocator_(std::move(allocator)) {}
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  ~GrowingBuffer() { clear(); }

  /// Make room for `bytes` of tensor `name` of `owner` (an engine file, for the message).
  void reserve(std::size_t bytes, const std::string& name, const std::string& owner) {
    if (bytes <= bytes_ && ptr_ != nullptr) return;
    clear();  // free first: the old and the new buffer need not fit together
    void* fresh = nullptr;
    const std::string why = allocator_.allocate(&fresh, bytes);
    if (!why.empty() || fresh == nullptr) {
      char size[32];
      std::snprintf(size, sizeof size, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
      throw BackendUnavailableError(
          "cannot allocate " + std::string(size) + " of GPU memory for '" + name + "' of " +
          owner + ": " + (why.empty() ? "no pointer returned" : why) +
          ". Free GPU memory, run smaller batches, or rebuild the engine with a smaller "
          "--max-batch");
    }
    ptr_ = fresh;
    bytes_ = bytes;
  }

  void* data() const { return ptr_; }
  std::size_t size() const { return bytes_; }

 private:
  void clear() {
    if (ptr_ != nullptr) allocator_.release(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

  Allocator allocator_;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace dit

// The out-of-memory rule of the TensorRT backend's device buffers (src/device_buffer.hpp),
// with a fake allocator: no GPU needed.
#include <cstdlib>
#include <set>
#include <string>

#include "check.hpp"
#include "device_buffer.hpp"

namespace {

struct FakeDevice {
  std::size_t free_bytes = 1 << 20;
  std::set<void*> live;
};

FakeDevice& device() {
  static FakeDevice d;
  return d;
}

struct FakeAllocator {
  std::string allocate(void** ptr, std::size_t bytes) {
    if (bytes > device().free_bytes) return "out of memory";
    *ptr = std::malloc(bytes);
    device().free_bytes -= bytes;
    device().live.insert(*ptr);
    return "";
  }
  void release(void* ptr) {
    device().live.erase(ptr);
    std::free(ptr);
  }
};

using Buffer = dit::GrowingBuffer<FakeAllocator>;

}  // namespace

TEST(grows_and_reuses) {
  device() = FakeDevice{};
  Buffer b;
  b.reserve(1000, "image", "dit_fused.fp16.engine");
  void* first = b.data();
  CHECK(first != nullptr && b.size() == 1000);
  b.reserve(500, "image", "dit_fused.fp16.engine");  // smaller batch: same buffer
  CHECK(b.data() == first && b.size() == 1000);
  b.reserve(2000, "image", "dit_fused.fp16.engine");
  CHECK(b.size() == 2000 && device().live.size() == 1);  // the old one was freed
}

TEST(out_of_memory_is_typed_leaves_no_null_reservation_and_recovers) {
  device() = FakeDevice{};
  device().free_bytes = 4096;
  {
    Buffer b;
    b.reserve(1024, "low_res_logits", "dit_fused.int8.engine");
    CHECK_THROWS(dit::BackendUnavailableError,
                 b.reserve(1 << 20, "low_res_logits", "dit_fused.int8.engine"),
                 "cannot allocate 1.0 MiB of GPU memory for 'low_res_logits' of "
                 "dit_fused.int8.engine: out of memory. Free GPU memory, run smaller batches");
    // the failed batch must not leave "1 MiB reserved" behind a null pointer: the next,
    // smaller batch allocates again
    CHECK(b.data() == nullptr && b.size() == 0);
    b.reserve(512, "low_res_logits", "dit_fused.int8.engine");
    CHECK(b.data() != nullptr && b.size() == 512);
  }
  CHECK(device().live.empty());  // nothing leaked
}
int main() { return dit_test::run_all(); }

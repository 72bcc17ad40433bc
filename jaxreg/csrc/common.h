// Helpers shared by jaxreg's XLA:CPU FFI kernels (embedding_bag.cc, rmsprop.cc).

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jaxreg {

namespace ffi = xla::ffi;

// Offsets (in items) of every output batch index into an operand whose batch dims broadcast.
inline std::vector<int64_t> BroadcastOffsets(const std::vector<int64_t>& out_batch, ffi::AnyBuffer::Dimensions dims) {
  const size_t k = out_batch.size();
  std::vector<int64_t> strides(k, 0);
  int64_t stride = 1;
  for (size_t i = k; i-- > 0;) {
    strides[i] = dims[i] == 1 ? 0 : stride;
    stride *= dims[i];
  }
  int64_t total = 1;
  for (int64_t d : out_batch) total *= d;
  std::vector<int64_t> offsets(total, 0);
  for (int64_t flat = 0; flat < total; ++flat) {
    int64_t rest = flat, offset = 0;
    for (size_t i = k; i-- > 0;) {
      offset += (rest % out_batch[i]) * strides[i];
      rest /= out_batch[i];
    }
    offsets[flat] = offset;
  }
  return offsets;
}

// Runs work(item) for item in [0, n) on the caller and up to n - 1 pool threads. The caller
// claims items too, so it never waits on a task that has not started.
template <typename Work>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Work& work) {
  if (n <= 1) {
    if (n == 1) work(0);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  // A helper that starts after all items are claimed returns at once; `work` is only
  // touched for claimed items, all of which finish before this function returns.
  auto claim = [shared, n, &work]() {
    for (int64_t i; (i = shared->next.fetch_add(1)) < n;) {
      work(i);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(n, std::max<int64_t>(pool.num_threads(), 1)) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(claim)(claim));  // a copy per task
  claim();
  while (shared->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

}  // namespace jaxreg

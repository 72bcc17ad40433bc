// What jaxreg's XLA:CPU FFI kernels (embedding_bag.cc, rmsprop.cc) share: a parallel loop on
// XLA's intra-op thread pool.

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

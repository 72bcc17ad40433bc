// Embedding bag for XLA:CPU, as XLA FFI custom calls (built by jaxreg/cpu_kernels.py).
//
// Forward:  out[b, r, :]   = sum of table[b, c, :] over the pairs (r, c) of batch b.
// Backward: grad[b, c, :]  = sum of d_out[b, r, :] over the same pairs.
// Pairs whose row is >= out rows (padding) or whose column is out of range are skipped.
// Leading "batch" dimensions come from vmap (vmap_method="expand_dims"): every operand has
// the output's number of them, each either equal to the output's or 1 (broadcast).
//
// Why by hand: XLA:CPU runs gather + segment_sum and scatter-add element by element at
// ~1.5 GB/s; these loops move whole contiguous rows, split over XLA's intra-op threads.
// Each output row sums its pairs in their given order, so the result does not depend on
// threads and equals XLA's segment_sum / scatter-add bit for bit.

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using jaxreg::ParallelFor;

// Offsets (in items) of every output batch index into an operand whose batch dims broadcast.
std::vector<int64_t> BroadcastOffsets(const std::vector<int64_t>& out_batch, ffi::AnyBuffer::Dimensions dims) {
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

// The pairs grouped by output row: src rows of group d are src[start[d] : start[d + 1]].
template <typename Index>
struct Groups {
  std::vector<int32_t> start;  // int32: half the cache footprint (pairs per call < 2^31)
  std::vector<int32_t> sorted;  // src rows, when they had to be reordered
  const Index* direct = nullptr;  // src rows, when the pairs were already grouped
  std::vector<int32_t> fill;   // scratch of the counting sort
};

// Groups the valid pairs (0 <= dst < dst_n, 0 <= src < src_n) by dst. Pairs already sorted
// by dst with valid src (the forward pass over make_batches' batches) are used in place;
// otherwise a stable counting sort (O(pairs + dst_n)) reorders them, keeping each group's
// pairs in their original order so the sums match XLA's segment_sum / scatter-add exactly.
// `g` is overwritten; its buffers are reused from call to call (fresh ones would be
// page-faulted in every step).
template <typename Index>
void Group(const Index* dst, const Index* src, int64_t pairs, int64_t dst_n, int64_t src_n, Groups<Index>& g) {
  g.start.assign(dst_n + 1, 0);
  g.direct = nullptr;
  auto valid = [&](int64_t p) { return dst[p] >= 0 && dst[p] < dst_n && src[p] >= 0 && src[p] < src_n; };
  // Already grouped: dst non-decreasing from >= 0, src valid wherever dst < dst_n (the
  // rest, dst >= dst_n, is padding). Checked without branches and with int32 flags and
  // counts, a form the compiler vectorizes (7x faster than with bool and int64).
  const int32_t dn = int32_t(std::min<int64_t>(dst_n, INT32_MAX)), sn = int32_t(std::min<int64_t>(src_n, INT32_MAX));
  int32_t bad = pairs > 0 && (dst[0] < 0 || (dst[0] < dn && (src[0] < 0 || src[0] >= sn)));
  int32_t n_valid = pairs > 0 && dst[0] < dn;
  for (int64_t p = 1; p < pairs; ++p) {
    const int32_t in = int32_t(dst[p]) < dn;
    bad |= (dst[p] < dst[p - 1]) | (in & ((src[p] < 0) | (int32_t(src[p]) >= sn)));
    n_valid += in;
  }
  const bool grouped = !bad;
  if (grouped) {
    for (int64_t d = 0; d <= dst_n; ++d) {  // start[d] = first pair with dst >= d
      g.start[d] = std::lower_bound(dst, dst + n_valid, Index(std::min<int64_t>(d, dst_n))) - dst;
    }
    g.start[dst_n] = n_valid;
    g.direct = src;
    return;
  }
  for (int64_t p = 0; p < pairs; ++p) {
    if (valid(p)) ++g.start[dst[p] + 1];
  }
  for (int64_t d = 0; d < dst_n; ++d) g.start[d + 1] += g.start[d];
  g.fill.assign(g.start.begin(), g.start.end() - 1);
  g.sorted.resize(g.start[dst_n]);
  for (int64_t p = 0; p < pairs; ++p) {
    if (valid(p)) g.sorted[g.fill[dst[p]]++] = int32_t(src[p]);
  }
}

// Rows are fetched kAhead pairs before they are summed: the table was just rewritten by the
// optimizer and may sit in L3 or memory, where each row would otherwise stall the sum.
constexpr int64_t kAhead = 8;
template <int W>
inline void Prefetch(const float* row) {
  for (int j = 0; j < W; j += 16) __builtin_prefetch(row + j);
}

// out[d] = sum of table rows of group d, for d in [lo, hi). W > 0 fixes the width at compile
// time so a row's sum stays in registers; W = 0 accumulates in the output row.
template <int W, int L, typename S>
void SumGroups(const int32_t* start, const S* src, const float* table, float* out, int64_t width, int64_t lo,
               int64_t hi) {
  const int64_t limit = start[hi];  // pairs past it may not exist: prefetch only below
  if constexpr (W > 0 && L == 1) {
    for (int64_t d = lo; d < hi; ++d) {
      float acc[W] = {};
      for (int64_t p = start[d]; p < start[d + 1]; ++p) {
        if (p + kAhead < limit) Prefetch<W>(table + int64_t(src[p + kAhead]) * W);
        const float* __restrict s = table + int64_t(src[p]) * W;
        for (int j = 0; j < W; ++j) acc[j] += s[j];
      }
      std::memcpy(out + d * W, acc, sizeof(acc));
    }
  } else if constexpr (W > 0) {
    // A row's sum is a chain of dependent adds (~4 cycles per pair) while its loads would
    // allow ~1 pair per cycle, so L groups are summed side by side: L independent chains,
    // each group still in its own pair order. A lane whose group ends takes the next one.
    // Between such events a burst runs on register accumulators (GCC vector extensions:
    // portable, and constant indices after unrolling keep them out of memory).
    constexpr int N = W / 8;
    typedef float F8 __attribute__((vector_size(32)));
    auto load = [](const float* x) {
      F8 v;
      std::memcpy(&v, x, sizeof(v));
      return v;
    };
    F8 acc[L][N] = {};
    int64_t group[L], p[L], end[L], next = lo;
    int lanes = 0;
    for (; lanes < L && next < hi; ++lanes, ++next) {
      group[lanes] = next;
      p[lanes] = start[next];
      end[lanes] = start[next + 1];
    }
    auto retire = [&](int l) {  // stores lane l's sum; false when no group is left to take
      std::memcpy(out + group[l] * W, acc[l], sizeof(acc[l]));
      for (int i = 0; i < N; ++i) acc[l][i] = F8{};
      if (next == hi) return false;
      group[l] = next;
      p[l] = start[next];
      end[l] = start[next + 1];
      ++next;
      return true;
    };
    if (lanes == L) {
      for (bool full = true; full;) {
        int64_t steps = end[0] - p[0];
        for (int l = 1; l < L; ++l) steps = std::min(steps, end[l] - p[l]);
        F8 a[L][N];
#pragma GCC unroll 8
        for (int l = 0; l < L; ++l)
#pragma GCC unroll 8
          for (int i = 0; i < N; ++i) a[l][i] = acc[l][i];
        for (int64_t k = 0; k < steps; ++k) {
#pragma GCC unroll 8
          for (int l = 0; l < L; ++l) {
            if (p[l] + k + kAhead < limit) Prefetch<W>(table + int64_t(src[p[l] + k + kAhead]) * W);
            const float* row = table + int64_t(src[p[l] + k]) * W;
#pragma GCC unroll 8
            for (int i = 0; i < N; ++i) a[l][i] += load(row + 8 * i);
          }
        }
#pragma GCC unroll 8
        for (int l = 0; l < L; ++l) {
          p[l] += steps;
#pragma GCC unroll 8
          for (int i = 0; i < N; ++i) acc[l][i] = a[l][i];
        }
        for (int l = 0; l < L && full; ++l) {
          if (p[l] == end[l] && !retire(l)) {
            full = false;
            group[l] = -1;
          }
        }
      }
    }
    for (int l = 0; l < lanes; ++l) {  // what is left, one lane at a time
      if (group[l] < 0) continue;
      for (;;) {
        for (; p[l] < end[l]; ++p[l]) {
          const float* row = table + int64_t(src[p[l]]) * W;
          for (int i = 0; i < N; ++i) acc[l][i] += load(row + 8 * i);
        }
        if (!retire(l)) break;
      }
    }
  } else {
    const int64_t end = start[hi];
    for (int64_t d = lo; d < hi; ++d) {
      float* __restrict o = out + d * width;
      const int64_t first = start[d], last = start[d + 1];
      if (first == last) {
        std::memset(o, 0, width * sizeof(float));
        continue;
      }
      for (int64_t p = first; p < last; ++p) {
        if (p + 2 < end) {  // wide rows come from all over the table: fetch two pairs ahead
          const float* ahead = table + int64_t(src[p + 2]) * width;
          for (int64_t j = 0; j < width; j += 16) __builtin_prefetch(ahead + j);
        }
        const float* __restrict s = table + int64_t(src[p]) * width;
        if (p == first) {
          for (int64_t j = 0; j < width; ++j) o[j] = 0.0f + s[j];  // not s[j]: -0.0 becomes +0.0, as in a sum from 0
        } else {
          for (int64_t j = 0; j < width; ++j) o[j] += s[j];
        }
      }
    }
  }
}

template <typename S>
void SumGroups(const int32_t* start, const S* src, const float* table, float* out, int64_t width, int64_t lo,
               int64_t hi) {
  // Side by side only where groups are long (the forward's reviews, ~130 pairs); the
  // backward's words average a few pairs, too few to pay for switching lanes.
  const bool long_groups = hi > lo && start[hi] - start[lo] >= 32 * (hi - lo);
  switch (width) {
    case 16: return long_groups ? SumGroups<16, 4>(start, src, table, out, width, lo, hi)
                                : SumGroups<16, 1>(start, src, table, out, width, lo, hi);
    case 32: return long_groups ? SumGroups<32, 2>(start, src, table, out, width, lo, hi)
                                : SumGroups<32, 1>(start, src, table, out, width, lo, hi);
    case 64: return SumGroups<64, 1>(start, src, table, out, width, lo, hi);
    default: return SumGroups<0, 1>(start, src, table, out, width, lo, hi);
  }
}

template <typename Index>
void SumGroups(const Groups<Index>& g, const float* table, float* out, int64_t width, int64_t lo, int64_t hi) {
  if (g.direct) return SumGroups(g.start.data(), g.direct, table, out, width, lo, hi);
  SumGroups(g.start.data(), g.sorted.data(), table, out, width, lo, hi);
}

// Forward: dst rows are the pairs' rows, src rows their columns; backward the reverse. Work
// is split over batch items and, within an item, over chunks of dst rows holding about equal
// numbers of pairs; calls with little work stay on one thread.
template <typename Index>
ffi::Error Bag(ffi::ThreadPool& pool, ffi::AnyBuffer src, ffi::AnyBuffer rows, ffi::AnyBuffer cols,
               ffi::Result<ffi::Buffer<ffi::F32>> dst, bool forward) {
  auto dst_dims = dst->dimensions();
  const size_t rank = dst_dims.size();
  if (rank < 2 || src.dimensions().size() != rank || rows.dimensions().size() != rank - 1 ||
      cols.dimensions().size() != rank - 1) {
    return ffi::Error::InvalidArgument("embedding bag: operand ranks do not match");
  }
  std::vector<int64_t> batch(dst_dims.begin(), dst_dims.end() - 2);
  int64_t n_batch = 1;
  for (int64_t d : batch) n_batch *= d;
  const int64_t dst_n = dst_dims[rank - 2], width = dst_dims[rank - 1];
  const int64_t src_n = src.dimensions()[rank - 2];
  const int64_t pairs = rows.dimensions()[rank - 2];
  if (src.dimensions()[rank - 1] != width || cols.dimensions()[rank - 2] != pairs) {
    return ffi::Error::InvalidArgument("embedding bag: operand shapes do not match");
  }
  if (pairs >= (int64_t(1) << 31)) return ffi::Error::InvalidArgument("embedding bag: 2^31 pairs or more");
  const auto src_off = BroadcastOffsets(batch, src.dimensions());
  const auto rows_off = BroadcastOffsets(batch, rows.dimensions());
  const auto cols_off = BroadcastOffsets(batch, cols.dimensions());
  const float* src_data = src.typed_data<float>();
  float* dst_data = dst->typed_data();

  // One grouping per distinct (rows, cols) operand: variants that share batches share it.
  // Distinct ones (seeds, with their own batches) are grouped in parallel.
  std::vector<std::pair<int64_t, int64_t>> keys;
  std::vector<int64_t> group_of(n_batch);
  for (int64_t b = 0; b < n_batch; ++b) {
    const std::pair<int64_t, int64_t> key{rows_off[b], cols_off[b]};
    auto found = std::find(keys.begin(), keys.end(), key);
    group_of[b] = found - keys.begin();
    if (found == keys.end()) keys.push_back(key);
  }
  thread_local std::vector<Groups<Index>> reused;  // see Group; workers use it through `groups`
  std::vector<Groups<Index>>& groups = reused;
  if (groups.size() < keys.size()) groups.resize(keys.size());
  ParallelFor(pool, keys.size(), [&](int64_t k) {
    const Index* r = rows.typed_data<Index>() + keys[k].first * pairs;
    const Index* c = cols.typed_data<Index>() + keys[k].second * pairs;
    Group<Index>(forward ? r : c, forward ? c : r, pairs, dst_n, src_n, groups[k]);
  });

  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const bool small = n_batch * pairs * width < (int64_t(1) << 21);
  const int64_t chunks = small ? 1 : std::max<int64_t>(1, std::min<int64_t>(dst_n, (4 * threads + n_batch - 1) / n_batch));
  auto work = [&](int64_t item) {
    const int64_t b = item / chunks, k = item % chunks;
    const Groups<Index>& g = groups[group_of[b]];
    const int64_t total = g.start[dst_n];
    auto first_row = [&](int64_t kk) -> int64_t {  // dst row holding pair total * kk / chunks
      if (kk == 0) return 0;
      if (kk == chunks) return dst_n;
      return std::upper_bound(g.start.begin(), g.start.end(), total * kk / chunks) - g.start.begin() - 1;
    };
    SumGroups<Index>(g, src_data + src_off[b] * src_n * width, dst_data + b * dst_n * width, width, first_row(k),
                     first_row(k + 1));
  };
  ParallelFor(pool, n_batch * chunks, work);  // a single item runs inline
  return ffi::Error::Success();
}

ffi::Error Dispatch(ffi::ThreadPool pool, ffi::AnyBuffer src, ffi::AnyBuffer rows, ffi::AnyBuffer cols,
                    ffi::Result<ffi::Buffer<ffi::F32>> dst, bool forward) {
  if (src.element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("embedding bag: values must be float32");
  }
  if (rows.element_type() != cols.element_type()) {
    return ffi::Error::InvalidArgument("embedding bag: rows and cols must share a dtype");
  }
  switch (rows.element_type()) {
    case ffi::DataType::S16:
      return Bag<int16_t>(pool, src, rows, cols, dst, forward);
    case ffi::DataType::S32:
      return Bag<int32_t>(pool, src, rows, cols, dst, forward);
    default:
      return ffi::Error::InvalidArgument("embedding bag: indices must be int16 or int32");
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer table, ffi::AnyBuffer rows, ffi::AnyBuffer cols,
                   ffi::Result<ffi::Buffer<ffi::F32>> out) {
  return Dispatch(pool, table, rows, cols, out, /*forward=*/true);
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::AnyBuffer d_out, ffi::AnyBuffer rows, ffi::AnyBuffer cols,
                    ffi::Result<ffi::Buffer<ffi::F32>> d_table) {
  return Dispatch(pool, d_out, rows, cols, d_table, /*forward=*/false);
}

}  // namespace

// Both handlers: (values, rows, cols) -> float32 result, with XLA's intra-op thread pool.
#define JAXREG_BAG_HANDLER(symbol, fn)                                                           \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, fn,                                                      \
                                ffi::Ffi::Bind()                                                 \
                                    .Ctx<ffi::ThreadPool>()                                      \
                                    .Arg<ffi::AnyBuffer>()                                       \
                                    .Arg<ffi::AnyBuffer>()                                       \
                                    .Arg<ffi::AnyBuffer>()                                       \
                                    .Ret<ffi::Buffer<ffi::F32>>());

JAXREG_BAG_HANDLER(JaxregBagForward, Forward)
JAXREG_BAG_HANDLER(JaxregBagBackward, Backward)

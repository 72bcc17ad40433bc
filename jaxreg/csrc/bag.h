// The embedding bag's building blocks (see embedding_bag.cc), shared with rmsprop.cc, whose
// fused step sums the bag's gradient rows itself: pairs grouped by destination row, and
// the sum of each group's source rows in the pairs' order.

#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace jaxreg {

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

// The pairs grouped by output row: src rows of group d are src[start[d] : start[d + 1]].
template <typename Index>
struct Groups {
  std::vector<int32_t> start;  // int32: half the cache footprint (pairs per call < 2^31)
  std::vector<int32_t> sorted;  // src rows, when they had to be reordered
  const Index* direct = nullptr;  // src rows, when the pairs were already grouped
  std::vector<int32_t> fill;   // scratch of the counting sort (per slice)
};

// Groups the valid pairs (0 <= dst < dst_n, 0 <= src < src_n) by dst. Pairs already sorted
// by dst with valid src (the forward pass over make_batches' batches) are used in place;
// otherwise a stable counting sort (O(pairs + dst_n)) reorders them, keeping each group's
// pairs in their original order so the sums match XLA's segment_sum / scatter-add exactly.
// `g` is overwritten; its buffers are reused from call to call (fresh ones would be
// page-faulted in every step).
template <typename Index>
void Group(const Index* dst, const Index* src, int64_t pairs, int64_t dst_n, int64_t src_n, Groups<Index>& g,
           ffi::ThreadPool* pool = nullptr) {
  g.start.assign(dst_n + 1, 0);
  g.direct = nullptr;
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
  // The sort in `parts` slices of the pairs, counted and placed in parallel when a pool is
  // given: slice k's pairs of a group go after those of slices < k, so it stays stable.
  // Without branches: an invalid pair counts in an extra group dst_n and is written to its
  // slice's own spare slot past the sorted pairs (~1.5x faster than skipping it).
  const int64_t parts = pool && pairs >= (int64_t(1) << 15) ? std::min<int64_t>(4, std::max<int64_t>(pool->num_threads(), 1)) : 1;
  const int64_t slice = (pairs + parts - 1) / parts, groups = dst_n + 1;
  g.fill.assign(parts * groups, 0);  // per slice: counts, then the next position, per group
  auto each_slice = [&](auto&& work) {
    auto run = [&](int64_t k) {
      int32_t* fill = g.fill.data() + k * groups;
      for (int64_t p = k * slice, end = std::min(pairs, (k + 1) * slice); p < end; ++p) {
        const int32_t ok = (dst[p] >= 0) & (int32_t(dst[p]) < dn) & (src[p] >= 0) & (int32_t(src[p]) < sn);
        work(fill[ok ? int32_t(dst[p]) : dn], p, ok);
      }
    };
    if (parts == 1) {
      run(0);
    } else {
      ParallelFor(*pool, parts, run);
    }
  };
  each_slice([](int32_t& count, int64_t, int32_t) { ++count; });
  int32_t next = 0;
  for (int64_t d = 0; d < dst_n; ++d) {
    g.start[d] = next;
    for (int64_t k = 0; k < parts; ++k) {
      const int32_t count = g.fill[k * groups + d];
      g.fill[k * groups + d] = next;
      next += count;
    }
  }
  g.start[dst_n] = next;
  for (int64_t k = 0; k < parts; ++k) g.fill[k * groups + dst_n] = next + int32_t(k);  // the spare slots
  g.sorted.resize(next + parts);
  each_slice([&](int32_t& at, int64_t p, int32_t ok) {
    g.sorted[at] = int32_t(src[p]);
    at += ok;
  });
}

// Rows are fetched kAhead pairs before they are summed: the table was just rewritten by the
// optimizer and may sit in L3 or memory, where each row would otherwise stall the sum.
constexpr int64_t kAhead = 8;
template <int W>
inline void Prefetch(const float* row) {
  for (int j = 0; j < W; j += 16) __builtin_prefetch(row + j);
}

// out[d - lo] = sum of table rows of group d, for d in [lo, hi). W > 0 fixes the width at compile
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
      std::memcpy(out + (d - lo) * W, acc, sizeof(acc));
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
      std::memcpy(out + (group[l] - lo) * W, acc[l], sizeof(acc[l]));
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
      float* __restrict o = out + (d - lo) * width;
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

// f(src rows of g): the pairs' own array when they were already grouped, else the sorted copy.
template <typename Index, typename F>
void WithSources(const Groups<Index>& g, const F& f) {
  if (g.direct) {
    f(g.direct);
  } else {
    f(g.sorted.data());
  }
}

template <typename Index>
void SumGroups(const Groups<Index>& g, const float* table, float* out, int64_t width, int64_t lo, int64_t hi) {
  WithSources(g, [&](const auto* src) { SumGroups(g.start.data(), src, table, out, width, lo, hi); });
}

// Whether the valid pairs (0 <= row < n_rows) come row by row (rows non-decreasing) with each
// row's columns non-decreasing, as make_batches writes them (a review's words sorted). Then
// visiting the pairs grouped by column, columns ascending, adds each row's table rows in
// their given order, and ScatterRows equals the row-by-row sum bit for bit.
template <typename Index>
bool SortedWithinRows(const Index* rows, const Index* cols, int64_t pairs, int64_t n_rows) {
  const int32_t rn = int32_t(std::min<int64_t>(n_rows, INT32_MAX));
  int32_t bad = 0;
  for (int64_t p = 1; p < pairs; ++p) {  // branch-free with int32 flags: vectorizes
    const int32_t same = rows[p] == rows[p - 1], in = int32_t(rows[p]) < rn;
    bad |= (rows[p] < rows[p - 1]) | (same & in & (cols[p] < cols[p - 1]));
  }
  return !bad;
}

// out[r] = sum of table rows c over the pairs (r, c), visiting the table in row order: g groups
// the pairs by column (Group with dst = cols). The table streams through once, only at the
// rows the batch uses, and the sums build up in `out` (n_out rows, a few tens of kB, in
// cache), where the row-by-row gather would fetch rows from all over the table for each
// review. Used where SortedWithinRows holds.
template <typename Index>
void ScatterRows(const Groups<Index>& g, const float* table, float* out, int64_t width, int64_t n_table,
                 int64_t n_out) {
  std::memset(out, 0, sizeof(float) * n_out * width);  // +0, as the gather's sums start
  WithSources(g, [&](const auto* src) {
    if (width == 16) {
      typedef float F8 __attribute__((vector_size(32)));
      for (int64_t c = 0; c < n_table; ++c) {
        const int64_t first = g.start[c], last = g.start[c + 1];
        if (first == last) continue;
        F8 t0, t1;
        std::memcpy(&t0, table + c * 16, sizeof(t0));
        std::memcpy(&t1, table + c * 16 + 8, sizeof(t1));
        for (int64_t p = first; p < last; ++p) {
          float* o = out + int64_t(src[p]) * 16;
          F8 o0, o1;
          std::memcpy(&o0, o, sizeof(o0));
          std::memcpy(&o1, o + 8, sizeof(o1));
          o0 += t0;
          o1 += t1;
          std::memcpy(o, &o0, sizeof(o0));
          std::memcpy(o + 8, &o1, sizeof(o1));
        }
      }
      return;
    }
    for (int64_t c = 0; c < n_table; ++c) {
      const float* __restrict t = table + c * width;
      for (int64_t p = g.start[c]; p < g.start[c + 1]; ++p) {
        float* __restrict o = out + int64_t(src[p]) * width;
        for (int64_t j = 0; j < width; ++j) o[j] += t[j];
      }
    }
  });
}

// The distinct (rows, cols) operands among the batch items (offsets from BroadcastOffsets),
// and which one each item uses: variants that share batches share one.
struct Operands {
  std::vector<std::pair<int64_t, int64_t>> keys;
  std::vector<int64_t> of;
};
inline Operands DistinctOperands(const std::vector<int64_t>& rows_off, const std::vector<int64_t>& cols_off) {
  Operands ops;
  ops.of.assign(rows_off.size(), 0);
  for (size_t b = 0; b < rows_off.size(); ++b) {
    const std::pair<int64_t, int64_t> key{rows_off[b], cols_off[b]};
    auto found = std::find(ops.keys.begin(), ops.keys.end(), key);
    ops.of[b] = found - ops.keys.begin();
    if (found == ops.keys.end()) ops.keys.push_back(key);
  }
  return ops;
}

// Groups the pairs of each distinct operand by dst (`rows` when by_row, else `cols`), in
// parallel (seeds, with their own batches), or one grouping with its sort split over the
// threads. The groups live in thread-local storage reused from call to call (see Group).
template <typename Index>
std::vector<Groups<Index>>& GroupPairs(ffi::ThreadPool& pool, const Index* rows, const Index* cols,
                                       const Operands& ops, int64_t pairs, int64_t dst_n, int64_t src_n,
                                       bool by_row) {
  const auto& keys = ops.keys;
  thread_local std::vector<Groups<Index>> reused;
  std::vector<Groups<Index>>& groups = reused;  // workers use the caller's through this reference
  if (groups.size() < keys.size()) groups.resize(keys.size());
  auto group = [&](int64_t k, ffi::ThreadPool* sort_pool) {
    const Index* r = rows + keys[k].first * pairs;
    const Index* c = cols + keys[k].second * pairs;
    Group<Index>(by_row ? r : c, by_row ? c : r, pairs, dst_n, src_n, groups[k], sort_pool);
  };
  if (keys.size() == 1) {
    group(0, &pool);  // one grouping: its sort is split over the threads instead
  } else {
    ParallelFor(pool, keys.size(), [&](int64_t k) { group(k, nullptr); });
  }
  return groups;
}

}  // namespace jaxreg

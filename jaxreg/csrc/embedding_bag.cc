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
#include <cstdint>
#include <vector>

#include "bag.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxreg;

constexpr int64_t kColumnOrderShare = 8;  // see Bag

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

  const Index* rows_data = rows.typed_data<Index>();
  const Index* cols_data = cols.typed_data<Index>();
  const Operands ops = DistinctOperands(rows_off, cols_off);
  // Forward where kColumnOrderShare or more items (variants), each with its own table, share
  // each distinct (rows, cols) operand, and the pairs allow it: table row by table row
  // (ScatterRows, an item per thread). Its grouping by column is a sort (~0.1-0.3 ms for a
  // 512-review batch) that only pays off when shared; otherwise the row-by-row gather, split
  // over threads. Not where items share a table (validation's batches, all computed in one
  // call): the gather then reads a table for its several batches while it is in cache.
  std::vector<int64_t> tables(src_off);
  std::sort(tables.begin(), tables.end());
  const bool own_tables = std::adjacent_find(tables.begin(), tables.end()) == tables.end();
  bool by_column = forward && own_tables && n_batch >= kColumnOrderShare * int64_t(ops.keys.size());
  for (size_t k = 0; k < ops.keys.size() && by_column; ++k) {
    by_column = SortedWithinRows(rows_data + ops.keys[k].first * pairs, cols_data + ops.keys[k].second * pairs,
                                 pairs, dst_n);
  }
  // grouped by destination row (forward gather, backward) or, by_column, by table row
  const auto& groups = GroupPairs<Index>(pool, rows_data, cols_data, ops, pairs, by_column ? src_n : dst_n,
                                         by_column ? dst_n : src_n, /*by_row=*/forward && !by_column);
  if (by_column) {
    ParallelFor(pool, n_batch, [&](int64_t b) {
      ScatterRows<Index>(groups[ops.of[b]], src_data + src_off[b] * src_n * width, dst_data + b * dst_n * width,
                         width, src_n, dst_n);
    });
    return ffi::Error::Success();
  }

  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const bool small = n_batch * pairs * width < (int64_t(1) << 21);
  const int64_t chunks = small ? 1 : std::max<int64_t>(1, std::min<int64_t>(dst_n, (4 * threads + n_batch - 1) / n_batch));
  auto work = [&](int64_t item) {
    const int64_t b = item / chunks, k = item % chunks;
    const Groups<Index>& g = groups[ops.of[b]];
    const int64_t total = g.start[dst_n];
    auto first_row = [&](int64_t kk) -> int64_t {  // dst row holding pair total * kk / chunks
      if (kk == 0) return 0;
      if (kk == chunks) return dst_n;
      return std::upper_bound(g.start.begin(), g.start.end(), total * kk / chunks) - g.start.begin() - 1;
    };
    const int64_t lo = first_row(k);
    SumGroups<Index>(g, src_data + src_off[b] * src_n * width, dst_data + (b * dst_n + lo) * width, width, lo,
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

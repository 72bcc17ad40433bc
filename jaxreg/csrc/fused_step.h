// What the fused optimizer steps of the embedding bag's table share (rmsprop.cc, adam.cc):
// the operands' checks, the table's gradient summed block by block from the batch's pairs
// (never stored whole), the Keras penalty's gradient and value, and the parallel loop over
// (variant, chunk of rows). Each step supplies only its per-element update.
//
// Why the blocks: XLA:CPU writes the bag's backward as a dense gradient table that the
// optimizer's loops then read back, each a pass over memory. Here the gradient of kBlock rows
// is summed into a buffer that stays in cache and is used at once, so the table and its
// moments are each read once and written once (in place).

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "bag.h"
#include "xla/ffi/api/ffi.h"

namespace jaxreg {

namespace ffi = xla::ffi;

// A fused multiply-add where XLA's LLVM contracts a multiply into an add (on CPUs with FMA,
// chosen by the compiler's __FMA__, i.e. -march=native; plain operations elsewhere).
#ifdef __FMA__
inline float MulAdd(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline float MulAdd(float a, float b, float c) { return a * b + c; }
#endif

constexpr int64_t kChunkRows = 512;  // rows per parallel work item (20 per variant: balanced on a few threads)
constexpr int64_t kBlock = 256;      // rows whose gradient is summed before they are updated

// The Keras penalty's gradient l1 * sign(w) + 2 l2 * w (c1 = l1 >= 0, c2 = 2 l2) added to the data
// gradient, in the operations and order of XLA's code for jax.grad of the penalty.
inline float PenalizedGradient(float x, float data, float c1, float c2) {
  const float up = float(x >= 0.0f);  // c1 * up == (x >= 0 ? c1 : 0) for c1 >= 0, without a branch
  return (MulAdd(x, c2, c1 * up) + -(c1 * (1.0f - up))) + data;
}

// The penalty's value: sums of |w| and w^2 kept in kLanes running partial sums, column j in
// lane j % kLanes, rows in order, added up in lane order at the end. A fixed order, one the
// compiler vectorizes (a single running sum would add the elements one at a time, ~3 cycles
// each, more than the update's work), and one that zero-padded columns leave unchanged
// (they add +0 to a lane), so a padded model's penalty equals its unpadded one bit for bit.
constexpr int kLanes = 16;
struct Sums {
  float abs[kLanes] = {}, sq[kLanes] = {};
};

// Adds `rows` rows of `width` columns to `sums`; widths that are multiples of kLanes use GCC's
// vector extensions (left to itself, GCC vectorizes this loop badly).
inline void AddSums(const float* __restrict W, int64_t rows, int64_t width, Sums& sums) {
  static_assert(kLanes == 16, "two vectors of 8 lanes");
  if (width % kLanes != 0) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < width; ++j) {
        const float x = W[r * width + j];
        sums.abs[j % kLanes] += std::fabs(x);
        sums.sq[j % kLanes] += x * x;
      }
    }
    return;
  }
  typedef float F8 __attribute__((vector_size(32)));
  typedef int32_t I8 __attribute__((vector_size(32)));
  F8 abs[2], sq[2];
  std::memcpy(abs, sums.abs, sizeof(abs));
  std::memcpy(sq, sums.sq, sizeof(sq));
  for (int64_t i = 0; i < rows * width; i += 8) {  // element i is in column i % width, lane i % 16
    F8 x;
    std::memcpy(&x, W + i, sizeof(x));
    const int h = (i / 8) & 1;
    abs[h] += (F8)((I8)x & 0x7fffffff);  // |x|: the sign bit cleared
    sq[h] += x * x;
  }
  std::memcpy(sums.abs, abs, sizeof(abs));
  std::memcpy(sums.sq, sq, sizeof(sq));
}

// Whether an operand's leading dims broadcast to `batch` (each equal or 1) and the rest are `tail`.
inline bool Fits(ffi::AnyBuffer::Dimensions dims, const std::vector<int64_t>& batch, std::vector<int64_t> tail) {
  if (dims.size() != batch.size() + tail.size()) return false;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (dims[i] != batch[i] && dims[i] != 1) return false;
  }
  for (size_t i = 0; i < tail.size(); ++i) {
    if (dims[batch.size() + i] != tail[i]) return false;
  }
  return true;
}

// One fused step's operands. w and each moment: [batch..., n, width], updated in place (their
// results alias them); d_out [batch..., out rows, width]; rows, cols [batch..., pairs]; mask
// [batch..., n, width] (read only when `masked`); scalars [batch..., K], the variant's numbers.
// Batch dims come from vmap (the rules in optim.py): w and the moments have them all, the
// others each dim or 1 (shared). sums_out [batch..., 2]: sum|w| and sum w^2 of the incoming w.
struct TableStep {
  const char* name;
  ffi::AnyBuffer w;
  std::vector<ffi::AnyBuffer> moments;
  ffi::AnyBuffer d_out, rows, cols, mask, scalars;
  std::vector<int64_t> sums_dims;
  float* sums_out;
  bool masked;
};

// Where one work item's update applies: variant b's elements [at, at + count) of w and the
// moments, the block's summed data gradient `grad` (count elements), the mask's elements
// (nullptr unmasked) and the variant's scalars.
struct Block {
  int64_t b, at, count;
  const float* grad;
  const float* mask;
  const float* scalars;
};

// Runs the step: checks the operands, groups the pairs, and for each (variant, chunk) sums each
// block's gradient and the penalty's sums of w, then calls update(Block) before the next block.
template <typename Index, typename Update>
ffi::Error RunTableStep(ffi::ThreadPool& pool, const TableStep& op, const Update& update) {
  auto invalid = [&](const char* what) { return ffi::Error::InvalidArgument(std::string(op.name) + ": " + what); };
  const std::vector<int64_t> batch(op.sums_dims.begin(), op.sums_dims.end() - 1);
  const size_t k = batch.size();
  auto w_dims = op.w.dimensions();
  if (w_dims.size() != k + 2) return invalid("w must be [batch..., rows, width]");
  const int64_t n_rows = w_dims[k], width = w_dims[k + 1];
  std::vector<int64_t> full(batch);
  full.push_back(n_rows);
  full.push_back(width);
  for (const auto& x : op.moments) {
    if (x.dimensions().size() != k + 2) return invalid("the moments must be shaped like w");
  }
  for (size_t i = 0; i < k + 2; ++i) {
    if (w_dims[i] != full[i]) return invalid("w must be batched like the result");
    for (const auto& x : op.moments) {
      if (x.dimensions()[i] != full[i]) return invalid("the moments must be batched like the result");
    }
  }
  const int64_t out_rows = op.d_out.dimensions().size() == k + 2 ? op.d_out.dimensions()[k] : -1;
  const int64_t pairs = op.rows.dimensions().size() == k + 1 ? op.rows.dimensions()[k] : -1;
  const auto s_dims = op.scalars.dimensions();
  const int64_t n_scalars = s_dims.size() == k + 1 ? s_dims[k] : -1;
  if (!Fits(op.d_out.dimensions(), batch, {out_rows, width}) || !Fits(op.rows.dimensions(), batch, {pairs}) ||
      !Fits(op.cols.dimensions(), batch, {pairs}) || (op.masked && !Fits(op.mask.dimensions(), batch, {n_rows, width})) ||
      !Fits(s_dims, batch, {n_scalars})) {
    return invalid("operand shapes do not match");
  }
  if (pairs >= (int64_t(1) << 31)) return invalid("2^31 pairs or more");
  int64_t n_batch = 1;
  for (int64_t d : batch) n_batch *= d;
  const auto d_off = BroadcastOffsets(batch, op.d_out.dimensions());
  const auto mask_off = BroadcastOffsets(batch, op.mask.dimensions());
  const auto s_off = BroadcastOffsets(batch, s_dims);
  const Operands ops =
      DistinctOperands(BroadcastOffsets(batch, op.rows.dimensions()), BroadcastOffsets(batch, op.cols.dimensions()));
  const auto& groups = GroupPairs<Index>(pool, op.rows.typed_data<Index>(), op.cols.typed_data<Index>(), ops, pairs,
                                         n_rows, out_rows, /*by_row=*/false);

  // Work items of kChunkRows rows, whatever the width: the penalty's sums are combined item by
  // item, so the same rows at any padded width give the same sums.
  const int64_t chunks = std::max<int64_t>(1, (n_rows + kChunkRows - 1) / kChunkRows);
  const int64_t n = n_rows * width;  // elements per variant
  std::vector<float> partial(2 * n_batch * chunks);
  ParallelFor(pool, n_batch * chunks, [&](int64_t item) {
    const int64_t b = item / chunks, first = (item % chunks) * kChunkRows;
    const int64_t last = std::min(n_rows, first + kChunkRows);
    const float* d = op.d_out.typed_data<float>() + d_off[b] * out_rows * width;
    const float* M = op.masked ? op.mask.typed_data<float>() + mask_off[b] * n : nullptr;
    const float* S = op.scalars.typed_data<float>() + s_off[b] * n_scalars;
    thread_local std::vector<float> grad;  // one block's gradient rows
    grad.resize(kBlock * width);
    Sums sums;
    for (int64_t lo = first; lo < last; lo += kBlock) {
      const int64_t hi = std::min(last, lo + kBlock), at = b * n + lo * width;
      SumGroups<Index>(groups[ops.of[b]], d, grad.data(), width, lo, hi);
      AddSums(op.w.typed_data<float>() + at, hi - lo, width, sums);  // before the update overwrites w (in place)
      update(Block{b, at, (hi - lo) * width, grad.data(), M ? M + lo * width : nullptr, S});
    }
    float sum_abs = 0.0f, sum_sq = 0.0f;
    for (int lane = 0; lane < kLanes; ++lane) {
      sum_abs += sums.abs[lane];
      sum_sq += sums.sq[lane];
    }
    partial[2 * item] = sum_abs;
    partial[2 * item + 1] = sum_sq;
  });
  for (int64_t b = 0; b < n_batch; ++b) {
    float sum_abs = 0.0f, sum_sq = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) {
      sum_abs += partial[2 * (b * chunks + c)];
      sum_sq += partial[2 * (b * chunks + c) + 1];
    }
    op.sums_out[2 * b] = sum_abs;
    op.sums_out[2 * b + 1] = sum_sq;
  }
  return ffi::Error::Success();
}

// Runs the step with int16 or int32 pairs (rows and cols of one dtype, every float operand float32).
template <typename Update>
ffi::Error DispatchTableStep(ffi::ThreadPool& pool, const TableStep& op, const Update& update) {
  std::vector<const ffi::AnyBuffer*> floats{&op.w, &op.d_out, &op.mask, &op.scalars};
  for (const auto& x : op.moments) floats.push_back(&x);
  for (const auto* x : floats) {
    if (x->element_type() != ffi::DataType::F32) return ffi::Error::InvalidArgument(std::string(op.name) + ": float32 only");
  }
  if (op.rows.element_type() != op.cols.element_type()) {
    return ffi::Error::InvalidArgument(std::string(op.name) + ": rows and cols must share a dtype");
  }
  switch (op.rows.element_type()) {
    case ffi::DataType::S16:
      return RunTableStep<int16_t>(pool, op, update);
    case ffi::DataType::S32:
      return RunTableStep<int32_t>(pool, op, update);
    default:
      return ffi::Error::InvalidArgument(std::string(op.name) + ": indices must be int16 or int32");
  }
}

}  // namespace jaxreg

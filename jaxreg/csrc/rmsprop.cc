// One RMSprop step with the Keras weight penalty for the embedding bag's table (the first
// layer's kernel), as an XLA FFI custom call on CPU (built by jaxreg/cpu_kernels.py, used by
// jaxreg/optim.py). Its data gradient comes in as the bag's output gradient d_out and the
// batch's (row, column) pairs: table row c's gradient is the sum of d_out[r] over the pairs
// (r, c), in their order, exactly as the bag's backward (embedding_bag.cc) computes it.
//
// Per element, exactly the operations (and their order) of XLA's code for jaxreg's optax
// path, Keras 2 RMSprop (rho 0.9, eps 1e-7 outside the root), no decay or proximal stage:
//   g  = (fma(w, 2 l2, w >= 0 ? l1 : 0) + -(w >= 0 ? 0 : l1)) + g_data   (penalty's gradient)
//   g  = g * mask                                                       (padded units)
//   nu = fma(g * g, 0.1, nu * 0.9)
//   w  = fma((1 / (sqrt(nu) + eps)) * g, -lr, w)
// so the parameters equal that path's bit for bit. The fused multiply-adds are where
// XLA's LLVM contracts a multiply into an add on CPUs with FMA (on others, plain ops:
// chosen by the compiler's __FMA__, i.e. -march=native). Also returns sum|w| and sum w^2 of the
// incoming w (the penalty's value), summed in a fixed order (chunks of kChunkRows rows, each in
// kLanes partial sums, see Sums) that does not depend on threads, on how many variants share
// the call or on zero-padded columns.
//
// Why by hand: XLA:CPU runs the update as five loops over the array (three elementwise
// fusions and two reductions) plus a copy, ~14 passes over memory, and the bag's backward
// writes a dense gradient table that the update then reads back. Here the gradient of a
// block of rows is summed into a small buffer that stays in cache, then used at once: 4
// passes over memory (read w, nu; write w, nu in place).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bag.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#ifdef __FMA__
inline float MulAdd(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline float MulAdd(float a, float b, float c) { return a * b + c; }
#endif

using namespace jaxreg;

constexpr int64_t kChunkRows = 512;  // rows per parallel work item (20 per variant: balanced on a few threads)
constexpr int64_t kBlock = 256;    // rows whose gradient is summed before they are updated

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
void AddSums(const float* __restrict W, int64_t rows, int64_t width, Sums& sums) {
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

// The update of n elements of one variant. The options are template parameters so that the
// loop has no branches and vectorizes.
template <bool kPenalty, bool kMasked>
void StepRange(const float* __restrict W, const float* __restrict U, const float* __restrict G,
               const float* __restrict M, float* __restrict W_out, float* __restrict U_out, float c1, float c2,
               float neg_lr, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = W[i];
    float grad = G[i];
    if constexpr (kPenalty) {
      const float up = float(x >= 0.0f);  // c1 * up == (x >= 0 ? c1 : 0) for c1 >= 0, without a branch
      grad = (MulAdd(x, c2, c1 * up) + -(c1 * (1.0f - up))) + grad;
    }
    if constexpr (kMasked) grad = grad * M[i];
    const float a = MulAdd(grad * grad, 0.1f, U[i] * 0.9f);
    U_out[i] = a;
    W_out[i] = MulAdd((1.0f / (std::sqrt(a) + 1e-7f)) * grad, neg_lr, x);
  }
}

// Whether an operand's leading dims broadcast to `batch` (each equal or 1) and the rest are `tail`.
bool Fits(ffi::AnyBuffer::Dimensions dims, const std::vector<int64_t>& batch, std::vector<int64_t> tail) {
  if (dims.size() != batch.size() + tail.size()) return false;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (dims[i] != batch[i] && dims[i] != 1) return false;
  }
  for (size_t i = 0; i < tail.size(); ++i) {
    if (dims[batch.size() + i] != tail[i]) return false;
  }
  return true;
}

// Operands: w, nu [batch..., n, width]; d_out [batch..., out rows, width]; rows, cols
// [batch..., pairs]; mask [batch..., n, width] (ignored unless `masked`); per-variant
// scalars l1, l2, lr [batch...]. Batch dims come from vmap (the rule in optim.py): w and nu
// have them all (they are updated in place), the others each dim or 1 (shared).
template <typename Index>
ffi::Error Step(ffi::ThreadPool& pool, ffi::AnyBuffer w, ffi::AnyBuffer nu, ffi::AnyBuffer d_out,
                ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer mask, ffi::AnyBuffer l1, ffi::AnyBuffer l2,
                ffi::AnyBuffer lr, ffi::Result<ffi::Buffer<ffi::F32>> w_out,
                ffi::Result<ffi::Buffer<ffi::F32>> nu_out, ffi::Result<ffi::Buffer<ffi::F32>> sums, bool penalty,
                bool masked) {
  auto sums_dims = sums->dimensions();
  const std::vector<int64_t> batch(sums_dims.begin(), sums_dims.end() - 1);
  const size_t k = batch.size();
  auto w_dims = w.dimensions();
  if (w_dims.size() != k + 2) return ffi::Error::InvalidArgument("rmsprop step: w must be [batch..., rows, width]");
  const int64_t n_rows = w_dims[k], width = w_dims[k + 1];
  const int64_t out_rows = d_out.dimensions().size() == k + 2 ? d_out.dimensions()[k] : -1;
  const int64_t pairs = rows.dimensions().size() == k + 1 ? rows.dimensions()[k] : -1;
  std::vector<int64_t> full(batch);
  full.push_back(n_rows);
  full.push_back(width);
  if (nu.dimensions().size() != k + 2) return ffi::Error::InvalidArgument("rmsprop step: nu must be shaped like w");
  for (size_t i = 0; i < k + 2; ++i) {
    if (w_dims[i] != full[i] || nu.dimensions()[i] != full[i] || w_out->dimensions()[i] != full[i]) {
      return ffi::Error::InvalidArgument("rmsprop step: w and nu must be batched like the result");
    }
  }
  if (!Fits(d_out.dimensions(), batch, {out_rows, width}) || !Fits(rows.dimensions(), batch, {pairs}) ||
      !Fits(cols.dimensions(), batch, {pairs}) || (masked && !Fits(mask.dimensions(), batch, {n_rows, width})) ||
      !Fits(l1.dimensions(), batch, {}) || !Fits(l2.dimensions(), batch, {}) || !Fits(lr.dimensions(), batch, {})) {
    return ffi::Error::InvalidArgument("rmsprop step: operand shapes do not match");
  }
  if (pairs >= (int64_t(1) << 31)) return ffi::Error::InvalidArgument("rmsprop step: 2^31 pairs or more");
  int64_t n_batch = 1;
  for (int64_t d : batch) n_batch *= d;
  const auto d_off = BroadcastOffsets(batch, d_out.dimensions());
  const auto mask_off = BroadcastOffsets(batch, mask.dimensions());
  const auto l1_off = BroadcastOffsets(batch, l1.dimensions()), l2_off = BroadcastOffsets(batch, l2.dimensions());
  const auto lr_off = BroadcastOffsets(batch, lr.dimensions());
  const Operands ops = DistinctOperands(BroadcastOffsets(batch, rows.dimensions()), BroadcastOffsets(batch, cols.dimensions()));
  const auto& groups = GroupPairs<Index>(pool, rows.typed_data<Index>(), cols.typed_data<Index>(), ops, pairs, n_rows,
                                         out_rows, /*by_row=*/false);

  // Work items of kChunkRows rows, whatever the width: the penalty's sums are combined item by
  // item, so the same rows at any padded width give the same sums.
  const int64_t chunks = std::max<int64_t>(1, (n_rows + kChunkRows - 1) / kChunkRows);
  const int64_t n = n_rows * width;  // elements per variant
  std::vector<float> partial(2 * n_batch * chunks);
  ParallelFor(pool, n_batch * chunks, [&](int64_t item) {
    const int64_t b = item / chunks, first = (item % chunks) * kChunkRows;
    const int64_t last = std::min(n_rows, first + kChunkRows);
    const float* d = d_out.typed_data<float>() + d_off[b] * out_rows * width;
    const float* M = masked ? mask.typed_data<float>() + mask_off[b] * n : nullptr;
    const float c1 = l1.typed_data<float>()[l1_off[b]], c2 = l2.typed_data<float>()[l2_off[b]] * 2.0f;
    const float neg_lr = -lr.typed_data<float>()[lr_off[b]];
    thread_local std::vector<float> grad;  // one block's gradient rows
    grad.resize(kBlock * width);
    Sums sums;
    for (int64_t lo = first; lo < last; lo += kBlock) {
      const int64_t hi = std::min(last, lo + kBlock), at = b * n + lo * width, count = (hi - lo) * width;
      SumGroups<Index>(groups[ops.of[b]], d, grad.data(), width, lo, hi);
      AddSums(w.typed_data<float>() + at, hi - lo, width, sums);  // before the update overwrites w (in place)
      auto run = [&](auto penalty_on, auto masked_on) {
        StepRange<decltype(penalty_on)::value, decltype(masked_on)::value>(
            w.typed_data<float>() + at, nu.typed_data<float>() + at, grad.data(), M ? M + lo * width : nullptr,
            w_out->typed_data() + at, nu_out->typed_data() + at, c1, c2, neg_lr, count);
      };
      using On = std::true_type;
      using Off = std::false_type;
      if (penalty) {
        M ? run(On{}, On{}) : run(On{}, Off{});
      } else {
        M ? run(Off{}, On{}) : run(Off{}, Off{});
      }
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
    sums->typed_data()[2 * b] = sum_abs;
    sums->typed_data()[2 * b + 1] = sum_sq;
  }
  return ffi::Error::Success();
}

ffi::Error Dispatch(ffi::ThreadPool pool, ffi::AnyBuffer w, ffi::AnyBuffer nu, ffi::AnyBuffer d_out,
                    ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer mask, ffi::AnyBuffer l1,
                    ffi::AnyBuffer l2, ffi::AnyBuffer lr, ffi::Result<ffi::Buffer<ffi::F32>> w_out,
                    ffi::Result<ffi::Buffer<ffi::F32>> nu_out, ffi::Result<ffi::Buffer<ffi::F32>> sums, bool penalty,
                    bool masked) {
  for (const auto* x : {&w, &nu, &d_out, &mask, &l1, &l2, &lr}) {
    if (x->element_type() != ffi::DataType::F32) return ffi::Error::InvalidArgument("rmsprop step: float32 only");
  }
  if (rows.element_type() != cols.element_type()) {
    return ffi::Error::InvalidArgument("rmsprop step: rows and cols must share a dtype");
  }
  switch (rows.element_type()) {
    case ffi::DataType::S16:
      return Step<int16_t>(pool, w, nu, d_out, rows, cols, mask, l1, l2, lr, w_out, nu_out, sums, penalty, masked);
    case ffi::DataType::S32:
      return Step<int32_t>(pool, w, nu, d_out, rows, cols, mask, l1, l2, lr, w_out, nu_out, sums, penalty, masked);
    default:
      return ffi::Error::InvalidArgument("rmsprop step: indices must be int16 or int32");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxregRmspropStep, Dispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Arg<ffi::AnyBuffer>()  // nu
                                  .Arg<ffi::AnyBuffer>()  // d_out
                                  .Arg<ffi::AnyBuffer>()  // rows
                                  .Arg<ffi::AnyBuffer>()  // cols
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Arg<ffi::AnyBuffer>()  // l1
                                  .Arg<ffi::AnyBuffer>()  // l2
                                  .Arg<ffi::AnyBuffer>()  // lr
                                  .Ret<ffi::Buffer<ffi::F32>>()  // w
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nu
                                  .Ret<ffi::Buffer<ffi::F32>>()  // (sum|w|, sum w^2)
                                  .Attr<bool>("penalty")
                                  .Attr<bool>("masked"));

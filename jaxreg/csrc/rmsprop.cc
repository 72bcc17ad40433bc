// One RMSprop step with the Keras weight penalty for the embedding bag's table (the first
// layer's kernel), as an XLA FFI custom call on CPU (built by jaxreg/cpu_kernels.py, used by
// jaxreg/optim.py). Its data gradient comes in as the bag's output gradient d_out and the
// batch's (row, column) pairs: table row c's gradient is the sum of d_out[r] over the pairs
// (r, c), in their order, exactly as the bag's backward (embedding_bag.cc) computes it
// (fused_step.h: the blocks, the checks, the penalty's sums).
//
// Per element, exactly the operations (and their order) of XLA's code for jaxreg's optax
// path, Keras 2 RMSprop (rho 0.9, eps 1e-7 outside the root), no decay or proximal stage:
//   g  = (fma(w, 2 l2, w >= 0 ? l1 : 0) + -(w >= 0 ? 0 : l1)) + g_data   (penalty's gradient)
//   g  = g * mask                                                       (padded units)
//   nu = fma(g * g, 0.1, nu * 0.9)
//   w  = fma((1 / (sqrt(nu) + eps)) * g, -lr, w)
// with lr the learning rate at this step (its schedule's value, computed by the caller), so
// the parameters equal that path's bit for bit where the fused multiply-adds fall as XLA's (see
// fused_step.h's MulAdd). Also returns sum|w| and sum w^2 of the incoming w (the penalty's value).
//
// Why by hand: XLA:CPU runs the update as five loops over the array (three elementwise
// fusions and two reductions) plus a copy, ~14 passes over memory, and the bag's backward
// writes a dense gradient table that the update then reads back. Here: 4 passes over memory
// (read w, nu; write w, nu in place).

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "fused_step.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxreg;

// The variant's scalars, in optim.py's order.
enum Scalar { kL1, kL2, kLearningRate, kScalars };

// The update of n elements of one variant. The options are template parameters so that the
// loop has no branches and vectorizes.
template <bool kPenalty, bool kMasked>
void StepRange(const float* __restrict W, const float* __restrict U, const float* __restrict G,
               const float* __restrict M, float* __restrict W_out, float* __restrict U_out, float c1, float c2,
               float neg_lr, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = W[i];
    float grad = G[i];
    if constexpr (kPenalty) grad = PenalizedGradient(x, grad, c1, c2);
    if constexpr (kMasked) grad = grad * M[i];
    const float a = MulAdd(grad * grad, 0.1f, U[i] * 0.9f);
    U_out[i] = a;
    W_out[i] = MulAdd((1.0f / (std::sqrt(a) + 1e-7f)) * grad, neg_lr, x);
  }
}

// Operands: see fused_step.h's TableStep (one moment, nu; scalars [batch..., 3]: l1, l2, lr).
ffi::Error Dispatch(ffi::ThreadPool pool, ffi::AnyBuffer w, ffi::AnyBuffer nu, ffi::AnyBuffer d_out,
                    ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer mask, ffi::AnyBuffer scalars,
                    ffi::Result<ffi::Buffer<ffi::F32>> w_out, ffi::Result<ffi::Buffer<ffi::F32>> nu_out,
                    ffi::Result<ffi::Buffer<ffi::F32>> sums, bool penalty, bool masked) {
  auto sums_dims = sums->dimensions();
  const TableStep op{"rmsprop step", w,       {nu},   d_out, rows, cols, mask, scalars,
                     std::vector<int64_t>(sums_dims.begin(), sums_dims.end()), sums->typed_data(), masked};
  if (scalars.dimensions().size() > 0 && scalars.dimensions().back() != kScalars) {
    return ffi::Error::InvalidArgument("rmsprop step: scalars must be (l1, l2, learning rate)");
  }
  const float* W = w.typed_data<float>();
  const float* U = nu.typed_data<float>();
  float* W_out = w_out->typed_data();
  float* U_out = nu_out->typed_data();
  return DispatchTableStep(pool, op, [&](const Block& k) {
    const float c1 = k.scalars[kL1], c2 = k.scalars[kL2] * 2.0f, neg_lr = -k.scalars[kLearningRate];
    auto run = [&](auto penalty_on, auto masked_on) {
      StepRange<decltype(penalty_on)::value, decltype(masked_on)::value>(
          W + k.at, U + k.at, k.grad, k.mask, W_out + k.at, U_out + k.at, c1, c2, neg_lr, k.count);
    };
    using On = std::true_type;
    using Off = std::false_type;
    if (penalty) {
      k.mask ? run(On{}, On{}) : run(On{}, Off{});
    } else {
      k.mask ? run(Off{}, On{}) : run(Off{}, Off{});
    }
  });
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
                                  .Arg<ffi::AnyBuffer>()  // scalars (l1, l2, learning rate)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // w
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nu
                                  .Ret<ffi::Buffer<ffi::F32>>()  // (sum|w|, sum w^2)
                                  .Attr<bool>("penalty")
                                  .Attr<bool>("masked"));

// One Adam step with the Keras weight penalty for the embedding bag's table (the first layer's
// kernel), as an XLA FFI custom call on CPU (built by jaxreg/cpu_kernels.py, used by
// jaxreg/optim.py), the companion of rmsprop.cc: the table's data gradient is summed block by
// block from the bag's output gradient and the batch's pairs (fused_step.h), then each block's
// w, mu and nu are updated at once, in place: 6 passes over memory, where XLA:CPU's optax
// chain writes the gradient table, reads it back and runs the update as several loops.
//
// Per element, the operations and order of XLA's code for jaxreg's optax chain (optim.py:
// the optimizer's direction -> decoupled decay -> -learning rate at this step; no proximal
// stage), fused multiply-adds where XLA's LLVM contracts them (fused_step.h's MulAdd):
//   g  = penalty's gradient + data gradient, times the unit mask (as rmsprop.cc)
// "adam" (optax.scale_by_adam; XLA turns its divisions by the bias corrections into products
// with their reciprocals, c1 = 1 / (1 - b1^t), c2 = 1 / (1 - b2^t)):
//   mu = fma(1 - b1, g, b1 * mu)           nu = fma(1 - b2, g * g, b2 * nu)
//   u  = (mu * c1) / (sqrt(nu * c2) + eps)
// "adam_keras" (Keras 3's Adam, optim.scale_by_keras_adam; c1 = sqrt(1 - b2^t) / (1 - b1^t)):
//   mu = fma(g - mu, 1 - b1, mu)           nu = fma(fma(g, g, -nu), 1 - b2, nu)
//   u  = (mu * c1) / (sqrt(nu) + eps)
// then u = fma(wd, w, u) with decoupled decay (AdamW), and w = fma(-rate, u, w). The
// step-dependent numbers (c1, c2, the scheduled rate) are computed by the caller from the
// optimizer state's step counts, as the optax chain computes them. Returns sum|w| and sum w^2
// of the incoming w (the penalty's value).

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "fused_step.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxreg;

// The variant's scalars, in optim.py's order (ADAM_SCALARS).
enum Scalar { kL1, kL2, kB1, kB2, kEps, kWeightDecay, kNegRate, kC1, kC2, kScalars };

struct Numbers {
  float l1, two_l2;  // the penalty's
  float b1, one_b1, b2, one_b2, eps, wd, neg_rate, corr1, corr2;
};

// The update of n elements of one variant; the options are template parameters so that the
// loop has no branches and vectorizes.
template <bool kPenalty, bool kMasked, bool kDecay, bool kKeras>
void StepRange(const float* __restrict W, const float* __restrict Mu, const float* __restrict Nu,
               const float* __restrict G, const float* __restrict M, float* __restrict W_out, float* __restrict Mu_out,
               float* __restrict Nu_out, const Numbers s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = W[i];
    float grad = G[i];
    if constexpr (kPenalty) grad = PenalizedGradient(x, grad, s.l1, s.two_l2);
    if constexpr (kMasked) grad = grad * M[i];
    float mu, nu, u;
    if constexpr (kKeras) {
      mu = MulAdd(grad - Mu[i], s.one_b1, Mu[i]);
      nu = MulAdd(MulAdd(grad, grad, -Nu[i]), s.one_b2, Nu[i]);
      u = (mu * s.corr1) / (std::sqrt(nu) + s.eps);
    } else {
      mu = MulAdd(s.one_b1, grad, s.b1 * Mu[i]);
      nu = MulAdd(s.one_b2, grad * grad, s.b2 * Nu[i]);
      u = (mu * s.corr1) / (std::sqrt(nu * s.corr2) + s.eps);
    }
    if constexpr (kDecay) u = MulAdd(s.wd, x, u);
    Mu_out[i] = mu;
    Nu_out[i] = nu;
    W_out[i] = MulAdd(s.neg_rate, u, x);
  }
}

template <bool... kFlags>
struct Flags {};

// Calls f(Flags<...>) with the runtime flags as compile-time ones.
template <typename F, bool... kDone>
void WithFlags(const F& f, Flags<kDone...>) {
  f(Flags<kDone...>{});
}
template <typename F, bool... kDone, typename... Rest>
void WithFlags(const F& f, Flags<kDone...>, bool next, Rest... rest) {
  if (next) {
    WithFlags(f, Flags<kDone..., true>{}, rest...);
  } else {
    WithFlags(f, Flags<kDone..., false>{}, rest...);
  }
}

template <bool kPenalty, bool kMasked, bool kDecay, bool kKeras, typename... Args>
void Call(Flags<kPenalty, kMasked, kDecay, kKeras>, Args... args) {
  StepRange<kPenalty, kMasked, kDecay, kKeras>(args...);
}

// Operands: see fused_step.h's TableStep (moments mu and nu; scalars [batch..., kScalars]).
ffi::Error Dispatch(ffi::ThreadPool pool, ffi::AnyBuffer w, ffi::AnyBuffer mu, ffi::AnyBuffer nu,
                    ffi::AnyBuffer d_out, ffi::AnyBuffer rows, ffi::AnyBuffer cols, ffi::AnyBuffer mask,
                    ffi::AnyBuffer scalars, ffi::Result<ffi::Buffer<ffi::F32>> w_out,
                    ffi::Result<ffi::Buffer<ffi::F32>> mu_out, ffi::Result<ffi::Buffer<ffi::F32>> nu_out,
                    ffi::Result<ffi::Buffer<ffi::F32>> sums, bool penalty, bool masked, bool decay, bool keras) {
  auto sums_dims = sums->dimensions();
  const TableStep op{"adam step", w,       {mu, nu}, d_out, rows, cols, mask, scalars,
                     std::vector<int64_t>(sums_dims.begin(), sums_dims.end()), sums->typed_data(), masked};
  if (scalars.dimensions().size() > 0 && scalars.dimensions().back() != kScalars) {
    return ffi::Error::InvalidArgument("adam step: scalars must be optim.ADAM_SCALARS");
  }
  const float* W = w.typed_data<float>();
  const float* Mu = mu.typed_data<float>();
  const float* Nu = nu.typed_data<float>();
  float* W_out = w_out->typed_data();
  float* Mu_out = mu_out->typed_data();
  float* Nu_out = nu_out->typed_data();
  return DispatchTableStep(pool, op, [&](const Block& k) {
    const float* v = k.scalars;
    const Numbers s{v[kL1], v[kL2] * 2.0f, v[kB1],         1.0f - v[kB1], v[kB2], 1.0f - v[kB2],
                    v[kEps], v[kWeightDecay], v[kNegRate], v[kC1],       v[kC2]};
    WithFlags(
        [&](auto flags) {
          Call(flags, W + k.at, Mu + k.at, Nu + k.at, k.grad, k.mask, W_out + k.at, Mu_out + k.at, Nu_out + k.at, s,
               k.count);
        },
        Flags<>{}, penalty, k.mask != nullptr, decay, keras);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxregAdamStep, Dispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Arg<ffi::AnyBuffer>()  // mu
                                  .Arg<ffi::AnyBuffer>()  // nu
                                  .Arg<ffi::AnyBuffer>()  // d_out
                                  .Arg<ffi::AnyBuffer>()  // rows
                                  .Arg<ffi::AnyBuffer>()  // cols
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Arg<ffi::AnyBuffer>()  // scalars (optim.ADAM_SCALARS)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // w
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mu
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nu
                                  .Ret<ffi::Buffer<ffi::F32>>()  // (sum|w|, sum w^2)
                                  .Attr<bool>("penalty")
                                  .Attr<bool>("masked")
                                  .Attr<bool>("decay")
                                  .Attr<bool>("keras"));

// One RMSprop step with the Keras weight penalty, for one large parameter, as an XLA FFI
// custom call on CPU (built by jaxreg/cpu_kernels.py, used by jaxreg/optim.py).
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
// incoming w (the penalty's value), summed in a fixed order (chunks of kChunk, each
// vectorized) that does not depend on threads or on how many variants share the call.
//
// Why by hand: XLA:CPU runs this as five loops over the array (three elementwise fusions and
// two reductions) plus a copy, ~14 passes over memory where this needs 5 (read w, nu, g;
// write w, nu in place); for the 10,000-row first layer that is most of an epoch's traffic.

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#ifdef __FMA__
inline float MulAdd(float a, float b, float c) { return std::fma(a, b, c); }
#else
inline float MulAdd(float a, float b, float c) { return a * b + c; }
#endif

using jaxreg::ParallelFor;

constexpr int64_t kChunk = 32768;

// Elements [lo, hi) of one variant; the options are template parameters so that the loop
// has no branches and vectorizes.
template <bool kPenalty, bool kMasked>
void StepRange(const float* __restrict W, const float* __restrict U, const float* __restrict G,
               const float* __restrict M, float* __restrict W_out, float* __restrict U_out, float c1, float c2,
               float neg_lr, int64_t lo, int64_t hi, float& sum_abs_out, float& sum_sq_out) {
  float sum_abs = 0.0f, sum_sq = 0.0f;
  for (int64_t i = lo; i < hi; ++i) {
    const float x = W[i];
    sum_abs += std::fabs(x);
    sum_sq += x * x;
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
  sum_abs_out = sum_abs;
  sum_sq_out = sum_sq;
}

// Operands: w, nu, g_data, mask (ignored unless `masked`), then per-variant scalars l1, l2,
// lr. Leading batch dims come from vmap (vmap_method="broadcast_all"): every operand has
// them all, so variant b's data starts at b times its per-variant size.
ffi::Error Step(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> nu, ffi::Buffer<ffi::F32> g,
                ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> l1, ffi::Buffer<ffi::F32> l2,
                ffi::Buffer<ffi::F32> lr, ffi::Result<ffi::Buffer<ffi::F32>> w_out,
                ffi::Result<ffi::Buffer<ffi::F32>> nu_out, ffi::Result<ffi::Buffer<ffi::F32>> sums, bool penalty,
                bool masked) {
  const int64_t n_batch = sums->element_count() / 2;  // sums: batch dims + (2,)
  const int64_t n = n_batch ? w.element_count() / n_batch : 0;  // elements per variant
  if (nu.element_count() != w.element_count() || g.element_count() != w.element_count() ||
      (masked && mask.element_count() != w.element_count())) {
    return ffi::Error::InvalidArgument("rmsprop step: w, nu, g and mask must have one shape");
  }
  if (l1.element_count() != n_batch || l2.element_count() != n_batch || lr.element_count() != n_batch) {
    return ffi::Error::InvalidArgument("rmsprop step: one l1, l2 and learning rate per variant");
  }
  const int64_t chunks = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  std::vector<float> partial(2 * n_batch * chunks);
  ParallelFor(pool, n_batch * chunks, [&](int64_t item) {
    const int64_t b = item / chunks, lo = (item % chunks) * kChunk, hi = std::min(n, lo + kChunk);
    const float* __restrict W = w.typed_data() + b * n;
    const float* __restrict U = nu.typed_data() + b * n;
    const float* __restrict G = g.typed_data() + b * n;
    const float* __restrict M = masked ? mask.typed_data() + b * n : nullptr;
    float* __restrict W_out = w_out->typed_data() + b * n;
    float* __restrict U_out = nu_out->typed_data() + b * n;
    const float c1 = l1.typed_data()[b], c2 = l2.typed_data()[b] * 2.0f, neg_lr = -lr.typed_data()[b];
    float sum_abs = 0.0f, sum_sq = 0.0f;
    auto run = [&](auto penalty_on, auto masked_on) {
      StepRange<decltype(penalty_on)::value, decltype(masked_on)::value>(W, U, G, M, W_out, U_out, c1, c2, neg_lr, lo, hi,
                                                                      sum_abs, sum_sq);
    };
    using On = std::true_type;
    using Off = std::false_type;
    if (penalty) {
      M ? run(On{}, On{}) : run(On{}, Off{});
    } else {
      M ? run(Off{}, On{}) : run(Off{}, Off{});
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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxregRmspropStep, Step,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // nu
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g_data
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mask
                                  .Arg<ffi::Buffer<ffi::F32>>()  // l1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // l2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // lr
                                  .Ret<ffi::Buffer<ffi::F32>>()  // w
                                  .Ret<ffi::Buffer<ffi::F32>>()  // nu
                                  .Ret<ffi::Buffer<ffi::F32>>()  // (sum|w|, sum w^2)
                                  .Attr<bool>("penalty")
                                  .Attr<bool>("masked"));

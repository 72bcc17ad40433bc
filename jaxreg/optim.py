"""Optimizers from optax, with the Keras semantics spelled out.

RMSprop keeps an accumulator a = rho * a + (1 - rho) * g^2 starting at 0 and steps
  "keras2" (Keras 2.3, the study's version, jaxreg's default): w -= lr * g / (sqrt(a) + eps)
  "keras3" (Keras 3):                                           w -= lr * g / sqrt(a + eps)
with rho = 0.9 and eps = 1e-7. The difference only shows where a is tiny (rarely-seen words).

Two different things are both called "L2" elsewhere; jaxreg names them apart:
  * `l2` (in `penalties`) is Keras' L2 *penalty*: c * sum(w^2) is added to the loss, so its
    gradient passes through RMSprop's per-coordinate scaling (coupled with the optimizer).
  * `weight_decay` here is *decoupled* weight decay (AdamW-style, optax.add_decayed_weights):
    w -= lr * wd * w, applied after RMSprop's scaling, so it shrinks every kernel at the same
    relative rate whatever its gradient history.
Likewise `l1` is Keras' subgradient L1 penalty (never gives exact zeros), while
`l1_proximal` soft-thresholds the kernels after each step (w <- sign(w) max(|w| - lr*c, 0)),
which produces exact zeros.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg import cpu_kernels

RMSPROP_MODES = ("keras2", "keras3")


def scale_by_keras_rms(mode: str = "keras2", rho: float = 0.9, eps: float = 1e-7) -> optax.GradientTransformation:
    """RMSprop's scaling g / (sqrt(a) + eps) ("keras2") or g / sqrt(a + eps) ("keras3")."""
    if mode not in RMSPROP_MODES:
        raise ValueError(f"RMSprop mode must be one of {RMSPROP_MODES}, got {mode!r}")
    return optax.scale_by_rms(decay=rho, eps=eps, initial_scale=0.0, eps_in_sqrt=(mode == "keras3"))


def keras_rmsprop(learning_rate, mode: str = "keras2", rho: float = 0.9, eps: float = 1e-7):
    """RMSprop exactly as Keras 2.3 ("keras2") or Keras 3 ("keras3"); learning_rate may be traced."""
    return optax.chain(scale_by_keras_rms(mode, rho, eps), optax.scale_by_learning_rate(learning_rate))


class ProximalL1State(NamedTuple):
    """Soft-thresholding keeps no state."""


def proximal_l1(threshold, mask) -> optax.GradientTransformation:
    """Turn updates u into u' so that w + u' = soft_threshold(w + u, threshold) on masked leaves.

    Must come last in a chain (it needs the final update). Written by hand because optax has
    no proximal operator for L1 on parameters.
    """

    def init_fn(params):
        del params
        return ProximalL1State()

    def update_fn(updates, state, params):
        def prox(u, w, m):
            if not m:
                return u
            moved = w + u
            return jnp.sign(moved) * jnp.maximum(jnp.abs(moved) - threshold, 0.0) - w

        return jax.tree.map(prox, updates, params, mask), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(hp, mask, mode: str = "keras2", *, weight_decay: bool = True, l1_proximal: bool = True):
    """RMSprop -> decoupled weight decay (masked) -> -learning_rate -> proximal L1 (masked).

    `hp` holds per-variant (possibly traced) learning_rate, weight_decay and l1_proximal.
    Decoupled decay must sit before the learning-rate scaling, whose sign flip turns
    "+ wd * w" into a shrinking step. The static flags drop stages every variant has at 0.
    """
    parts = [scale_by_keras_rms(mode)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(hp.weight_decay, mask=mask))
    parts.append(optax.scale_by_learning_rate(hp.learning_rate))
    if l1_proximal:
        parts.append(proximal_l1(hp.learning_rate * hp.l1_proximal, mask))
    return optax.chain(*parts)


FUSED_STEP_TARGET = "jaxreg_rmsprop_step"


def keras_rmsprop_step(w, nu, d_out, rows, cols, l1, l2, learning_rate, mask=None, *, penalty: bool = True):
    """One Keras-2 RMSprop step with the Keras L1 + L2 penalty on an embedding bag's table, as one CPU kernel.

    `w` is the table of `embedding_bag.embedding_bag(w, rows, cols, d_out.shape[-2])` and
    `d_out` the loss's gradient with respect to that bag's output: the table's data gradient
    (the bag's backward of d_out) is summed inside the kernel, block by block, and never
    stored. Returns (w', nu', sum|w|, sum w^2). w' and nu' equal, bit for bit, what jaxreg's
    optax path gives for a penalized table (bag backward, plus the penalty's gradient, times
    the unit `mask` if any, `keras_rmsprop(learning_rate)`, optax.apply_updates) with no decay
    or proximal stage; the sums of the incoming w are the penalty's value, summed in another
    order than XLA (so equal to ~1e-7). Written by hand because XLA:CPU runs the update as
    ~14 passes over the table where this kernel needs 4 (jaxreg/csrc/rmsprop.cc); needs
    `cpu_kernels.cpu_kernels_available()`. vmaps (any number, any operands) become one call.
    """
    if not cpu_kernels.cpu_kernels_available():
        raise RuntimeError("keras_rmsprop_step needs jaxreg's CPU kernels, which are unavailable here (see jaxreg.cpu_kernels)")
    if jax.default_backend() != "cpu":  # no fallback: the optax chain is the path off the CPU
        raise RuntimeError(f"keras_rmsprop_step is a CPU kernel; the default backend here is {jax.default_backend()!r}")
    f32 = jnp.float32
    mask_arg = jnp.zeros((1,) * w.ndim, f32) if mask is None else mask
    scalars = (jnp.asarray(v, f32) for v in (l1, l2, learning_rate))
    w, nu, sums = _fused_step(bool(penalty), mask is not None)(w, nu, d_out, rows, cols, mask_arg, *scalars)
    return w, nu, sums[..., 0], sums[..., 1]


@functools.cache
def _fused_step(penalty: bool, masked: bool):
    """The kernel's call, with its own vmap rule: w and nu (updated in place, so the result's
    shape) get the batch axis in full, the other operands as an axis of size 1 where they
    are shared, so variants that share a batch share its pairs (grouped once per call).
    Nested vmaps apply the rule once per level."""

    @jax.custom_batching.custom_vmap
    def step(w, nu, d_out, rows, cols, mask, l1, l2, lr):
        f32 = jnp.float32
        sums = jax.ShapeDtypeStruct(w.shape[:-2] + (2,), f32)
        out = (jax.ShapeDtypeStruct(w.shape, f32), jax.ShapeDtypeStruct(w.shape, f32), sums)
        call = jax.ffi.ffi_call(FUSED_STEP_TARGET, out, input_output_aliases={0: 0, 1: 1})
        return call(w, nu, d_out, rows, cols, mask, l1, l2, lr, penalty=penalty, masked=masked)

    @step.def_vmap
    def _(axis_size, in_batched, w, nu, *rest):
        def full(x, batched):
            return x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))

        shared = (x if batched else x[None] for x, batched in zip(rest, in_batched[2:]))
        return step(full(w, in_batched[0]), full(nu, in_batched[1]), *shared), (True, True, True)

    return step

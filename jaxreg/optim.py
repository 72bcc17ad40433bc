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
# Every optimizer a variant may name, and the per-variant numbers each one reads (all traced, so
# variants that differ only in these numbers share a program; the name selects the program):
#   sgd        optax.sgd: t = g + momentum * t, step -lr * t (nesterov: -lr * (g + momentum * t))
#   adam       optax.adam: eps added to sqrt of the bias-corrected second moment
#   adam_keras Keras 3 Adam: m / (sqrt(v) + eps) with the bias corrections folded into the step size
#   adamw      adam with the decoupled decay stage always on (its strength: weight_decay), as optax.adamw
#   sgdw       sgd (momentum, no Nesterov) with the decoupled decay stage always on: Loshchilov and Hutter's SGDW,
#              w -= lr * (t + weight_decay * w), the decay outside the momentum (sgd + l2: inside it)
#   lion       optax.lion (Chen et al. 2023): sign of an interpolated momentum
OPTIMIZER_NUMBERS = {
    "keras2": (),
    "keras3": (),
    "sgd": ("momentum",),
    "adam": ("b1", "b2", "eps"),
    "adam_keras": ("b1", "b2", "eps"),
    "adamw": ("b1", "b2", "eps"),
    "lion": ("b1", "b2"),
    "sgdw": ("momentum",),
}
OPTIMIZERS = tuple(OPTIMIZER_NUMBERS)
# Arrays each keeps per parameter (its moments), for the memory estimate
OPTIMIZER_SLOTS = {"keras2": 1, "keras3": 1, "sgd": 1, "adam": 2, "adam_keras": 2, "adamw": 2, "lion": 1, "sgdw": 1}
# Learning-rate schedules (of the optimizer's step count) and the numbers each reads:
#   constant     learning_rate
#   exponential  learning_rate * decay_rate ** (step / decay_steps)        (optax.exponential_decay)
#   cosine       linear warmup 0 -> learning_rate over warmup_steps, then cosine down to
#                alpha * learning_rate at decay_steps (warmup included)  (optax.warmup_cosine_decay_schedule)
#   piecewise    learning_rate times the product of the scales whose boundary the step has passed
#                (optax.piecewise_constant_schedule); the number of boundaries selects the program
SCHEDULE_NUMBERS = {
    "constant": (),
    "exponential": ("decay_rate", "decay_steps"),
    "cosine": ("warmup_steps", "decay_steps", "alpha"),
    "piecewise": ("boundaries", "scales"),
}
SCHEDULES = tuple(SCHEDULE_NUMBERS)


def scale_by_keras_rms(mode: str = "keras2", rho: float = 0.9, eps: float = 1e-7) -> optax.GradientTransformation:
    """RMSprop's scaling g / (sqrt(a) + eps) ("keras2") or g / sqrt(a + eps) ("keras3")."""
    if mode not in RMSPROP_MODES:
        raise ValueError(f"RMSprop mode must be one of {RMSPROP_MODES}, got {mode!r}")
    return optax.scale_by_rms(decay=rho, eps=eps, initial_scale=0.0, eps_in_sqrt=(mode == "keras3"))


def keras_rmsprop(learning_rate, mode: str = "keras2", rho: float = 0.9, eps: float = 1e-7):
    """RMSprop exactly as Keras 2.3 ("keras2") or Keras 3 ("keras3"); learning_rate may be traced."""
    return optax.chain(scale_by_keras_rms(mode, rho, eps), optax.scale_by_learning_rate(learning_rate))


class ScaleByKerasAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_keras_adam(b1=0.9, b2=0.999, eps=1e-7) -> optax.GradientTransformation:
    """Keras 3 Adam's direction: m * (sqrt(1 - b2^t) / (1 - b1^t)) / (sqrt(v) + eps).

    Unlike optax.adam (eps added to sqrt of the bias-corrected v), Keras adds eps to sqrt(v)
    itself and folds both bias corrections into the step; the same float operations as
    keras/src/optimizers/adam.py, so the two agree to float32 round-off. b1, b2, eps may be traced.
    """

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByKerasAdamState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_int32_increment(state.count)
        t = count.astype(jnp.float32)
        fold = jnp.sqrt(1 - jnp.power(b2, t)) / (1 - jnp.power(b1, t))
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1 - b2), state.nu, updates)
        direction = jax.tree.map(lambda m, v: (m * fold) / (jnp.sqrt(v) + eps), mu, nu)
        return direction, ScaleByKerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_optimizer(name: str, hp, nesterov: bool = False) -> optax.GradientTransformation:
    """The optimizer's direction before decay and the learning rate (see OPTIMIZER_NUMBERS); hp's numbers may be traced."""
    if name in RMSPROP_MODES:
        return scale_by_keras_rms(name)
    if name in ("sgd", "sgdw"):
        return optax.trace(decay=hp.momentum, nesterov=nesterov)
    if name in ("adam", "adamw"):
        return optax.scale_by_adam(b1=hp.b1, b2=hp.b2, eps=hp.eps)
    if name == "adam_keras":
        return scale_by_keras_adam(hp.b1, hp.b2, hp.eps)
    if name == "lion":
        return optax.scale_by_lion(b1=hp.b1, b2=hp.b2)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def learning_rate_schedule(schedule: str, hp):
    """The learning rate as a function of the step count (0 for the first step), or hp.learning_rate itself
    for "constant" (so a constant rate keeps the program and optimizer state it always had).

    Written in jnp rather than with optax's schedule builders, which check their numbers in
    Python and so refuse traced ones; tests/test_optimizers.py checks each against optax's.
    """
    lr = hp.learning_rate
    if schedule == "constant":
        return lr
    if schedule == "exponential":
        return lambda count: lr * jnp.power(hp.decay_rate, count / hp.decay_steps)
    if schedule == "cosine":

        def cosine(count):
            warm = lr * count / jnp.maximum(hp.warmup_steps, 1.0)
            done = jnp.clip((count - hp.warmup_steps) / (hp.decay_steps - hp.warmup_steps), 0.0, 1.0)
            decayed = lr * ((1 - hp.alpha) * 0.5 * (1 + jnp.cos(jnp.pi * done)) + hp.alpha)
            return jnp.where(count < hp.warmup_steps, warm, decayed)

        return cosine
    if schedule == "piecewise":
        return lambda count: lr * jnp.prod(jnp.where(count >= hp.boundaries, hp.scales, 1.0))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


class ProximalL1State(NamedTuple):
    """Soft-thresholding keeps no state."""


class ScheduledProximalL1State(NamedTuple):
    """The step count, for a threshold that follows the learning-rate schedule."""

    count: jax.Array


def proximal_l1(threshold, mask) -> optax.GradientTransformation:
    """Turn updates u into u' so that w + u' = soft_threshold(w + u, threshold) on masked leaves.

    threshold: a number, or a function of the step count (under a learning-rate schedule: the
    rate at that step times the strength; the state then counts steps). Must come last in a
    chain (it needs the final update). Written by hand because optax has no proximal operator
    for L1 on parameters.
    """
    scheduled = callable(threshold)

    def init_fn(params):
        del params
        return ScheduledProximalL1State(jnp.zeros((), jnp.int32)) if scheduled else ProximalL1State()

    def update_fn(updates, state, params):
        level = threshold(state.count) if scheduled else threshold

        def prox(u, w, m):
            if not m:
                return u
            moved = w + u
            return jnp.sign(moved) * jnp.maximum(jnp.abs(moved) - level, 0.0) - w

        new_state = ScheduledProximalL1State(optax.safe_int32_increment(state.count)) if scheduled else state
        return jax.tree.map(prox, updates, params, mask), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    hp,
    mask,
    mode: str = "keras2",
    *,
    weight_decay: bool = True,
    l1_proximal: bool = True,
    schedule: str = "constant",
    nesterov: bool = False,
):
    """optimizer `mode` -> decoupled weight decay (masked) -> -learning rate (its schedule) -> proximal L1 (masked).

    `hp` holds per-variant (possibly traced) numbers: learning_rate, the optimizer's (see
    OPTIMIZER_NUMBERS) and the schedule's (SCHEDULE_NUMBERS), weight_decay and l1_proximal.
    Decoupled decay must sit before the learning-rate scaling, whose sign flip turns
    "+ wd * w" into a shrinking step (so "adamw" is exactly optax.adamw). The static flags
    drop stages every variant has at 0; the coupled L1/L2 penalties are in the loss, before
    any of this, so they work with every optimizer.
    """
    rate = learning_rate_schedule(schedule, hp)
    parts = [scale_by_optimizer(mode, hp, nesterov)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(hp.weight_decay, mask=mask))
    parts.append(optax.scale_by_learning_rate(rate))
    if l1_proximal:
        threshold = (lambda count: rate(count) * hp.l1_proximal) if callable(rate) else rate * hp.l1_proximal
        parts.append(proximal_l1(threshold, mask))
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
        raise RuntimeError(
            "keras_rmsprop_step needs jaxreg's CPU kernels, which are unavailable here (see jaxreg.cpu_kernels)"
        )
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

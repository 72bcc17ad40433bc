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


# The fused CPU step of the first layer's table (jaxreg/csrc: rmsprop.cc, adam.cc): the optimizers it
# computes, its XLA FFI target, and the optimizer-state moments it updates (found in the state by name).
FUSED_TARGETS = {
    "keras2": "jaxreg_rmsprop_step",
    "adam": "jaxreg_adam_step",
    "adam_keras": "jaxreg_adam_step",
    "adamw": "jaxreg_adam_step",
}
FUSED_OPTIMIZERS = tuple(FUSED_TARGETS)
FUSED_MOMENTS = {"keras2": ("nu",), "adam": ("mu", "nu"), "adam_keras": ("mu", "nu"), "adamw": ("mu", "nu")}
# The per-variant numbers each kernel reads, in its order (rmsprop.cc's and adam.cc's enum Scalar):
# `rate` is the learning rate at this step (its schedule's value), c1 and c2 Adam's bias corrections.
FUSED_SCALARS = {
    "jaxreg_rmsprop_step": ("l1", "l2", "rate"),
    "jaxreg_adam_step": ("l1", "l2", "b1", "b2", "eps", "weight_decay", "neg_rate", "c1", "c2"),
}


def fused_step_supports(name: str, *, weight_decay: bool, l1_proximal: bool) -> bool:
    """Whether the fused CPU step computes optimizer `name`'s chain (make_optimizer) for the table:
    RMSprop "keras2" and the Adams, any schedule, no proximal stage; decoupled decay with the Adams."""
    return name in FUSED_TARGETS and not l1_proximal and (not weight_decay or name != "keras2")


def _rate_at_step(schedule: str, hp, opt_state):
    """The learning rate make_optimizer's chain multiplies this step's update by (negated there), from the
    schedule stage's step count in `opt_state` (the chain's state before the step)."""
    rate = learning_rate_schedule(schedule, hp)
    if not callable(rate):
        return rate
    [count] = [s.count for s in opt_state if isinstance(s, optax.ScaleByScheduleState)]
    return rate(count)


def _adam_corrections(name: str, hp, opt_state):
    """Adam's bias corrections at this step, from the direction's step count (the chain's first stage), with
    the operations of its update: optax.scale_by_adam's 1 / (1 - b^t) (XLA turns its divisions into these
    reciprocals' products), or Keras' sqrt(1 - b2^t) / (1 - b1^t) and an unused 1."""
    count = optax.safe_int32_increment(opt_state[0].count)
    if name == "adam_keras":
        t = count.astype(jnp.float32)
        return jnp.sqrt(1 - jnp.power(hp.b2, t)) / (1 - jnp.power(hp.b1, t)), jnp.ones((), jnp.float32)
    return 1 / (1 - hp.b1**count), 1 / (1 - hp.b2**count)


def fused_step_scalars(name: str, schedule: str, hp, opt_state) -> jax.Array:
    """The kernel's per-variant numbers (FUSED_SCALARS) for this step: hp's, and those that depend on
    the step count, from the incoming optimizer state as the optax chain computes them (so a resumed
    run, whose state holds the counts, continues exactly)."""
    rate = _rate_at_step(schedule, hp, opt_state)
    if name == "keras2":
        numbers = (hp.l1, hp.l2, rate)
    else:
        c1, c2 = _adam_corrections(name, hp, opt_state)
        numbers = (hp.l1, hp.l2, hp.b1, hp.b2, hp.eps, hp.weight_decay, -1 * rate, c1, c2)
    return jnp.stack([jnp.asarray(x, jnp.float32) for x in numbers])


def _check_fused_backend(what: str) -> None:
    if not cpu_kernels.cpu_kernels_available():
        raise RuntimeError(f"{what} needs jaxreg's CPU kernels, which are unavailable here (see jaxreg.cpu_kernels)")
    if jax.default_backend() != "cpu":  # no fallback: the optax chain is the path off the CPU
        raise RuntimeError(f"{what} is a CPU kernel; the default backend here is {jax.default_backend()!r}")


def fused_table_step(name, w, moments, d_out, rows, cols, scalars, mask=None, *, penalty=True, weight_decay=False):
    """One step of optimizer `name` (FUSED_OPTIMIZERS) with the Keras L1 + L2 penalty on an embedding bag's
    table, as one CPU kernel. Returns (w', moments', sum|w|, sum w^2).

    `w` is the table of `embedding_bag.embedding_bag(w, rows, cols, d_out.shape[-2])` and `d_out`
    the loss's gradient with respect to that bag's output: the table's data gradient is summed
    inside the kernel, block by block, and never stored. `moments`: the optimizer state's arrays
    for w (FUSED_MOMENTS), `scalars` from `fused_step_scalars`. w' and moments' equal what
    make_optimizer's chain gives for that penalized table (bag backward, plus the penalty's
    gradient, times the unit `mask` if any, the chain, optax.apply_updates) with no proximal
    stage, to float32 round-off (bit for bit where the kernel's fused multiply-adds fall where
    XLA's do, see jaxreg/csrc/fused_step.h); the sums of the incoming w are the penalty's value,
    summed in another order than XLA (~1e-7). Written by hand because XLA:CPU runs this update as
    ~14 passes over the table where this kernel needs 4 (RMSprop) or 6 (Adam); needs
    `cpu_kernels.cpu_kernels_available()`. vmaps (any number, any operands) become one call.
    """
    _check_fused_backend(f"the fused {name} step")
    if name not in FUSED_TARGETS or (weight_decay and name == "keras2"):
        raise ValueError(f"no fused step for optimizer {name!r} with weight_decay={weight_decay}")
    target = FUSED_TARGETS[name]
    attrs = (("penalty", bool(penalty)), ("masked", mask is not None))
    if target == "jaxreg_adam_step":
        attrs += (("decay", bool(weight_decay)), ("keras", name == "adam_keras"))
    mask_arg = jnp.zeros((1,) * w.ndim, jnp.float32) if mask is None else mask
    step = _fused_call(target, len(moments), attrs)
    w, moments, sums = step(w, tuple(moments), d_out, rows, cols, mask_arg, scalars)
    return w, moments, sums[..., 0], sums[..., 1]


def keras_rmsprop_step(w, nu, d_out, rows, cols, l1, l2, learning_rate, mask=None, *, penalty: bool = True):
    """One Keras-2 RMSprop step with the Keras L1 + L2 penalty on an embedding bag's table, as one CPU
    kernel (`fused_table_step` "keras2" at `learning_rate`). Returns (w', nu', sum|w|, sum w^2)."""
    _check_fused_backend("keras_rmsprop_step")
    scalars = jnp.stack([jnp.asarray(v, jnp.float32) for v in (l1, l2, learning_rate)])
    w, (nu,), sum_abs, sum_sq = fused_table_step("keras2", w, (nu,), d_out, rows, cols, scalars, mask, penalty=penalty)
    return w, nu, sum_abs, sum_sq


@functools.cache
def _fused_call(target: str, n_moments: int, attrs: tuple):
    """The kernel's call, with its own vmap rule: w and the moments (updated in place, so the
    result's shape) get the batch axis in full, the other operands as an axis of size 1 where
    they are shared, so variants that share a batch share its pairs (grouped once per call).
    Nested vmaps apply the rule once per level."""

    @jax.custom_batching.custom_vmap
    def step(w, moments, d_out, rows, cols, mask, scalars):
        f32 = jnp.float32
        table = jax.ShapeDtypeStruct(w.shape, f32)
        out = (table,) * (1 + n_moments) + (jax.ShapeDtypeStruct(w.shape[:-2] + (2,), f32),)
        call = jax.ffi.ffi_call(target, out, input_output_aliases={i: i for i in range(1 + n_moments)})
        w, *moments, sums = call(w, *moments, d_out, rows, cols, mask, scalars, **dict(attrs))
        return w, tuple(moments), sums

    @step.def_vmap
    def _(axis_size, in_batched, w, moments, *rest):
        def full(x, batched):
            return x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))

        shared = (x if batched else x[None] for x, batched in zip(rest, in_batched[2:]))
        moments = tuple(full(m, b) for m, b in zip(moments, in_batched[1]))
        return step(full(w, in_batched[0]), moments, *shared), (True, (True,) * n_moments, True)

    return step

"""Pure training and evaluation functions: init, one step, one epoch, evaluation.

Everything here is a function of (state, batch, key, hyperparameters) that jits and vmaps.
Numbers that vary per variant (learning rate, penalties, decay, dropout rate) are arrays in
`Hyperparameters`; what fixes shapes or program structure is in the static `StepConfig`.
Randomness: the caller passes one key per variant; each step folds in the step counter,
so no key is ever used twice.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxreg import losses, optim, penalties
from jaxreg.batches import Batch, SparseBatch
from jaxreg.embedding_bag import embedding_bag
from jaxreg.model import MLP, PRODUCTS, init_params


class Hyperparameters(NamedTuple):
    """Per-variant numbers; each leaf a float32 scalar (or a [variants] array under vmap).

    The one list of per-variant numbers and their defaults (`HYPERPARAMETERS`): VariantSpec
    has a field of each name, and the sweep's axes are these and the width.
    """

    learning_rate: jax.Array = 1e-3
    l1: jax.Array = 0.0
    l2: jax.Array = 0.0
    weight_decay: jax.Array = 0.0
    l1_proximal: jax.Array = 0.0
    dropout_rate: jax.Array = 0.0

    @classmethod
    def create(cls, *args, **kwargs) -> "Hyperparameters":
        """The arguments of Hyperparameters (the fields, by position or name; defaults as above) as float32 scalars."""
        return cls(*(jnp.asarray(v, jnp.float32) for v in cls(*args, **kwargs)))


HYPERPARAMETERS = Hyperparameters._fields


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static choices that select a compiled program.

    widths: hidden widths (of the bucket, when padding); product: how the first layer
    multiplies the multi-hot input ("sparse" gather or "dense" matmul); loss: "keras"
    (clipped, as the study) or "logits"; rmsprop: "keras2" or "keras3" eps placement. The
    use_* flags drop stages that every variant of a program has switched off (a stage at
    0 gives bit-identical results, it only costs time). fused_update: the first layer's
    kernel takes its gradient (from the bag's output gradient), penalty and RMSprop step as
    one CPU kernel (`optim.keras_rmsprop_step`, same parameters bit for bit; needs the CPU
    kernels, sparse batches and product, rmsprop "keras2", no decay and no proximal stage).
    """

    widths: tuple[int, ...] = (16, 16)
    product: str = "sparse"
    loss: str = "keras"
    rmsprop: str = "keras2"
    use_penalty: bool = True
    use_dropout: bool = True
    use_weight_decay: bool = True
    use_l1_proximal: bool = True
    fused_update: bool = False

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"StepConfig.widths must be positive, got {self.widths}")
        checks = {"product": PRODUCTS, "loss": losses.LOSS_MODES, "rmsprop": optim.RMSPROP_MODES}
        for field, allowed in checks.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"StepConfig.{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if self.fused_update and not fused_update_supports(self):
            raise ValueError(
                "StepConfig.fused_update needs product='sparse', rmsprop='keras2' and no weight decay or proximal L1 "
                f"stage, got product={self.product!r}, rmsprop={self.rmsprop!r}, "
                f"use_weight_decay={self.use_weight_decay}, use_l1_proximal={self.use_l1_proximal}"
            )

    @property
    def model(self) -> MLP:
        return MLP(self.widths, self.product)


def fused_update_supports(config: StepConfig) -> bool:
    """Whether `optim.keras_rmsprop_step` computes exactly this config's optimizer (see StepConfig)."""
    return (
        config.product == "sparse"
        and config.rmsprop == "keras2"
        and not config.use_weight_decay
        and not config.use_l1_proximal
    )


# The first layer's kernel (10,000 rows), the parameter that fused_update steps with one kernel.
FUSED_PATH = ("params", "hidden_0", "kernel")


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array


def optimizer(config: StepConfig, hp: Hyperparameters, params) -> optax.GradientTransformation:
    """The optimizer chain for this config; hp values may be traced."""
    return optim.make_optimizer(
        hp,
        penalties.hidden_kernel_mask(params),
        config.rmsprop,
        weight_decay=config.use_weight_decay,
        l1_proximal=config.use_l1_proximal,
    )


def init_state(key: jax.Array, config: StepConfig, num_words: int, true_widths: Sequence[int] | None = None):
    """(TrainState, unit_mask): parameters from `key` at `true_widths`, padded to config.widths."""
    params, unit_mask = init_params(key, true_widths or config.widths, num_words, config.widths)
    opt_state = optimizer(config, Hyperparameters.create(), params).init(params)
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32)), unit_mask


def _weighted_mean(values, weight):
    # Not jnp.dot(values, weight), though XLA:CPU then evaluates the loss's logs faster: under
    # vmap a batched dot's rounding depends on the variant's position in the batch.
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def penalty(config: StepConfig, params, hp: Hyperparameters, mask=None) -> jax.Array:
    """The Keras weight penalty (L1 + L2 on the hidden kernels, or on `mask`) of these parameters."""
    if not config.use_penalty:
        return jnp.zeros((), jnp.float32)
    return penalties.weight_penalty(params, hp.l1, hp.l2, penalties.hidden_kernel_mask(params) if mask is None else mask)


def _at(tree, path):
    return traverse_util.flatten_dict(tree)[path]


def _replaced(tree, path, leaf):
    flat = traverse_util.flatten_dict(tree)
    flat[path] = leaf
    return traverse_util.unflatten_dict(flat)


def train_step(state: TrainState, batch: Batch, key: jax.Array, hp: Hyperparameters, *, config: StepConfig, unit_mask=None):
    """One RMSprop step on data loss + penalty, dropout active. Returns (state, metrics).

    metrics: loss (Keras': data loss + penalty, dropout active), data_loss, penalty,
    accuracy, count (real rows in the batch, the weight for epoch means).
    `unit_mask` (from init_state) keeps padded units at exactly zero.
    """
    dropout_key = jax.random.fold_in(key, state.step) if config.use_dropout else None
    penalty_mask = penalties.hidden_kernel_mask(state.params)
    first_product = None
    if config.fused_update:  # the fused kernel owns that leaf's gradient (data and penalty) and penalty value
        if not isinstance(batch.x, SparseBatch):
            raise ValueError("StepConfig.fused_update needs sparse batches (batches.SparseBatch)")
        penalty_mask = _replaced(penalty_mask, FUSED_PATH, False)
        first_product = embedding_bag(_at(state.params, FUSED_PATH), batch.x.rows, batch.x.cols, batch.x.num_rows)

    def loss_fn(params, first_product):
        logits = config.model.apply(params, batch.x, hp.dropout_rate, dropout_key, first_product)
        data_loss = _weighted_mean(losses.binary_cross_entropy(logits, batch.y, config.loss), batch.weight)
        pen = penalty(config, params, hp, penalty_mask)
        return data_loss + pen, (data_loss, pen, logits)

    (loss, (data_loss, pen, logits)), (loss_grads, d_first_product) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
    )(state.params, first_product)
    grads = loss_grads if unit_mask is None else jax.tree.map(jnp.multiply, loss_grads, unit_mask)
    updates, opt_state = optimizer(config, hp, state.params).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if config.fused_update:  # XLA drops the chain's own (unused) computation for this leaf
        w, nu, sum_abs, sum_sq = optim.keras_rmsprop_step(
            _at(state.params, FUSED_PATH),
            _at(state.opt_state[0].nu, FUSED_PATH),
            d_first_product,
            batch.x.rows,
            batch.x.cols,
            hp.l1,
            hp.l2,
            hp.learning_rate,
            None if unit_mask is None else _at(unit_mask, FUSED_PATH),
            penalty=config.use_penalty,
        )
        params = _replaced(params, FUSED_PATH, w)
        rms = opt_state[0]  # make_optimizer's first stage scales by RMS
        opt_state = (rms._replace(nu=_replaced(rms.nu, FUSED_PATH, nu)), *opt_state[1:])
        if config.use_penalty:
            pen = pen + (hp.l1 * sum_abs + hp.l2 * sum_sq)
            loss = data_loss + pen
    metrics = {
        "loss": loss,
        "data_loss": data_loss,
        "penalty": pen,
        "accuracy": _weighted_mean(losses.correct(logits, batch.y), batch.weight),
        "count": jnp.sum(batch.weight),
    }
    return TrainState(params, opt_state, state.step + 1), metrics


def _epoch_means(metrics):
    """Keras' epoch aggregation: each batch's value weighted by its number of real rows."""
    count = metrics.pop("count")
    return {k: jnp.sum(v * count) / jnp.sum(count) for k, v in metrics.items()}


def train_epoch(state: TrainState, batches: Batch, key: jax.Array, hp: Hyperparameters, *, config: StepConfig, unit_mask=None):
    """All batches of one epoch (leading axis of `batches`) as one lax.scan; returns (state, epoch means)."""

    def body(state, i):
        batch = jax.tree.map(lambda a: a[i], batches)  # indexed, not scanned: no transposed copy of all batches under vmap
        return train_step(state, batch, key, hp, config=config, unit_mask=unit_mask)

    state, metrics = jax.lax.scan(body, state, jnp.arange(batches.y.shape[0]))
    return state, _epoch_means(metrics)


# Validation computes a sparse first layer of at most this width for all batches at once (see evaluate).
ALL_BATCHES_MAX_WIDTH = 64


def evaluate(params, batches: Batch, hp: Hyperparameters, *, config: StepConfig):
    """Validation metrics without dropout: loss (Keras': data loss + penalty), data_loss, penalty, accuracy.

    A narrow sparse first layer is computed for all batches in one embedding-bag call before
    the scan over batches: under vmap that call reads one variant's table for all its batches
    while it is in cache, where a call per batch would fetch every variant's table again each
    time. The same sums, so the same numbers; for wide layers the products would take more
    memory than they save time.
    """
    width = config.widths[0]
    products = None
    if isinstance(batches.x, SparseBatch) and config.product == "sparse" and width <= ALL_BATCHES_MAX_WIDTH:
        table = _at(params, FUSED_PATH)
        x = batches.x
        products = jax.vmap(lambda r, c: embedding_bag(table, r, c, x.num_rows))(x.rows, x.cols)

    def body(_, batch_and_index):
        batch, i = batch_and_index
        product = None if products is None else products[i]  # indexed, not scanned: no transposed copy under vmap
        logits = config.model.apply(params, batch.x, first_product=product)
        return None, (losses.binary_cross_entropy(logits, batch.y, config.loss), losses.correct(logits, batch.y))

    # Per-example values leave the loop and are averaged after it: inside it, XLA:CPU fuses the
    # loss into its reduction and evaluates the logs there one at a time (~4x slower).
    _, (per_example, correct) = jax.lax.scan(body, None, (batches, jnp.arange(batches.y.shape[0])))
    weight = batches.weight
    metrics = {
        "data_loss": jax.vmap(_weighted_mean)(per_example, weight),
        "accuracy": jax.vmap(_weighted_mean)(correct, weight),
        "count": jnp.sum(weight, axis=-1),
    }
    means = _epoch_means(metrics)
    pen = penalty(config, params, hp)
    return {"loss": means["data_loss"] + pen, "data_loss": means["data_loss"], "penalty": pen, "accuracy": means["accuracy"]}

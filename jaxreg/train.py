"""Pure training and evaluation functions: init, one step, one epoch, evaluation.

Everything here is a function of (state, batch, key, hyperparameters) that jits and vmaps.
Numbers that vary per variant (learning rate, penalties, decay, dropout rate) are arrays in
`Hyperparameters`; what fixes shapes or program structure is in the static `StepConfig`
(the model, the task, the optimizer's stages). Randomness: the caller passes one key per
variant; each step folds in the step counter, so no key is ever used twice.

`train_step` is the reference: forward, loss, gradient, optax update. `fused_train_step`
computes the same step with the first layer's kernel updated by one CPU kernel; the
execution plan (`StepConfig.fused_update`, set by `variants.execution`) picks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxreg import optim, penalties
from jaxreg.batches import Batch, SparseBatch
from jaxreg.embedding_bag import embedding_bag
from jaxreg.model import MLP, PRODUCTS, init_params
from jaxreg.networks import Network, default_penalized
from jaxreg.tasks import Task


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
    # the optimizer's numbers (optim.OPTIMIZER_NUMBERS says which optimizer reads which)
    momentum: jax.Array = 0.0
    b1: jax.Array = 0.9
    b2: jax.Array = 0.999
    eps: jax.Array = 1e-7
    # the learning-rate schedule's numbers (optim.SCHEDULE_NUMBERS); boundaries and scales are
    # vectors (piecewise constant: one entry per boundary, in steps), all others scalars
    decay_rate: jax.Array = 1.0
    decay_steps: jax.Array = 0.0
    warmup_steps: jax.Array = 0.0
    alpha: jax.Array = 0.0
    boundaries: jax.Array = ()
    scales: jax.Array = ()

    @classmethod
    def create(cls, *args, **kwargs) -> Hyperparameters:
        """The arguments of Hyperparameters (the fields, by position or name; defaults as above) as float32 scalars."""
        return cls(*(jnp.asarray(v, jnp.float32) for v in cls(*args, **kwargs)))


HYPERPARAMETERS = Hyperparameters._fields
VECTOR_HYPERPARAMETERS = ("boundaries", "scales")  # one entry per piecewise boundary; not a sweep axis
SCALAR_HYPERPARAMETERS = tuple(f for f in HYPERPARAMETERS if f not in VECTOR_HYPERPARAMETERS)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static choices that select a compiled program.

    network: your own model (a `networks.Network`), or None for the study's MLP, which
    `widths` (hidden widths; of the bucket, when padding) and `product` (how its first layer
    multiplies multi-hot input: "sparse" gather or "dense" matmul) describe. task: what is
    predicted and the loss (`tasks.Task`). optimizer: one of optim.OPTIMIZERS ("keras2" and
    "keras3": RMSprop's two eps placements); nesterov: Nesterov momentum (sgd only); schedule:
    one of optim.SCHEDULES (its numbers, like the optimizer's, are per-variant hp arrays). The
    use_* flags drop stages that every variant of a program has switched off (a stage at 0
    gives bit-identical results, it only costs time); `variants.Bucket.step_config` derives
    them from the variants, and a step refuses a non-zero number whose stage is off.
    fused_update: `fused_train_step` (see there; the MLP only, with the CPU kernels, sparse
    batches and product, optimizer "keras2", "adam", "adam_keras" or "adamw" at any schedule,
    no proximal stage, decoupled decay with the Adams only: `fused_update_supports`).
    """

    widths: tuple[int, ...] = (16, 16)
    product: str = "sparse"
    task: Task = Task()
    optimizer: str = "keras2"
    nesterov: bool = False
    schedule: str = "constant"
    use_penalty: bool = True
    use_dropout: bool = True
    use_weight_decay: bool = True
    use_l1_proximal: bool = True
    fused_update: bool = False
    network: Network | None = None

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"StepConfig.widths must be positive, got {self.widths}")
        checks = {"product": PRODUCTS, "optimizer": optim.OPTIMIZERS, "schedule": optim.SCHEDULES}
        for field, allowed in checks.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"StepConfig.{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if not isinstance(self.task, Task):
            raise ValueError(f"StepConfig.task must be a jaxreg.tasks.Task, got {self.task!r}")
        if self.network is not None and not isinstance(self.network, Network):
            raise ValueError(f"StepConfig.network must be a jaxreg.networks.Network or None, got {self.network!r}")
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"StepConfig.nesterov is for optimizer 'sgd', got optimizer={self.optimizer!r}")
        if self.fused_update and not fused_update_supports(self):
            raise ValueError(
                "StepConfig.fused_update needs the study's MLP, product='sparse', an optimizer of "
                f"{optim.FUSED_OPTIMIZERS} and no proximal L1 stage (nor weight decay with 'keras2'), "
                f"got network={self.network!r}, product={self.product!r}, optimizer={self.optimizer!r}, "
                f"use_weight_decay={self.use_weight_decay}, use_l1_proximal={self.use_l1_proximal}"
            )

    @property
    def model(self) -> MLP:
        """The study's MLP at these widths (only when `network` is None)."""
        if self.network is not None:
            raise ValueError("StepConfig.model is the study's MLP; this config trains its own network")
        return MLP(self.widths, self.product, self.task.outputs)

    @property
    def penalize(self):
        """The rule that selects the penalized (and decayed) leaves by their path."""
        return default_penalized if self.network is None else self.network.penalize


def fused_update_supports(config: StepConfig) -> bool:
    """Whether `optim.fused_table_step` computes exactly this config's optimizer (see StepConfig)."""
    return (
        config.network is None
        and config.product == "sparse"
        and optim.fused_step_supports(
            config.optimizer, weight_decay=config.use_weight_decay, l1_proximal=config.use_l1_proximal
        )
    )


# The first layer's kernel (10,000 rows), the parameter that fused_update steps with one kernel.
FUSED_PATH = ("params", "hidden_0", "kernel")

# Each stage flag and the numbers it carries; a stage that is off must see zeros (check_stages).
STAGE_FIELDS = {
    "use_penalty": ("l1", "l2"),
    "use_dropout": ("dropout_rate",),
    "use_weight_decay": ("weight_decay",),
    "use_l1_proximal": ("l1_proximal",),
}


def check_stages(config: StepConfig, hp: Hyperparameters) -> None:
    """Raise when a number is non-zero but its stage is off in `config` (it would be silently ignored).

    Checked where the numbers are known (not traced): eager calls and `variants.BucketProgram`.
    """
    for flag, fields in STAGE_FIELDS.items():
        if getattr(config, flag):
            continue
        for field in fields:
            value = getattr(hp, field)
            if not is_traced(value) and np.any(np.asarray(value) != 0):
                shown = ", ".join(f"{v:g}" for v in np.ravel(value))
                raise ValueError(
                    f"{field}={shown} is non-zero but StepConfig.{flag}=False drops that stage; "
                    f"set {flag}=True or {field}=0"
                )


def is_traced(x) -> bool:
    """Whether x is a JAX tracer (its value unknown until the program runs)."""
    return isinstance(x, jax.core.Tracer)


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array


def optimizer(config: StepConfig, hp: Hyperparameters, params) -> optax.GradientTransformation:
    """The optimizer chain for this config; hp values may be traced."""
    return optim.make_optimizer(
        hp,
        penalties.kernel_mask(params, config.penalize),
        config.optimizer,
        weight_decay=config.use_weight_decay,
        l1_proximal=config.use_l1_proximal,
        schedule=config.schedule,
        nesterov=config.nesterov,
    )


def init_params_for(key: jax.Array, config: StepConfig, num_words: int, true_widths: Sequence[int] | None = None):
    """(params, unit_mask) of the config's model: the study's MLP at `true_widths`, padded to
    config.widths (unit_mask marks the real entries, None without padding), or its network's."""
    if config.network is not None:
        return config.network.init(key, jnp.zeros((1, num_words), jnp.float32)), None
    return init_params(key, true_widths or config.widths, num_words, config.widths, config.task.outputs)


def init_state(key: jax.Array, config: StepConfig, num_words: int, true_widths: Sequence[int] | None = None):
    """(TrainState, unit_mask): parameters from `key` (see init_params_for) and a fresh optimizer state."""
    params, unit_mask = init_params_for(key, config, num_words, true_widths)
    opt_state = optimizer(config, Hyperparameters.create(), params).init(params)
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32)), unit_mask


def forward(config: StepConfig, params, x, dropout_rate=0.0, dropout_key=None, first_product=None):
    """The model's outputs; dropout active when `dropout_key` is given. `first_product`: the MLP's
    first-layer product, computed by the caller (see fused_train_step and evaluate)."""
    if config.network is not None:
        return config.network.apply(params, x, dropout_rate, dropout_key)
    return config.model.apply(params, x, dropout_rate, dropout_key, first_product)


def _weighted_mean(values, weight):
    # Not jnp.dot(values, weight), though XLA:CPU then evaluates the loss's logs faster: under
    # vmap a batched dot's rounding depends on the variant's position in the batch.
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def penalty(config: StepConfig, params, hp: Hyperparameters, mask=None) -> jax.Array:
    """The Keras weight penalty (L1 + L2 on the config's penalized leaves, or on `mask`) of these parameters."""
    if not config.use_penalty:
        return jnp.zeros((), jnp.float32)
    mask = penalties.kernel_mask(params, config.penalize) if mask is None else mask
    return penalties.weight_penalty(params, hp.l1, hp.l2, mask)


def _at(tree, path):
    return traverse_util.flatten_dict(tree)[path]


def _replaced(tree, path, leaf):
    flat = traverse_util.flatten_dict(tree)
    flat[path] = leaf
    return traverse_util.unflatten_dict(flat)


def _objective(config: StepConfig, batch: Batch, hp: Hyperparameters, dropout_key, penalty_mask):
    """loss(params, first_product) -> (data loss + penalty, (data loss, penalty, outputs)): what a step differentiates."""

    def loss_fn(params, first_product=None):
        outputs = forward(config, params, batch.x, hp.dropout_rate, dropout_key, first_product)
        data_loss = _weighted_mean(config.task.loss_per_example(outputs, batch.y), batch.weight)
        pen = penalty(config, params, hp, penalty_mask)
        return data_loss + pen, (data_loss, pen, outputs)

    return loss_fn


def _step_metrics(config: StepConfig, loss, data_loss, pen, outputs, batch: Batch) -> dict:
    """A step's metrics: loss (data loss + penalty), data_loss, penalty, the task's metric, count
    (real rows in the batch, the weight for epoch means)."""
    return {
        "loss": loss,
        "data_loss": data_loss,
        "penalty": pen,
        config.task.metric: _weighted_mean(config.task.metric_per_example(outputs, batch.y), batch.weight),
        "count": jnp.sum(batch.weight),
    }


def _dropout_key(config: StepConfig, key, step):
    return jax.random.fold_in(key, step) if config.use_dropout else None


def _masked(grads, unit_mask):
    """Gradients with padded units' entries zeroed, so that they stay exactly zero."""
    return grads if unit_mask is None else jax.tree.map(jnp.multiply, grads, unit_mask)


def train_step(
    state: TrainState, batch: Batch, key: jax.Array, hp: Hyperparameters, *, config: StepConfig, unit_mask=None
):
    """One optimizer step on data loss + penalty, dropout active. Returns (state, metrics).

    The reference step: forward, loss, gradient, the optax chain of `optimizer`. metrics: see
    _step_metrics (the loss is Keras': data loss + penalty, dropout active). `unit_mask`
    (from init_state) keeps padded units at exactly zero.
    """
    check_stages(config, hp)
    loss_fn = _objective(
        config, batch, hp, _dropout_key(config, key, state.step), penalties.kernel_mask(state.params, config.penalize)
    )
    (loss, (data_loss, pen, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer(config, hp, state.params).update(
        _masked(grads, unit_mask), state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, state.step + 1), _step_metrics(config, loss, data_loss, pen, outputs, batch)


def fused_train_step(
    state: TrainState, batch: Batch, key: jax.Array, hp: Hyperparameters, *, config: StepConfig, unit_mask=None
):
    """`train_step` with the MLP's first-layer kernel stepped by one CPU kernel (`optim.fused_table_step`).

    The kernel takes that leaf's data gradient from the gradient of the first layer's product
    (so the 10,000-row gradient is never stored), adds its penalty's gradient and steps the
    optimizer (RMSprop or Adam, its moments found in the optimizer state by name), all in one
    pass; the optax chain steps every other leaf and the step counts, and its own work for the
    fused leaf is unused (XLA drops it). The same parameters as train_step to float32 round-off;
    the penalty's value sums in another order (~1e-7).
    """
    if not isinstance(batch.x, SparseBatch):
        raise ValueError("StepConfig.fused_update needs sparse batches (batches.SparseBatch)")
    check_stages(config, hp)
    penalty_mask = _replaced(
        penalties.kernel_mask(state.params, config.penalize), FUSED_PATH, False
    )  # the kernel owns it
    first_product = embedding_bag(_at(state.params, FUSED_PATH), batch.x.rows, batch.x.cols, batch.x.num_rows)
    loss_fn = _objective(config, batch, hp, _dropout_key(config, key, state.step), penalty_mask)
    (loss, (data_loss, pen, outputs)), (loss_grads, d_first_product) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
    )(state.params, first_product)
    updates, opt_state = optimizer(config, hp, state.params).update(
        _masked(loss_grads, unit_mask), state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    names = optim.FUSED_MOMENTS[config.optimizer]
    w, moments, sum_abs, sum_sq = optim.fused_table_step(
        config.optimizer,
        _at(state.params, FUSED_PATH),
        tuple(_at(optax.tree_utils.tree_get(state.opt_state, name), FUSED_PATH) for name in names),
        d_first_product,
        batch.x.rows,
        batch.x.cols,
        optim.fused_step_scalars(config.optimizer, config.schedule, hp, state.opt_state),
        None if unit_mask is None else _at(unit_mask, FUSED_PATH),
        penalty=config.use_penalty,
        weight_decay=config.use_weight_decay,
    )
    params = _replaced(params, FUSED_PATH, w)
    fused_moments = {
        name: _replaced(optax.tree_utils.tree_get(opt_state, name), FUSED_PATH, moment)
        for name, moment in zip(names, moments)
    }
    opt_state = optax.tree_utils.tree_set(opt_state, **fused_moments)
    if config.use_penalty:
        pen = pen + (hp.l1 * sum_abs + hp.l2 * sum_sq)
        loss = data_loss + pen
    return TrainState(params, opt_state, state.step + 1), _step_metrics(config, loss, data_loss, pen, outputs, batch)


def step_function(config: StepConfig):
    """The step this config runs: fused_train_step with fused_update, else the reference train_step."""
    return fused_train_step if config.fused_update else train_step


def _epoch_means(metrics):
    """Keras' epoch aggregation: each batch's value weighted by its number of real rows."""
    count = metrics.pop("count")
    return {k: jnp.sum(v * count) / jnp.sum(count) for k, v in metrics.items()}


def train_epoch(
    state: TrainState,
    batches: Batch,
    key: jax.Array,
    hp: Hyperparameters,
    *,
    config: StepConfig,
    unit_mask=None,
    view=None,
):
    """All batches of one epoch (leading axis of `batches`) as one lax.scan; returns (state, epoch means).

    view: None, or this variant's index into `batches` stacked per data view [views, batches,
    ...] (see jaxreg.views). Views hold different numbers of batches, padded with batches of no
    real rows; a step on such a batch leaves the state as it was, step counter included, so the
    variant takes exactly the steps of a run on its view alone (and, with variants one after the
    other, costs nothing).
    """
    step = step_function(config)

    def body(state, i):
        if view is None:
            batch = jax.tree.map(
                lambda a: a[i], batches
            )  # indexed, not scanned: no transposed copy of all batches under vmap
            return step(state, batch, key, hp, config=config, unit_mask=unit_mask)
        batch = jax.tree.map(lambda a: a[view, i], batches)

        def skip(state):  # no real rows: the state as it was, and a count of 0 (no weight in the epoch means)
            _, metrics = jax.eval_shape(lambda s: step(s, batch, key, hp, config=config, unit_mask=unit_mask), state)
            return state, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics)

        # a real branch when variants run one after the other (lax.map), a select under vmap
        return jax.lax.cond(
            jnp.sum(batch.weight) > 0,
            lambda s: step(s, batch, key, hp, config=config, unit_mask=unit_mask),
            skip,
            state,
        )

    n_batches = batches.y.shape[0 if view is None else 1]
    state, metrics = jax.lax.scan(body, state, jnp.arange(n_batches))
    return state, _epoch_means(metrics)


# Validation computes a sparse first layer of at most this width for all batches at once (see evaluate).
ALL_BATCHES_MAX_WIDTH = 64


def evaluate(params, batches: Batch, hp: Hyperparameters, *, config: StepConfig):
    """Validation metrics without dropout: loss (data loss + penalty), data_loss, penalty, the task's metric.

    For the study's MLP, a narrow sparse first layer is computed for all batches in one
    embedding-bag call before the scan over batches: under vmap that call reads one
    variant's table for all its batches while it is in cache, where a call per batch would
    fetch every variant's table again each time. The same sums, so the same numbers; for
    wide layers the products would take more memory than they save time.
    """
    products = None
    if (
        config.network is None
        and isinstance(batches.x, SparseBatch)
        and config.product == "sparse"
        and config.widths[0] <= ALL_BATCHES_MAX_WIDTH
    ):
        table = _at(params, FUSED_PATH)
        x = batches.x
        products = jax.vmap(lambda r, c: embedding_bag(table, r, c, x.num_rows))(x.rows, x.cols)
    task = config.task

    def body(_, batch_and_index):
        batch, i = batch_and_index
        product = None if products is None else products[i]  # indexed, not scanned: no transposed copy under vmap
        outputs = forward(config, params, batch.x, first_product=product)
        return None, (task.loss_per_example(outputs, batch.y), task.metric_per_example(outputs, batch.y))

    # Per-example values leave the loop and are averaged after it: inside it, XLA:CPU fuses the
    # loss into its reduction and evaluates the logs there one at a time (~4x slower).
    _, (per_example, metric) = jax.lax.scan(body, None, (batches, jnp.arange(batches.y.shape[0])))
    weight = batches.weight
    means = _epoch_means(
        {
            "data_loss": jax.vmap(_weighted_mean)(per_example, weight),
            task.metric: jax.vmap(_weighted_mean)(metric, weight),
            "count": jnp.sum(weight, axis=-1),
        }
    )
    pen = penalty(config, params, hp)
    return {
        "loss": means["data_loss"] + pen,
        "data_loss": means["data_loss"],
        "penalty": pen,
        task.metric: means[task.metric],
    }

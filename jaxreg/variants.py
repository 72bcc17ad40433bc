"""Many variants in one compiled program: specs, bucket planning, vmapped and sharded epochs.

A *variant* is one model to train: the study's MLP at some widths, or your own model (a Flax
module, see `networks`), per-variant numbers (penalties, decay, dropout rate, learning rate)
and a seed. The model fixes shapes, so it selects the compiled program; all other numbers
are arrays on a variant axis. The task (binary, multiclass, regression) comes from the data.

A *bucket* is a grid seeds x configs that shares one program. Inside, the program is a
vmap over seeds (each seed has its own batches) of a vmap over configs (which share their
seed's batches, so each batch is built once per seed, and the CPU embedding-bag kernels
sort its indices once for all configs). With variant_loop="map" (or, by default, on one
CPU device without those kernels) the same program runs the variants one after the other
instead (lax.map), which is bit-identical to training each variant alone.
Narrow configs train zero-padded to a width fixed by their own width (see `PaddingPolicy`).

Randomness of a variant comes from its seed alone: initialization (key(seed) folded with
0), dropout (folded with 1, then with the step) and the data order (`batches.epoch_order`).
So a variant's history does not depend on which bucket, neighbours or devices it has.

Best-epoch parameters: after every epoch, `run` keeps, per variant and seed, a copy of the
parameters of its best epoch so far (the lowest validation data loss, before the variant
diverged; see `selection.best_epoch_tracker`), on the device, outside the compiled epoch, so the
training numbers are untouched. They cost one more copy of the parameters and are part of a
RunSnapshot, so a resumed run keeps the best so far.

Test split: for data with one (`Dataset.test`, e.g. IMDB with validation="holdout"), every
epoch also evaluates it inside the same compiled epoch (history columns test_*). Those
numbers only leave the program: the best epoch, divergence and everything else are decided
on the other columns, so a run's training and choices are the same with or without it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxreg import batches as batching
from jaxreg import distributed
from jaxreg import optim, tasks, views
from jaxreg.checks import FLOAT32_MAX, float32_finite, is_int, is_number
from jaxreg.cpu_kernels import cpu_kernels_available
from jaxreg.history import METRICS, metric_names, test_names  # noqa: F401  (METRICS: a classification run's columns, as before)
from jaxreg.selection import DIVERGENCE_THRESHOLD, best_epoch_tracker
from jaxreg.model import PRODUCTS as STEP_PRODUCTS
from jaxreg.model import unpadded
from jaxreg.networks import Network, as_network
from jaxreg.train import (
    HYPERPARAMETERS,
    Hyperparameters,
    StepConfig,
    check_stages,
    evaluate,
    fused_update_supports,
    init_state,
    train_epoch,
)

DEFAULT_WIDTHS = (16, 16)


class VariantError(ValueError):
    """An invalid variant specification; the message names the variant, field and value."""


# Documented limits of the inputs. Numbers train in float32, so a value must be finite there
# (1e39 is not); seeds must fit jax.random.key's and NumPy's seeding (0 <= seed < 2**32); a
# width above MAX_WIDTH would need tens of GB for one layer; a history keeps every epoch.
MAX_SEED = 2**32 - 1
MAX_WIDTH = 2**16
MAX_EPOCHS = 10**6
MAX_BATCH_SIZE = int(np.iinfo(np.int32).max) - 1  # batch rows are int32 indices, with one dummy row


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One model to train. Validated on construction.

    model: None for the study's MLP at `widths` (default (16, 16)), or your own model (a Flax
    Linen module or a `networks.Network`; `widths` then stays None: the model fixes its shapes).
    """

    name: str
    widths: tuple[int, ...] | None = None
    # the per-variant numbers: train.HYPERPARAMETERS, with Hyperparameters' defaults (tests/test_feedback.py)
    l1: float = 0.0
    l2: float = 0.0
    weight_decay: float = 0.0
    l1_proximal: float = 0.0
    dropout_rate: float = 0.0
    learning_rate: float = 1e-3
    optimizer: str = "keras2"
    seed: int = 0
    model: Network | None = None
    # the variant's view of the training split (see jaxreg.views): its first train_size examples
    # in its seed's order (None: all), with a fraction label_noise of their labels randomized
    train_size: int | None = None
    label_noise: float = 0.0

    def __post_init__(self):
        def bad(field, why):
            raise VariantError(f"variant {self.name!r}: {field}={getattr(self, field)!r} {why}")

        if not isinstance(self.name, str) or not self.name:
            raise VariantError(f"variant name must be a non-empty string, got {self.name!r}")
        if self.model is not None:
            self._check_model(bad)
        else:
            self._check_widths(bad)
        for field in ("l1", "l2", "weight_decay", "l1_proximal"):
            value = getattr(self, field)
            if not is_number(value) or not float32_finite(value) or value < 0:
                bad(field, f"must be a number >= 0 that is finite in float32 (at most {FLOAT32_MAX:.4g})")
            object.__setattr__(self, field, float(value))
        if not is_number(self.dropout_rate) or not 0 <= self.dropout_rate < 1 or np.float32(self.dropout_rate) >= 1:
            bad("dropout_rate", "must be a number in [0, 1) (also after rounding to float32)")
        object.__setattr__(self, "dropout_rate", float(self.dropout_rate))
        if (
            not is_number(self.learning_rate)
            or not float32_finite(self.learning_rate)
            or not self.learning_rate > 0
            or not np.float32(self.learning_rate) > 0
        ):
            bad("learning_rate", f"must be a number > 0 that is finite and nonzero in float32 (at most {FLOAT32_MAX:.4g})")
        object.__setattr__(self, "learning_rate", float(self.learning_rate))
        if not isinstance(self.optimizer, str) or self.optimizer not in optim.RMSPROP_MODES:
            bad("optimizer", f"must be one of {optim.RMSPROP_MODES}")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            bad("seed", f"must be an integer from 0 to 2**32-1={MAX_SEED}")
        object.__setattr__(self, "seed", int(self.seed))
        try:
            view = views.View(self.train_size, self.label_noise)
        except ValueError as e:
            raise VariantError(f"variant {self.name!r}: {e}") from None
        object.__setattr__(self, "train_size", None if view.train_size is None else int(view.train_size))
        object.__setattr__(self, "label_noise", float(view.label_noise))
        if self.model is not None and self.dropout_rate > 0 and not self.model.takes_dropout_rate:
            bad(
                "dropout_rate",
                f"does not reach model {self.model.name} ({self.model.style} style: its dropout rate is its own); "
                "set dropout_rate=0, or take (x, dropout_rate, dropout_key) in __call__ (see jaxreg.networks)",
            )

    def _check_widths(self, bad):
        if self.widths is None:
            object.__setattr__(self, "widths", DEFAULT_WIDTHS)
        if isinstance(self.widths, (str, bytes)) or not isinstance(self.widths, Iterable):
            bad("widths", "must be a sequence of integers")
        widths = tuple(self.widths)
        if not all(is_int(w) for w in widths):
            bad("widths", "must be a sequence of integers")
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))
        if not self.widths or not all(1 <= w <= MAX_WIDTH for w in self.widths):
            bad("widths", f"must be one or more widths, each from 1 to {MAX_WIDTH:,}")

    def _check_model(self, bad):
        try:
            object.__setattr__(self, "model", as_network(self.model))
            hash(self.model)
        except TypeError as e:
            bad("model", f"is not a usable model ({e})")
        if self.widths is not None:
            bad("widths", "is for the study's MLP; a variant with its own model takes its shapes from the model")

    @classmethod
    def from_dict(cls, values: dict) -> "VariantSpec":
        """Build from a mapping, rejecting unknown fields by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            given = {k: values[k] for k in unknown}
            raise VariantError(f"variant {values.get('name')!r}: unknown field(s) {given}; known: {sorted(known)}")
        return cls(**values)

    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters.create(**{name: getattr(self, name) for name in HYPERPARAMETERS})

    @property
    def view(self) -> views.View:
        """Which training examples and labels this variant sees."""
        return views.View(self.train_size, self.label_noise)


def with_seeds(variants: Iterable[VariantSpec], seeds: Sequence[int]) -> list[VariantSpec]:
    """Every variant once per seed."""
    return [dataclasses.replace(v, seed=int(s)) for v in variants for s in seeds]


@dataclasses.dataclass(frozen=True)
class PaddingPolicy:
    """The width each hidden layer trains at, fixed by the width alone.

    A width w trains at `floor` units when w <= floor (below it all widths cost about the
    same: 6 -> 16 is free), else, with `powers_of_two`, at the next power of two (less than
    twice w: 100 -> 128, 1024 stays). Models whose widths pad to the same widths share a
    bucket. Because the padded width never depends on the other variants of a run, a
    variant computes the same program alone and next to any neighbours (float32 sums over a
    padded layer may round differently from the unpadded layer's on some instruction sets).
    `PaddingPolicy(floor=1, powers_of_two=False)` turns padding off.
    """

    floor: int = 16
    powers_of_two: bool = True

    def width(self, w: int) -> int:
        if w <= self.floor:
            return self.floor
        return 1 << (w - 1).bit_length() if self.powers_of_two else w

    def widths(self, widths: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.width(w) for w in widths)


def padded_widths(all_widths: Iterable[Sequence[int]], policy: PaddingPolicy = PaddingPolicy()) -> dict:
    """Map each distinct widths tuple to the bucket widths it trains in."""
    return {tuple(w): policy.widths(w) for w in all_widths}


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A grid of `configs` x `seeds` that trains as one program: the study's MLP at `widths`, or `network`."""

    widths: tuple[int, ...] | None
    optimizer: str
    configs: tuple[VariantSpec, ...]
    seeds: tuple[int, ...]
    network: Network | None = None

    @property
    def variants(self) -> list[VariantSpec]:
        """The grid in [seed][config] order, seeds filled in."""
        return [dataclasses.replace(c, seed=s) for s in self.seeds for c in self.configs]

    def step_config(self, task: tasks.Task, product: str, cpu_kernels: bool = False) -> StepConfig:
        """The bucket's static step choices; with the CPU kernels the first layer's update is
        fused where the optimizer allows it (see StepConfig.fused_update)."""
        config = StepConfig(
            widths=self.widths or DEFAULT_WIDTHS,
            product=product,
            task=task,
            network=self.network,
            rmsprop=self.optimizer,
            use_penalty=any(c.l1 > 0 or c.l2 > 0 for c in self.configs),
            use_dropout=any(c.dropout_rate > 0 for c in self.configs) or (self.network is not None and self.network.style == "flax"),
            use_weight_decay=any(c.weight_decay > 0 for c in self.configs),
            use_l1_proximal=any(c.l1_proximal > 0 for c in self.configs),
        )
        fused = cpu_kernels and fused_update_supports(config)
        return dataclasses.replace(config, fused_update=True) if fused else config


def decoupled_stages(spec: VariantSpec) -> bool:
    """Whether a variant needs the optimizer stages after RMSprop's scaling (decoupled decay, proximal L1).

    Those stages keep a bucket off the fused first-layer step (see StepConfig.fused_update),
    which computes the same update to float32 round-off but not, on every instruction set,
    bit for bit. `plan` keeps such variants apart, so the path a variant's update takes
    depends on the variant alone, never on its neighbours.
    """
    return spec.weight_decay > 0 or spec.l1_proximal > 0


def plan(variants: Sequence[VariantSpec], policy: PaddingPolicy = PaddingPolicy()) -> list[Bucket]:
    """Group variants into buckets: same model (the MLP's padded widths, or the same own model),
    optimizer and decoupled stages, full seeds x configs grids.

    Variants are identified by (name, seed); duplicates are an error. Configs that share a
    bucket but were asked for different seed sets go to separate grids.
    """
    seen = set()
    for v in variants:
        if (v.name, v.seed) in seen:
            raise VariantError(f"variant {v.name!r} with seed {v.seed} appears twice")
        seen.add((v.name, v.seed))
    assignment = padded_widths((v.widths for v in variants if v.model is None), policy)
    configs: dict[str, VariantSpec] = {}
    seeds: dict[str, list[int]] = {}
    for v in variants:
        config = dataclasses.replace(v, seed=0)
        if configs.setdefault(v.name, config) != config:
            raise VariantError(f"variant name {v.name!r} is used for two different settings")
        seeds.setdefault(v.name, []).append(v.seed)
    groups: dict[tuple, list[VariantSpec]] = {}
    for name, config in configs.items():
        shape = assignment[config.widths] if config.model is None else None
        key = (shape, config.model, config.optimizer, decoupled_stages(config), tuple(sorted(seeds[name])))
        groups.setdefault(key, []).append(config)
    return [Bucket(w, opt, tuple(cs), s, network) for (w, network, opt, _, s), cs in groups.items()]


DENSE_PRODUCT_COLUMNS = 256


def cpu_kernels_on(devices) -> bool:
    """Whether the sparse first layer runs as jaxreg's CPU embedding-bag kernels on these devices."""
    return all(d.platform == "cpu" for d in devices) and cpu_kernels_available()


VARIANT_LOOPS = ("auto", "vmap", "map")


def sequential_on(devices, variant_loop: str = "auto", uneven_views: bool = False) -> bool:
    """Whether a bucket on these devices runs its variants one after the other (lax.map).

    "map" always, "vmap" never. "auto": on one CPU device without the CPU kernels, where XLA's
    batched gathers and scatters under vmap cost more than the same work variant by variant
    (the kernels take all variants of a vmapped call at once and share the index work between
    them); and on CPU when the variants train on different numbers of examples
    (`uneven_views`, see jaxreg.views), where one after the other each takes only its own
    steps, while under vmap every variant pays for the longest one's. "map" on one device
    makes a variant's history bit-identical alone and in any bucket (vmap's batched matmuls
    round differently, ~1e-7).
    """
    if variant_loop != "auto":
        return variant_loop == "map"
    devices = list(devices)
    if uneven_views and all(d.platform == "cpu" for d in devices):
        return True
    return len(devices) == 1 and devices[0].platform == "cpu" and not cpu_kernels_on(devices)


def choose_product(bucket: Bucket, product: str = "auto", sequential: bool = False, cpu_kernels: bool = False) -> str:
    """The first layer's product for "auto": 'sparse' with the CPU kernels, else by columns at once.

    With the kernels a 1024-unit layer is ~3x faster sparse than dense (and needs less
    memory). Without them (XLA's gather and scatter), 'dense' once the first-layer columns
    computed at once exceed 256: all configs' side by side under vmap, one config's when
    the variants run one after the other (`sequential`).
    """
    if product != "auto":
        return product
    if cpu_kernels or bucket.network is not None:  # own models multiply their input themselves
        return "sparse"
    columns = bucket.widths[0] * (1 if sequential else len(bucket.configs))
    return "dense" if columns > DENSE_PRODUCT_COLUMNS else "sparse"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every bucket of a run shares."""

    epochs: int = 20
    batch_size: int = 512
    eval_batch_size: int = 1024
    loss: str = "auto"  # tasks.task_for: "keras" for classification, "mse" for regression
    product: str = "auto"
    variant_loop: str = "auto"  # see sequential_on
    # early stopping: end the run once every variant has gone `patience` epochs without a new
    # best validation loss (see `stopped`); None trains all epochs
    patience: int | None = None

    def __post_init__(self):
        if self.patience is not None and (not is_int(self.patience) or not 1 <= self.patience <= MAX_EPOCHS):
            raise ValueError(f"RunSettings.patience must be None or an integer from 1 to {MAX_EPOCHS:,}, got {self.patience!r}")
        limits = {"epochs": MAX_EPOCHS, "batch_size": MAX_BATCH_SIZE, "eval_batch_size": MAX_BATCH_SIZE}
        for field, most in limits.items():
            value = getattr(self, field)
            if not is_int(value) or not 1 <= value <= most:
                raise ValueError(f"RunSettings.{field} must be an integer from 1 to {most:,}, got {value!r}")
        choices = {"loss": ("auto",) + tasks.LOSSES, "product": ("auto",) + STEP_PRODUCTS, "variant_loop": VARIANT_LOOPS}
        for field, allowed in choices.items():
            if not isinstance(getattr(self, field), str) or getattr(self, field) not in allowed:
                raise ValueError(f"RunSettings.{field} must be one of {allowed}, got {getattr(self, field)!r}")


@dataclasses.dataclass(frozen=True)
class Execution:
    """How one bucket runs on its devices: decided once, by `execution`, and used by training,
    the checkpoint, the memory estimate and the run folder's report.

    step: the compiled step's static choices (first-layer product, loss, stages, fused
    update); sequential: variants one after the other (lax.map) instead of vmapped;
    cpu_kernels: the sparse first layer runs as jaxreg's C++ kernels; n_configs: the
    bucket's configs, padded with inert copies to a multiple of the device count.
    """

    step: StepConfig
    sequential: bool
    cpu_kernels: bool
    n_configs: int

    @property
    def product(self) -> str:
        return self.step.product

    def describe(self) -> dict:
        """JSON-ready: which path this bucket takes (it changes with the machine)."""
        step = self.step
        return {
            "model": f"MLP{step.widths}" if step.network is None else step.network.name,
            "task": step.task.describe(),
            "product": self.product if step.network is None else "(the model's own)",
            "variant_loop": "map" if self.sequential else "vmap",
            "cpu_kernels": self.cpu_kernels,
            "fused_update": self.step.fused_update,
        }


def run_task(dataset, settings: RunSettings) -> tasks.Task:
    """The task a run trains: the data's kind (`Dataset.target`, binary if it has none) with settings.loss."""
    kind = getattr(dataset, "target", "binary")
    try:
        return tasks.task_for(kind, settings.loss, getattr(dataset, "num_classes", None))
    except ValueError as e:
        raise ValueError(f"RunSettings.loss={settings.loss!r} does not fit the data's {kind} task: {e}") from e


def execution(
    bucket: Bucket, settings: RunSettings, devices, task: tasks.Task | None = None, sparse_input: bool = True
) -> Execution:
    """The bucket's Execution on these devices under these settings, for `task` (default: binary
    classification with settings.loss, the study's) and sparse (multi-hot) or dense inputs.

    "auto" loops over variants only for XLA's sparse gathers (see sequential_on): a bucket
    that "auto" gives the dense product, or that reads dense inputs, is vmapped, so its
    configs share one matmul. Dense inputs are multiplied as they are (product "dense").
    """
    task = task if task is not None else run_task(None, settings)
    devices = list(devices)
    kernels = cpu_kernels_on(devices) and sparse_input
    uneven = len({c.train_size for c in bucket.configs}) > 1
    sequential = sequential_on(devices, settings.variant_loop, uneven)
    product = choose_product(bucket, settings.product, sequential, kernels) if sparse_input else "dense"
    return Execution(
        step=bucket.step_config(task, product, kernels),
        sequential=sequential and (settings.variant_loop == "map" or product == "sparse" or uneven),
        cpu_kernels=kernels,
        n_configs=len(sharded_configs(bucket, len(devices))),
    )


def variant_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh named 'variant' over the given (default: all) devices."""
    devices = list(devices if devices is not None else jax.devices())
    return jax.sharding.Mesh(np.array(devices), ("variant",))


PLACEMENTS = ("spread", "shard")


def bucket_cost(bucket: Bucket, num_words: int) -> int:
    """A bucket's work per epoch, estimated as its models x the parameters of each (at the padded widths).

    Every step reads and writes every parameter (the optimizer), and the first layer's
    sums grow with its width as its parameters do; only used to balance buckets over devices.
    """
    sizes = (num_words, *bucket.widths, 1)
    return len(bucket.seeds) * len(bucket.configs) * sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def place_buckets(buckets: Sequence[Bucket], devices, placement: str = "spread", num_words: int = 10_000) -> list[tuple]:
    """The devices each bucket runs on, in the buckets' order.

    "shard": every bucket on all devices, its configs sharded over them (padded to a multiple
    of the device count). "spread": each bucket whole on one device, so that buckets on
    different devices train at the same time (`run` dispatches them asynchronously): the
    costliest bucket first (`bucket_cost`), each to the device with the least estimated work
    so far, ties to the lowest device index. A bucket on one device runs the very program it
    runs on a one-device run, so its histories are the same bit for bit (tests/test_placement.py).
    """
    devices = list(devices)
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if not devices:
        raise ValueError("place_buckets: no devices given")
    if placement == "shard":
        return [tuple(devices) for _ in buckets]
    load = [0] * len(devices)
    placed: list = [None] * len(buckets)
    for i in sorted(range(len(buckets)), key=lambda i: (-bucket_cost(buckets[i], num_words), i)):
        d = min(range(len(devices)), key=lambda d: (load[d], d))
        load[d] += bucket_cost(buckets[i], num_words)
        placed[i] = (devices[d],)
    return placed


def _over_axis(fn, in_axes, size: int, sequential: bool):
    """Apply fn over a leading variant axis of the arguments whose in_axes entry is 0.

    jax.vmap by default. An axis of size 1 is squeezed and restored instead (a size-1 vmap
    still produces batched matmuls and transposes that made a lone `bigger` model markedly
    slower on CPU). With `sequential`, a lax.map runs one variant after the other (see
    sequential_on for when).
    """
    def squeezed(*args):
        args = [a if ax is None else jax.tree.map(lambda x: x[0], a) for a, ax in zip(args, in_axes)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    def mapped(*args):
        def one(batched):
            it = iter(batched)
            return fn(*[next(it) if ax is not None else a for a, ax in zip(args, in_axes)])

        return jax.lax.map(one, tuple(a for a, ax in zip(args, in_axes) if ax is not None))

    if size == 1:
        return squeezed
    return mapped if sequential else jax.vmap(fn, in_axes=in_axes)


def sharded_configs(bucket: Bucket, n_devices: int) -> tuple[VariantSpec, ...]:
    """The bucket's configs, padded with inert copies of the last one to a multiple of n_devices."""
    return bucket.configs + (bucket.configs[-1],) * (-len(bucket.configs) % n_devices)


@functools.lru_cache(maxsize=None)
def _init_over_seeds(config: StepConfig, num_words: int, true_widths: tuple[int, ...]):
    """init_state vmapped over a stack of keys, compiled once per (config, widths)."""
    return jax.jit(jax.vmap(lambda key: init_state(key, config, num_words, true_widths)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _bucket_epoch(
    config: StepConfig, n_configs: int, n_seeds: int, sequential: bool,
    states, unit_mask, hp, keys, train_batches, val_batches, view_index=None, test_batches=None,
):
    """One epoch of a seeds x configs grid: train, then validate (and test, given test_batches),
    every variant. Jitted once per shape. The test metrics only leave the program: nothing in it
    reads them.

    view_index: None (every config trains on its seed's batches [seeds, batches, ...]), or
    per config its data view's index into batches stacked [seeds, views, batches, ...].
    """

    def one(state, mask, hp, view, key, batches):
        state, metrics = train_epoch(state, batches, key, hp, config=config, unit_mask=mask, view=view)
        val = evaluate(state.params, val_batches, hp, config=config)
        out = {**metrics, **{f"val_{k}": v for k, v in val.items()}}
        if test_batches is not None:
            test = evaluate(state.params, test_batches, hp, config=config)
            out.update({name: test[name[len("test_"):]] for name in test_names(config.task.metric)})
        return state, out

    view_axis = None if view_index is None else 0
    over_configs = _over_axis(one, (0, 0, 0, view_axis, None, None), n_configs, sequential)
    over_seeds = _over_axis(over_configs, (0, None, None, None, 0, 0), n_seeds, sequential)
    return over_seeds(states, unit_mask, hp, view_index, keys, train_batches)


class BucketProgram:
    """One bucket's compiled epoch, its device-resident validation data and batch preparation.

    The state is a TrainState pytree with leading axes [seeds, configs]. The configs axis is
    padded to a multiple of the device count with inert copies of the last config (their
    results are dropped) and sharded over the mesh; data is replicated.
    """

    def __init__(self, bucket: Bucket, dataset, settings: RunSettings, mesh=None):
        self.bucket = bucket
        self.dataset = dataset
        self.settings = settings
        self.mesh = mesh if mesh is not None else variant_mesh()
        self.n_configs = len(bucket.configs)
        self.configs = sharded_configs(bucket, self.mesh.devices.size)
        self.task = run_task(dataset, settings)
        self.execution = execution(bucket, settings, self.mesh.devices.flat, self.task, getattr(dataset, "sparse", True))
        self.config, self.sequential = self.execution.step, self.execution.sequential
        train = dataset.train
        self.views, self.view_index, self._view_splits = self._data_views(train)
        if self.views is None:
            self.capacity = batching.run_capacity(train.x, bucket.seeds, settings.epochs, settings.batch_size)
        else:
            splits = self._view_splits.items()
            self.capacity = None if not dataset.sparse else batching.views_capacity(
                ((seed, split.x.lengths) for (seed, _), split in splits), settings.epochs, settings.batch_size
            )
            self.n_batches = max(math.ceil(len(split) / settings.batch_size) for split in self._view_splits.values())
        val = dataset.validation
        val_order = np.arange(len(val))
        val_cap = batching.eval_capacity(val.x, settings.eval_batch_size)
        self._replicated = NamedSharding(self.mesh, P())
        self._by_config = NamedSharding(self.mesh, P("variant"))
        self._by_seed_config = NamedSharding(self.mesh, P(None, "variant"))
        # distributed.put: device_put, or with many processes a global array built on each from its own copy
        self.val_batches = distributed.put(
            batching.make_batches(val.x, val.y, val_order, settings.eval_batch_size, val_cap), self._replicated
        )
        test = getattr(dataset, "test", None)  # evaluated beside validation, reported apart, never used to choose
        self.test_batches = None if test is None else distributed.put(
            batching.make_batches(
                test.x, test.y, np.arange(len(test)), settings.eval_batch_size,
                batching.eval_capacity(test.x, settings.eval_batch_size),
            ),
            self._replicated,
        )
        self.keys = distributed.put(jnp.stack([jax.random.fold_in(jax.random.key(s), 1) for s in bucket.seeds]), self._replicated)
        hps = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *[c.hyperparameters() for c in self.configs])
        check_stages(self.config, hps)
        self.hp = distributed.put(hps, self._by_config)

    def _data_views(self, train):
        """(views, per-config view index on the mesh, {(seed, view): training split}), or Nones when
        every config trains on the whole training split (the usual program, unchanged)."""
        if all(c.view.is_whole for c in self.configs):
            return None, None, None
        distinct = sorted({c.view for c in self.configs}, key=views.View.sort_key)
        splits = {}
        for c in self.bucket.configs:
            for seed in self.bucket.seeds:
                if (seed, c.view) in splits:
                    continue
                try:
                    splits[(seed, c.view)] = views.view_split(train, seed, c.view, self.task.classes)
                except ValueError as e:
                    raise VariantError(f"variant {c.name!r}: {e}") from None
        index = np.array([distinct.index(c.view) for c in self.configs], np.int32)
        return distinct, distributed.put(index, NamedSharding(self.mesh, P("variant"))), splits

    def init(self):
        """(states [seeds, configs], unit masks [configs] or None), each variant initialized at its true widths."""
        keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 0) for s in self.bucket.seeds])
        # Stacked on the host with NumPy (exact copies): an eager jnp.stack compiles one program per leaf shape.
        per_config = [
            jax.device_get(_init_over_seeds(self.config, self.dataset.num_words, c.widths)(keys)) for c in self.configs
        ]
        state = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *[st for st, _ in per_config])
        masks = [None if m is None else jax.tree.map(lambda x: x[0], m) for _, m in per_config]  # same for every seed
        if all(m is None for m in masks):
            unit_mask = None
        else:
            ones = jax.tree.map(lambda x: np.ones(x.shape[2:], x.dtype), state.params)
            full = [ones if m is None else m for m in masks]
            unit_mask = distributed.put(jax.tree.map(lambda *xs: np.stack(xs), *full), self._by_config)
        return distributed.put(state, self._by_seed_config), unit_mask

    def train_batches(self, epoch: int):
        """This epoch's batches for every seed, stacked [seeds, batches, ...] (with data views
        [seeds, views, batches, ...], each view's padded to the longest), replicated."""
        train = self.dataset.train
        if self.views is not None:
            def of_view(seed, view):
                split = self._view_splits[(seed, view)]
                order = batching.epoch_order(seed, epoch, len(split))
                made = batching.make_batches(split.x, split.y, order, self.settings.batch_size, self.capacity)
                return batching.pad_batches(made, self.n_batches)

            per_seed = [jax.tree.map(lambda *xs: np.stack(xs), *[of_view(s, v) for v in self.views]) for s in self.bucket.seeds]
            return distributed.put(jax.tree.map(lambda *xs: np.stack(xs), *per_seed), self._replicated)
        per_seed = [
            batching.make_batches(
                train.x, train.y, batching.epoch_order(s, epoch, len(train)), self.settings.batch_size, self.capacity
            )
            for s in self.bucket.seeds
        ]
        return distributed.put(jax.tree.map(lambda *xs: np.stack(xs), *per_seed), self._replicated)

    def epoch(self, states, unit_mask, train_batches):
        """Dispatch one epoch (asynchronously); returns (states, metrics [seeds, padded configs])."""
        return _bucket_epoch(
            self.config, len(self.configs), len(self.bucket.seeds), self.sequential,
            states, unit_mask, self.hp, self.keys, train_batches, self.val_batches, self.view_index, self.test_batches,
        )

    def metrics_to_numpy(self, metrics) -> dict[str, np.ndarray]:
        """Device metrics -> {name: float64 [seeds, configs]} without the inert padding configs (on every process)."""
        return {k: np.asarray(v, np.float64)[:, : self.n_configs] for k, v in distributed.gather(metrics).items()}

    def improved_mask(self, improved: np.ndarray):
        """A host [seeds, padded configs] mask for `_keep_best`, replicated over the mesh."""
        return distributed.put(improved, self._replicated)


def _as_tuples(x):
    """Lists (as JSON gives them back) to tuples, recursively; other values unchanged."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


@dataclasses.dataclass
class RunSnapshot:
    """Everything needed to continue a run: epochs done, each bucket's state (host arrays), history so far."""

    epochs_done: int
    states: list
    history: dict
    plan: list | None = None  # per bucket (widths, optimizer, config names, seeds), checked on resume
    best: list | None = None  # per bucket: the params of each variant's best epoch so far (like states' params)


@dataclasses.dataclass(frozen=True)
class TrainedParams:
    """One variant's and seed's trained parameters: what its model's `apply` takes (for the
    study's MLP, at its true widths: `MLP(widths, outputs=...)`).

    final: after the last epoch. best: after `best_epoch` (from 1), the epoch of its lowest
    validation data loss before it diverged; None (both) when no epoch qualifies (diverged from
    epoch 1). Trees of NumPy float32 arrays, {"params": {"hidden_0": {"kernel", "bias"}, ...}}.
    """

    final: dict
    best: dict | None
    best_epoch: int | None


def stopped(best_epoch: int | None, epochs_done: int, patience: int | None) -> bool:
    """Whether early stopping with `patience` has stopped a variant after epochs_done epochs: it
    has gone `patience` epochs without a new best (Keras' EarlyStopping; none yet counts from 0).

    Its parameters are those of its best epoch (`TrainedParams.best`), the same as a run of it
    alone that stopped there and restored them: training after that point changes neither.
    """
    return patience is not None and epochs_done - (best_epoch or 0) >= patience


@jax.jit
def _copied(tree):
    """A copy of a whole tree in one program (an eager jnp.copy compiles one per leaf shape)."""
    return jax.tree.map(jnp.copy, tree)


@functools.partial(jax.jit, donate_argnums=0)
def _keep_best(best, params, improved):
    """Per leaf [seeds, configs, ...]: params where `improved` [seeds, configs], else best (whose buffers it reuses)."""
    def pick(b, p):
        return jnp.where(improved.reshape(improved.shape + (1,) * (p.ndim - 2)), p, b)

    return jax.tree.map(pick, best, params)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What `run` returns.

    history: {(name, seed): {metric: [epochs]}}, columns `metric_names(task.metric, test)`
    (test: the data has a test split, `Dataset.test`, evaluated every epoch and never used to choose);
    params: {(name, seed): TrainedParams}; task: what was trained (`tasks.Task`); buckets:
    per compiled program, its variants and seeds and which path ran (`Execution.describe`:
    model, product, vmap or map, CPU kernels, fused update), which changes with the machine.
    """

    history: dict
    params: dict
    task: tasks.Task
    buckets: list



def run(
    variants: Sequence[VariantSpec],
    dataset,
    settings: RunSettings = RunSettings(),
    *,
    mesh=None,
    meshes: Sequence | None = None,
    policy: PaddingPolicy = PaddingPolicy(),
    on_epoch: Callable[[int, dict, Callable[[], RunSnapshot]], None] | None = None,
    resume: RunSnapshot | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
) -> RunResult:
    """Train all variants for settings.epochs on `dataset`; returns a RunResult.

    The result holds every variant's and seed's history, its final and best-epoch parameters
    (for the study's MLP at its true widths, the padding cut off; the best epoch is
    `best_epoch_tracker(divergence_threshold)`'s) and, per bucket, which path ran.

    The host loops over epochs and buckets only; each bucket-epoch is one compiled call, and
    the next epoch's batches are prepared while the device works on the current one.
    `on_epoch(epoch, row, snapshot)` is called after every epoch with
    row = {(name, seed): {metric: value}} and a function that returns a RunSnapshot (for a
    checkpoint); `resume` continues from such a snapshot with the same history as an
    uninterrupted run.

    With settings.patience the run ends early once every variant has stopped (`stopped`); the
    histories then hold the epochs trained. `mesh` (default: all devices) holds every bucket; or `meshes` gives one per bucket, in
    `plan`'s order (e.g. `variant_mesh` of each of `place_buckets`' device tuples): buckets on
    different devices then train at the same time.
    """
    buckets = plan(variants, policy)
    if meshes is None:
        meshes = [mesh] * len(buckets)
    elif mesh is not None or len(meshes) != len(buckets):
        raise VariantError(f"run: give mesh or one mesh per bucket ({len(buckets)} here), not both; got {len(meshes)} meshes")
    programs = [BucketProgram(b, dataset, settings, m) for b, m in zip(buckets, meshes)]
    task = run_task(dataset, settings)
    columns = metric_names(task.metric, test=getattr(dataset, "test", None) is not None)
    states = [p.init() for p in programs]
    history = {(v.name, v.seed): {m: [] for m in columns} for v in variants}
    first_epoch = 0
    layout = [(p.bucket.widths, p.bucket.optimizer, tuple(c.name for c in p.bucket.configs), p.bucket.seeds) for p in programs]
    bests = [_copied(state.params) for state, _ in states]  # best so far: none yet, any tree will do
    trackers = {key: best_epoch_tracker(divergence_threshold) for key in history}
    best_epochs: dict = {key: None for key in history}
    if resume is not None:
        if resume.best is None or len(resume.best) != len(resume.states):
            raise VariantError("the snapshot has no best-epoch parameters (RunSnapshot.best); take it with run's on_epoch")
        if len(resume.states) != len(programs) or (
            resume.plan is not None and _as_tuples(resume.plan) != _as_tuples(layout)
        ):
            raise VariantError(
                "the snapshot was taken for a different list of variants (buckets, names, order or seeds differ); "
                "resume with exactly the variants of the interrupted run"
            )
        states = [
            (distributed.put(saved, jax.tree.map(lambda x: x.sharding, state)), mask)
            for saved, (state, mask) in zip(resume.states, states)
        ]
        bests = [distributed.put(saved, jax.tree.map(lambda x: x.sharding, best)) for saved, best in zip(resume.best, bests)]
        saved = next(iter(resume.history.values()), {})
        if set(saved) != set(columns):
            raise VariantError(
                f"the snapshot's history has the columns {sorted(saved)}, this run's data gives {sorted(columns)} "
                "(a test split adds test_*); resume with the data of the interrupted run"
            )
        history = {key: {m: list(resume.history[key][m]) for m in columns} for key in history}
        first_epoch = resume.epochs_done
        for key, h in history.items():  # replay the best-epoch bookkeeping over the restored history
            for e in range(first_epoch):
                if trackers[key]({m: h[m][e] for m in columns}):
                    best_epochs[key] = e + 1

    def snapshot(epochs_done):
        copied = {key: {m: list(v) for m, v in h.items()} for key, h in history.items()}
        # distributed.gather: a collective with many processes, so every process takes the snapshot
        return RunSnapshot(epochs_done, [distributed.gather(s) for s, _ in states], copied, layout, [distributed.gather(b) for b in bests])

    next_batches = [p.train_batches(first_epoch) for p in programs] if first_epoch < settings.epochs else []
    for epoch in range(first_epoch, settings.epochs):
        batches, outputs = next_batches, []
        for i, program in enumerate(programs):
            state, mask = states[i]
            new_state, metrics = program.epoch(state, mask, batches[i])
            states[i] = (new_state, mask)
            outputs.append(metrics)
        if epoch + 1 < settings.epochs:
            next_batches = [p.train_batches(epoch + 1) for p in programs]
        row = {}
        for program, metrics in zip(programs, outputs):
            values = program.metrics_to_numpy(metrics)
            for si, seed in enumerate(program.bucket.seeds):
                for ci, config in enumerate(program.bucket.configs):
                    row[(config.name, seed)] = {k: float(v[si, ci]) for k, v in values.items()}
        for key, values in row.items():
            for k, v in values.items():
                history[key][k].append(v)
        for i, program in enumerate(programs):
            improved = np.zeros((len(program.bucket.seeds), len(program.configs)), bool)  # inert padding configs: False
            for si, seed in enumerate(program.bucket.seeds):
                for ci, config in enumerate(program.bucket.configs):
                    if trackers[(config.name, seed)](row[(config.name, seed)]):
                        improved[si, ci], best_epochs[(config.name, seed)] = True, epoch + 1
            if improved.any():
                bests[i] = _keep_best(bests[i], states[i][0].params, program.improved_mask(improved))
        if on_epoch is not None:
            on_epoch(epoch, row, lambda e=epoch: snapshot(e + 1))
        if settings.patience is not None and all(stopped(best_epochs[k], epoch + 1, settings.patience) for k in history):
            break
    arrays = {key: {k: np.asarray(v) for k, v in h.items()} for key, h in history.items()}
    trained = {}
    for program, (state, _), best in zip(programs, states, bests):
        final, best = distributed.gather(state.params), distributed.gather(best)
        for si, seed in enumerate(program.bucket.seeds):
            for ci, config in enumerate(program.bucket.configs):
                def one(tree, si=si, ci=ci, widths=config.widths):
                    tree = jax.tree.map(lambda x: x[si, ci], tree)
                    return jax.tree.map(np.ascontiguousarray, tree if widths is None else unpadded(tree, widths))

                epoch = best_epochs[(config.name, seed)]
                trained[(config.name, seed)] = TrainedParams(one(final), None if epoch is None else one(best), epoch)
    buckets = [
        {"variants": [c.name for c in p.bucket.configs], "seeds": list(p.bucket.seeds), **p.execution.describe()}
        for p in programs
    ]
    return RunResult(arrays, trained, task, buckets)

"""The run plan: which buckets a run trains, how each runs, on which devices, at what cost and memory.

`plan(variants)` groups variants into buckets (a grid seeds x configs that shares one compiled
program); `plan_run(buckets, dataset, settings, devices, placement)` then decides, once per
run, everything else about each bucket: the devices it runs on (`place_buckets`), how it runs
there (`execution`: the step's static config with the data's task and sparse or dense input,
the variant loop vmap or map, jaxreg's CPU kernels, the first layer's product), its
parameters per model (`parameter_count`, the one count for the study's MLP and own models)
and, on request, the memory estimate (`jaxreg.memory`). The result, a frozen `RunPlan`, is
what training (`variants.run`), the run folder's config.json, the memory check and the
checkpoint restore read; none of them plans again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence

import jax

from jaxreg import batches as batching
from jaxreg import memory, optim, tasks
from jaxreg.checks import is_int
from jaxreg.cpu_kernels import cpu_kernels_available
from jaxreg.model import PRODUCTS as STEP_PRODUCTS
from jaxreg.model import count_params
from jaxreg.networks import Network, parameter_shapes
from jaxreg.specs import (
    DEFAULT_WIDTHS,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    VariantError,
    VariantSpec,
)
from jaxreg.train import StepConfig, fused_update_supports


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
        fused where the optimizer allows it (train.fused_update_supports: RMSprop "keras2" and the
        Adams, no proximal L1; every other optimizer takes the optax chain)."""
        config = StepConfig(
            widths=self.widths or DEFAULT_WIDTHS,
            product=product,
            task=task,
            network=self.network,
            optimizer=self.optimizer,
            nesterov=self.configs[0].nesterov,
            schedule=self.configs[0].schedule,
            use_penalty=any(c.l1 > 0 or c.l2 > 0 for c in self.configs),
            use_dropout=any(c.dropout_rate > 0 for c in self.configs)
            or (self.network is not None and self.network.style == "flax"),
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


def program_choices(spec: VariantSpec) -> tuple:
    """What of a variant's optimizer and schedule selects the compiled program: the optimizer,
    Nesterov or not, the schedule and its number of piecewise boundaries (a shape). Their
    numbers are per-variant arrays and do not (`train.Hyperparameters`)."""
    return (spec.optimizer, spec.nesterov, spec.schedule, len(spec.boundaries))


def plan(variants: Sequence[VariantSpec], policy: PaddingPolicy = PaddingPolicy()) -> list[Bucket]:
    """Group variants into buckets: same model (the MLP's padded widths, or the same own model),
    optimizer and schedule (`program_choices`) and decoupled stages, full seeds x configs grids.

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
        key = (shape, config.model, program_choices(config), decoupled_stages(config), tuple(sorted(seeds[name])))
        groups.setdefault(key, []).append(config)
    return [Bucket(w, choices[0], tuple(cs), s, network) for (w, network, choices, _, s), cs in groups.items()]


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
            raise ValueError(
                f"RunSettings.patience must be None or an integer from 1 to {MAX_EPOCHS:,}, got {self.patience!r}"
            )
        limits = {"epochs": MAX_EPOCHS, "batch_size": MAX_BATCH_SIZE, "eval_batch_size": MAX_BATCH_SIZE}
        for field, most in limits.items():
            value = getattr(self, field)
            if not is_int(value) or not 1 <= value <= most:
                raise ValueError(f"RunSettings.{field} must be an integer from 1 to {most:,}, got {value!r}")
        choices = {
            "loss": ("auto",) + tasks.LOSSES,
            "product": ("auto",) + STEP_PRODUCTS,
            "variant_loop": VARIANT_LOOPS,
        }
        for field, allowed in choices.items():
            if not isinstance(getattr(self, field), str) or getattr(self, field) not in allowed:
                raise ValueError(f"RunSettings.{field} must be one of {allowed}, got {getattr(self, field)!r}")


@dataclasses.dataclass(frozen=True)
class Execution:
    """How one bucket runs on its devices: decided once per run, by `execution` in `plan_run`, and
    read from the RunPlan by training, the checkpoint, the memory estimate and the run folder's report.

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


PLACEMENTS = ("spread", "shard")


@functools.cache
def _network_parameters(network: Network, num_words: int, outputs: int) -> int:
    shapes = parameter_shapes(network, num_words, outputs)  # also checks its outputs against the task, in one line
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)))


def parameter_count(bucket: Bucket, num_words: int, outputs: int = 1) -> int:
    """Trainable parameters of one model of the bucket: the study's MLP at the bucket's (padded)
    widths with `outputs` output units (`model.count_params`), or an own model's, from the
    shapes its init gives (traced, not computed; cached per model and num_words)."""
    if bucket.network is not None:
        return _network_parameters(bucket.network, num_words, outputs)
    return count_params(bucket.widths, num_words, outputs)


def bucket_cost(bucket: Bucket, num_words: int, outputs: int = 1) -> int:
    """A bucket's work per epoch, estimated as its models x the parameters of each (`parameter_count`).

    Every step reads and writes every parameter (the optimizer), and the first layer's
    sums grow with its width as its parameters do; only used to balance buckets over devices.
    """
    return len(bucket.seeds) * len(bucket.configs) * parameter_count(bucket, num_words, outputs)


def place_buckets(
    buckets: Sequence[Bucket],
    devices,
    placement: str = "spread",
    num_words: int = 10_000,
    outputs: int = 1,
    costs: Sequence[int] | None = None,
) -> list[tuple]:
    """The devices each bucket runs on, in the buckets' order.

    "shard": every bucket on all devices, its configs sharded over them (padded to a multiple
    of the device count). "spread": each bucket whole on one device, so that buckets on
    different devices train at the same time (`run` dispatches them asynchronously): the
    costliest bucket first (`bucket_cost`), each to the device with the least estimated work
    so far, ties to the lowest device index. A bucket on one device runs the very program it
    runs on a one-device run, so its histories are the same bit for bit (tests/test_placement.py).
    costs: the buckets' costs when already known (`BucketPlan.cost`), else `bucket_cost`'s.
    """
    devices = list(devices)
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if not devices:
        raise ValueError("place_buckets: no devices given")
    if placement == "shard":
        return [tuple(devices) for _ in buckets]
    costs = list(costs) if costs is not None else [bucket_cost(b, num_words, outputs) for b in buckets]
    load = [0] * len(devices)
    placed: list = [None] * len(buckets)
    for i in sorted(range(len(buckets)), key=lambda i: (-costs[i], i)):
        d = min(range(len(devices)), key=lambda d: (load[d], d))
        load[d] += costs[i]
        placed[i] = (devices[d],)
    return placed


def sharded_configs(bucket: Bucket, n_devices: int) -> tuple[VariantSpec, ...]:
    """The bucket's configs, padded with inert copies of the last one to a multiple of n_devices."""
    return bucket.configs + (bucket.configs[-1],) * (-len(bucket.configs) % n_devices)


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """One bucket of a RunPlan: its grid, the devices it runs on, how it runs there and its size.

    parameters: of one model, at the bucket's padded widths (an own model: its own); cost: its
    models x parameters, what placement balances (`bucket_cost`).
    """

    bucket: Bucket
    devices: tuple
    execution: Execution
    parameters: int

    @property
    def models(self) -> int:
        return len(self.bucket.seeds) * len(self.bucket.configs)

    @property
    def cost(self) -> int:
        return self.models * self.parameters

    def layout(self) -> tuple:
        """(widths, optimizer, config names, seeds): what a RunSnapshot records to be checked on resume."""
        b = self.bucket
        return (b.widths, b.optimizer, tuple(c.name for c in b.configs), b.seeds)

    def describe(self) -> dict:
        """JSON-ready, for config.json's "plan": the grid, how it runs (`Execution.describe`), size and devices."""
        b = self.bucket
        return {
            "widths": None if b.widths is None else list(b.widths),
            "optimizer": b.optimizer,
            "variants": [c.name for c in b.configs],
            "seeds": list(b.seeds),
            **self.execution.describe(),
            "parameters": self.parameters,
            "devices": [str(d) for d in self.devices],
        }

    def memory_shape(self) -> memory.BucketShape:
        """What jaxreg.memory needs of this bucket (an own model's activations are guessed at the MLP's default widths)."""
        run = self.execution
        return memory.BucketShape(
            run.step.widths,
            len(self.bucket.seeds),
            run.n_configs,
            run.product,
            run.sequential,
            run.cpu_kernels,
            self.parameters,
            optim.OPTIMIZER_SLOTS[self.bucket.optimizer],
            1 if all(c.view.is_whole for c in self.bucket.configs) else len({c.view for c in self.bucket.configs}),
            len(self.devices),
        )


@dataclasses.dataclass(frozen=True)
class Wave:
    """Buckets, or pieces of buckets (some of a bucket's seeds or configs, run as the whole bucket runs:
    `piece`), that train together, all their epochs, before the next wave starts; memory: its estimate."""

    buckets: tuple[BucketPlan, ...]
    memory: memory.Estimate | None = None

    @property
    def models(self) -> int:
        return sum(b.models for b in self.buckets)

    def layout(self) -> list:
        return [b.layout() for b in self.buckets]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything decided about a run before it trains, once (see the module docstring).

    buckets: in training order; task, sparse, num_words: of the data; placement: "spread" or
    "shard" (`place_buckets`), or "given" when the caller chose each bucket's devices; memory:
    `jaxreg.memory`'s estimate when asked for (`plan_run(estimate_memory=True)`), else None;
    split: the waves when the run is split to fit its memory (`in_waves`), else () (one wave).
    """

    buckets: tuple[BucketPlan, ...]
    settings: RunSettings
    task: tasks.Task
    sparse: bool
    num_words: int
    placement: str
    memory: memory.Estimate | None = None
    split: tuple[Wave, ...] = ()

    @property
    def waves(self) -> tuple[Wave, ...]:
        """The waves the run trains one after the other: `split`, or all buckets in one wave."""
        return self.split or (Wave(self.buckets, self.memory),)

    @property
    def peak_memory(self) -> memory.Estimate | None:
        """The estimate of the largest wave (of the whole run when it is one wave)."""
        if not self.split:
            return self.memory
        return max((w.memory for w in self.split), key=lambda e: e.total)

    @property
    def keys(self) -> list[tuple[str, int]]:
        """Every (variant name, seed) the run trains, bucket by bucket."""
        return [(v.name, v.seed) for b in self.buckets for v in b.bucket.variants]

    def layout(self) -> list:
        return [b.layout() for b in self.buckets]

    def wave_layout(self) -> list:
        """Per wave, each piece's layout (`BucketPlan.layout`): what a RunSnapshot records of the waves."""
        return [w.layout() for w in self.waves]

    def describe(self) -> list[dict]:
        return [b.describe() for b in self.buckets]

    def bucket_of(self) -> dict[str, int]:
        """{variant name: the index of its bucket in `buckets`} (a name is one config of one bucket)."""
        return {c.name: i for i, b in enumerate(self.buckets) for c in b.bucket.configs}

    def describe_waves(self) -> list[dict] | None:
        """JSON-ready, for config.json's "waves" (None: one wave): per wave its estimate and pieces, each by
        its bucket's index in `buckets`, variants and seeds; `resplit` rebuilds the waves from it."""
        if not self.split:
            return None
        index = self.bucket_of()
        return [
            {
                "estimate_bytes": None if w.memory is None else w.memory.total,
                "pieces": [
                    {
                        "bucket": index[p.bucket.configs[0].name],
                        "variants": [c.name for c in p.bucket.configs],
                        "seeds": list(p.bucket.seeds),
                    }
                    for p in w.buckets
                ],
            }
            for w in self.split
        ]


def data_facts(dataset, settings: RunSettings) -> tuple[tasks.Task, bool, int]:
    """(task, sparse input, num_words) of a dataset, as a plan needs them."""
    return run_task(dataset, settings), getattr(dataset, "sparse", True), dataset.num_words


def plan_run(
    buckets: Sequence[Bucket],
    dataset,
    settings: RunSettings,
    devices,
    placement: str = "shard",
    estimate_memory: bool = False,
) -> RunPlan:
    """The RunPlan of `buckets` (`plan`'s) on `dataset` under `settings`.

    devices: the run's devices, placed by `placement` ("spread" or "shard", see place_buckets),
    or, with placement="given", one tuple of devices per bucket. The task and whether the
    input is sparse come from the data (`run_task`, `Dataset.sparse`).
    """
    task, sparse, num_words = data_facts(dataset, settings)
    buckets = list(buckets)
    parameters = [parameter_count(b, num_words, task.outputs) for b in buckets]
    if placement == "given":
        placed = [tuple(on) for on in devices]
        if len(placed) != len(buckets):
            raise VariantError(f"give one device tuple per bucket ({len(buckets)} here), got {len(placed)}")
    else:
        costs = [len(b.seeds) * len(b.configs) * n for b, n in zip(buckets, parameters)]
        placed = place_buckets(buckets, devices, placement, costs=costs)
    bucket_plans = tuple(
        BucketPlan(b, on, execution(b, settings, on, task, sparse), n) for b, on, n in zip(buckets, placed, parameters)
    )
    run_plan = RunPlan(bucket_plans, settings, task, sparse, num_words, placement)
    if estimate_memory:
        run_plan = dataclasses.replace(run_plan, memory=memory_estimate(run_plan, dataset))
    return run_plan


def memory_estimate(run_plan: RunPlan, dataset) -> memory.Estimate:
    """jaxreg.memory's estimate for the plan's buckets (each on its devices), the data and its batch capacities."""
    shapes = [b.memory_shape() for b in run_plan.buckets]
    return memory.estimate(shapes, data_shape(run_plan, dataset), run_plan.settings.epochs)


def data_shape(run_plan: RunPlan, dataset) -> memory.DataShape:
    """What jaxreg.memory needs of the data under the plan's settings (batch capacities: the largest bucket's)."""
    settings = run_plan.settings
    train, val, test = dataset.train, dataset.validation, getattr(dataset, "test", None)
    capacities = [
        batching.run_capacity(train.x, seeds, settings.epochs, settings.batch_size)
        for seeds in {b.bucket.seeds for b in run_plan.buckets}
    ]
    evaluated = [s for s in (val, test) if s is not None]
    return memory.DataShape(
        num_words=run_plan.num_words,
        n_train=len(train),
        n_validation=sum(len(s) for s in evaluated),  # the test batches are evaluated alike
        batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        train_capacity=max(c or 0 for c in capacities),  # dense input: no (row, column) pairs
        validation_capacity=max(batching.eval_capacity(s.x, settings.eval_batch_size) or 0 for s in evaluated),
        index_bytes=2 if max(run_plan.num_words, settings.batch_size + 1) <= 32767 else 4,
    )


# --- waves: a run split to fit its memory -------------------------------------------------------


class DoesNotFit(VariantError):
    """Even the smallest wave (one model, or with patience one variant's seeds) exceeds the memory budget.

    estimate: that smallest wave's `memory.Estimate`; budget: the bytes it had to fit in."""

    def __init__(self, estimate: memory.Estimate, budget: int, what: str):
        self.estimate, self.budget, self.what = estimate, budget, what
        super().__init__(
            f"{what} alone needs an estimated {memory.gigabytes(estimate.total)}, more than the "
            f"{memory.gigabytes(max(budget, 0))} it must fit in; most of it is the {estimate.driver}"
        )


def piece(planned: BucketPlan, configs: Sequence[VariantSpec], seeds: Sequence[int], devices) -> BucketPlan:
    """Some of a bucket's configs and seeds on `devices`, run as the whole bucket runs (its Execution: the
    same step, product, variant loop and kernels, whatever its neighbours), its configs padded to the devices."""
    bucket = dataclasses.replace(planned.bucket, configs=tuple(configs), seeds=tuple(seeds))
    run = dataclasses.replace(planned.execution, n_configs=len(sharded_configs(bucket, len(devices))))
    return BucketPlan(bucket, tuple(devices), run, planned.parameters)


def _run_devices(run_plan: RunPlan) -> list:
    return sorted({d for b in run_plan.buckets for d in b.devices}, key=lambda d: d.id)


def _placed_wave(run_plan: RunPlan, parts: Sequence[tuple[int, tuple, tuple]]) -> tuple[BucketPlan, ...]:
    """The pieces (bucket index, configs, seeds) of one wave, placed as the run places its buckets: spread over
    the run's devices by cost, or each on all of them (shard), or on its bucket's own devices (given)."""
    whole = [run_plan.buckets[i] for i, _, _ in parts]
    if run_plan.placement == "given":
        placed = [b.devices for b in whole]
    else:
        costs = [len(c) * len(s) * b.parameters for b, (_, c, s) in zip(whole, parts)]
        placed = place_buckets(whole, _run_devices(run_plan), run_plan.placement, costs=costs)
    return tuple(piece(b, c, s, on) for b, (_, c, s), on in zip(whole, parts, placed))


def _wave_estimate(run_plan: RunPlan, data: memory.DataShape, pieces, kept_models: Sequence) -> memory.Estimate:
    """A wave's estimate: its pieces' programs, the whole run's history (kept for every model throughout)
    and, when given, the final and best parameters of `kept_models` ((models, parameters) of finished waves)."""
    estimate = memory.estimate([p.memory_shape() for p in pieces], data, 0)
    history = memory.history_bytes(sum(b.models for b in run_plan.buckets), run_plan.settings.epochs)
    kept = sum(2 * models * parameters * memory.FLOAT_BYTES for models, parameters in kept_models)
    return dataclasses.replace(estimate, history=history, kept=kept)


def wave_estimate(run_plan: RunPlan, dataset, parts: Sequence[tuple[int, tuple, tuple]]) -> memory.Estimate:
    """The estimate `in_waves` gives a wave of these pieces: (bucket index, configs, seeds) each."""
    return _wave_estimate(run_plan, data_shape(run_plan, dataset), _placed_wave(run_plan, parts), ())


def _chunks(items: tuple, size: int) -> list[tuple]:
    """`items` in consecutive chunks of at most `size`, as even as that allows (5 by 4: 3 + 2)."""
    n = math.ceil(len(items) / size)
    cut = [round(i * len(items) / n) for i in range(n + 1)]
    return [items[cut[i] : cut[i + 1]] for i in range(n)]


def _units(run_plan: RunPlan, data: memory.DataShape, budget: int) -> list[tuple[int, tuple, tuple]]:
    """Every bucket as (bucket index, configs, seeds) pieces that each fit the budget alone: whole, else split
    by seeds (all configs), else one seed by configs; with patience by configs, all seeds together (a variant's
    seeds then stop together, so its history stays one length). DoesNotFit when the smallest cannot fit."""

    def fits(i, configs, seeds):
        return _wave_estimate(run_plan, data, _placed_wave(run_plan, [(i, configs, seeds)]), ()).total <= budget

    def largest(n, fit):  # the largest k in 1..n with fit(k) (fit shrinks with k), else 0
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fit(mid) else (lo, mid - 1)
        return lo

    units = []
    for i, planned in enumerate(run_plan.buckets):
        configs, seeds = planned.bucket.configs, planned.bucket.seeds
        if fits(i, configs, seeds):
            units.append((i, configs, seeds))
            continue
        patience = run_plan.settings.patience is not None
        k = 0 if patience else largest(len(seeds), lambda k: fits(i, configs, seeds[:k]))
        if k:
            units += [(i, configs, chunk) for chunk in _chunks(seeds, k)]
            continue
        group = seeds if patience else seeds[:1]
        c = largest(len(configs), lambda c: fits(i, configs[:c], group))
        if not c:
            smallest = _wave_estimate(run_plan, data, _placed_wave(run_plan, [(i, configs[:1], group)]), ())
            what = f"variant {configs[0].name!r} with its {len(group)} seed(s) (--patience keeps them in one wave)"
            raise DoesNotFit(smallest, budget, what if patience else "one model")
        units += [
            (i, chunk, group_seeds) for group_seeds in _chunks(seeds, len(group)) for chunk in _chunks(configs, c)
        ]
    return units


def in_waves(run_plan: RunPlan, dataset, budget: int, keep_params: bool = False) -> RunPlan:
    """The plan split into waves that each fit `budget` bytes (its memory estimate, `jaxreg.memory`).

    Buckets stay whole where they fit alone (`_units`), then go in order into waves as long as each
    wave fits; the run is one wave when the whole plan fits. keep_params: the trained parameters of
    finished waves stay on the host until the end (variants.run without on_params), counted in the
    later waves. Raises DoesNotFit when even the smallest wave cannot fit.
    """
    run_plan = (
        run_plan
        if run_plan.memory is not None
        else dataclasses.replace(run_plan, memory=memory_estimate(run_plan, dataset))
    )
    if run_plan.memory.total <= budget:
        return dataclasses.replace(run_plan, split=())
    data = data_shape(run_plan, dataset)
    waves, current, kept = [], [], []
    for unit in _units(run_plan, data, budget):
        trial = current + [unit]
        if current and _wave_estimate(run_plan, data, _placed_wave(run_plan, trial), kept).total > budget:
            waves.append(current)
            if keep_params:
                kept += [(len(c) * len(s), run_plan.buckets[i].parameters) for i, c, s in current]
            trial = [unit]
        current = trial
    waves.append(current)
    if keep_params:  # the parameters kept grow wave by wave: left as packed
        return _with_waves(run_plan, data, waves, keep_params)
    return _with_waves(run_plan, data, [_spread_wave(run_plan, data, w, budget) for w in waves], keep_params)


def _spread_wave(run_plan: RunPlan, data: memory.DataShape, parts: list, budget: int) -> list:
    """With placement "spread", a wave of fewer pieces than the run's devices has its costliest piece split in
    two (by seeds, else by configs; with patience by configs only) while the wave still fits, so that every
    device trains (each piece costs its own program's overhead and its seeds' batches)."""
    devices = len(_run_devices(run_plan))
    while run_plan.placement == "spread" and len(parts) < devices:
        i = max(
            range(len(parts)),
            key=lambda j: len(parts[j][1]) * len(parts[j][2]) * run_plan.buckets[parts[j][0]].parameters,
        )
        bucket, configs, seeds = parts[i]
        if len(seeds) > 1 and run_plan.settings.patience is None:
            halves = [(bucket, configs, half) for half in _chunks(seeds, math.ceil(len(seeds) / 2))]
        elif len(configs) > 1:
            halves = [(bucket, half, seeds) for half in _chunks(configs, math.ceil(len(configs) / 2))]
        else:
            break
        trial = parts[:i] + halves + parts[i + 1 :]
        if _wave_estimate(run_plan, data, _placed_wave(run_plan, trial), ()).total > budget:
            break
        parts = trial
    return parts


def _with_waves(run_plan: RunPlan, data: memory.DataShape, waves: list, keep_params: bool) -> RunPlan:
    """The plan with these waves (lists of (bucket index, configs, seeds)), each placed and estimated."""
    split, kept = [], []
    for parts in waves:
        pieces = _placed_wave(run_plan, parts)
        split.append(Wave(pieces, _wave_estimate(run_plan, data, pieces, kept)))
        if keep_params:
            kept += [(p.models, p.parameters) for p in pieces]
    return dataclasses.replace(run_plan, split=tuple(split) if len(split) > 1 else ())


def resplit(run_plan: RunPlan, dataset, described: list[dict] | None, keep_params: bool = False) -> RunPlan:
    """The plan in the waves `described` (`RunPlan.describe_waves`, e.g. an interrupted run's config.json;
    None: one wave). VariantError when they do not hold exactly the plan's variants and seeds."""
    if not described:
        return dataclasses.replace(run_plan, split=())
    try:
        waves = []
        for wave in described:
            parts = []
            for p in wave["pieces"]:
                bucket = run_plan.buckets[int(p["bucket"])].bucket
                configs = {c.name: c for c in bucket.configs}
                parts.append((int(p["bucket"]), tuple(configs[n] for n in p["variants"]), tuple(p["seeds"])))
            waves.append(parts)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise VariantError(f"the saved waves do not match this run's buckets ({type(e).__name__}: {e})") from None
    keys = sorted((c.name, s) for wave in waves for _, configs, seeds in wave for s in seeds for c in configs)
    if keys != sorted(run_plan.keys):
        raise VariantError("the saved waves hold other variants or seeds than this run")
    return _with_waves(run_plan, data_shape(run_plan, dataset), waves, keep_params)

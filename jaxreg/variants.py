"""Many variants in one compiled program: vmapped and sharded epochs over a run plan.

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

What a variant is lives in `jaxreg.specs`, how variants group into buckets and how each bucket
runs (devices, variant loop, kernels, product, cost) in `jaxreg.runplan`; both are importable from here.

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
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg import batches as batching
from jaxreg import distributed, memory, tasks, views
from jaxreg.history import METRICS, metric_names, test_names  # noqa: F401  (METRICS: a classification run's columns, as before)
from jaxreg.model import unpadded
from jaxreg.runplan import (  # noqa: F401  (the planning names stay importable from here)
    DENSE_PRODUCT_COLUMNS,
    PLACEMENTS,
    VARIANT_LOOPS,
    Bucket,
    BucketPlan,
    DoesNotFit,
    Execution,
    PaddingPolicy,
    RunPlan,
    RunSettings,
    bucket_cost,
    choose_product,
    cpu_kernels_on,
    decoupled_stages,
    execution,
    in_waves,
    padded_widths,
    parameter_count,
    place_buckets,
    plan,
    plan_run,
    run_task,
    sequential_on,
    sharded_configs,
)
from jaxreg.selection import DIVERGENCE_THRESHOLD, best_epoch_tracker
from jaxreg.specs import (  # noqa: F401  (what a variant is: also importable from here)
    DEFAULT_WIDTHS,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_WIDTH,
    VariantError,
    VariantSpec,
    with_seeds,
)
from jaxreg.train import StepConfig, check_stages, evaluate, init_state, train_epoch


def variant_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh named 'variant' over the given (default: all) devices."""
    devices = list(devices if devices is not None else jax.devices())
    return jax.sharding.Mesh(np.array(devices), ("variant",))


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


@functools.cache
def _init_over_seeds(config: StepConfig, num_words: int, true_widths: tuple[int, ...]):
    """init_state vmapped over a stack of keys, compiled once per (config, widths)."""
    return jax.jit(jax.vmap(lambda key: init_state(key, config, num_words, true_widths)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _bucket_epoch(mesh: jax.sharding.Mesh, config: StepConfig, n_configs: int, n_seeds: int, sequential: bool, *arrays):
    """One epoch of a seeds x configs grid whose configs are sharded over `mesh`: `_device_epoch` on each
    device's own configs (jax.shard_map) and its `arrays` (states, unit_mask, hp, keys, train_batches,
    val_batches, view_index, test_batches). Jitted once per shape.

    Under jit's automatic partitioning alone XLA replicates what it cannot split, jaxreg's C++ kernels
    among them, so every device gathered and trained every config: on 4 CPU devices, 4x the first
    layer's memory and work. Here nothing crosses devices; data, keys and metrics' seeds axis are whole.
    """
    by_config, by_seed_config, whole = P("variant"), P(None, "variant"), P()
    body = functools.partial(_device_epoch, config, n_configs // mesh.size, n_seeds, sequential)
    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(by_seed_config, by_config, by_config, whole, whole, whole, by_config, whole),
        out_specs=(by_seed_config, by_seed_config),
        check_vma=False,  # no collectives inside; the step's branches (lax.cond) mix per-device and shared values
    )(*arrays)


def _device_epoch(
    config: StepConfig,
    n_configs: int,
    n_seeds: int,
    sequential: bool,
    states,
    unit_mask,
    hp,
    keys,
    train_batches,
    val_batches,
    view_index=None,
    test_batches=None,
):
    """One epoch of a seeds x configs grid on one device: train, then validate (and test, given
    test_batches), every variant. The test metrics only leave the program: nothing in it reads them.

    view_index: None (every config trains on its seed's batches [seeds, batches, ...]), or
    per config its data view's index into batches stacked [seeds, views, batches, ...].
    """

    def one(state, mask, hp, view, key, batches):
        state, metrics = train_epoch(state, batches, key, hp, config=config, unit_mask=mask, view=view)
        val = evaluate(state.params, val_batches, hp, config=config)
        out = {**metrics, **{f"val_{k}": v for k, v in val.items()}}
        if test_batches is not None:
            test = evaluate(state.params, test_batches, hp, config=config)
            out.update({name: test[name[len("test_") :]] for name in test_names(config.task.metric)})
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

    def __init__(self, bucket: Bucket | BucketPlan, dataset, settings: RunSettings, mesh=None):
        """bucket: its plan (a `BucketPlan` of the run's `RunPlan`, then `mesh` defaults to its
        devices), or a bare Bucket, planned here on `mesh` (default: all devices) alone."""
        if not isinstance(bucket, BucketPlan):
            mesh = mesh if mesh is not None else variant_mesh()
            bucket = plan_run([bucket], dataset, settings, [tuple(mesh.devices.flat)], "given").buckets[0]
        self.planned, bucket = bucket, bucket.bucket
        self.bucket = bucket
        self.dataset = dataset
        self.settings = settings
        self.mesh = mesh if mesh is not None else variant_mesh(self.planned.devices)
        self.n_configs = len(bucket.configs)
        self.configs = sharded_configs(bucket, self.mesh.devices.size)
        self.execution = self.planned.execution
        self.task = self.execution.step.task
        self.config, self.sequential = self.execution.step, self.execution.sequential
        train = dataset.train
        self.views, self.view_index, self._view_splits = self._data_views(train)
        if self.views is None:
            self.capacity = batching.run_capacity(train.x, bucket.seeds, settings.epochs, settings.batch_size)
        else:
            splits = self._view_splits.items()
            self.capacity = (
                None
                if not dataset.sparse
                else batching.views_capacity(
                    ((seed, split.x.lengths) for (seed, _), split in splits), settings.epochs, settings.batch_size
                )
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
        self.test_batches = (
            None
            if test is None
            else distributed.put(
                batching.make_batches(
                    test.x,
                    test.y,
                    np.arange(len(test)),
                    settings.eval_batch_size,
                    batching.eval_capacity(test.x, settings.eval_batch_size),
                ),
                self._replicated,
            )
        )
        self.keys = distributed.put(
            jnp.stack([jax.random.fold_in(jax.random.key(s), 1) for s in bucket.seeds]), self._replicated
        )
        hps = jax.tree.map(
            lambda *xs: np.stack([np.asarray(x) for x in xs]), *[c.hyperparameters() for c in self.configs]
        )
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

            per_seed = [
                jax.tree.map(lambda *xs: np.stack(xs), *[of_view(s, v) for v in self.views]) for s in self.bucket.seeds
            ]
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
            self.mesh,
            self.config,
            len(self.configs),
            len(self.bucket.seeds),
            self.sequential,
            states,
            unit_mask,
            self.hp,
            self.keys,
            train_batches,
            self.val_batches,
            self.view_index,
            self.test_batches,
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
    """Everything needed to continue a run: epochs done, each bucket's state and best-epoch params, history so far.

    The arrays are the run's own jax.Arrays, sharded as they train (nothing is copied or gathered:
    `jaxreg.checkpoint` saves each process's shards); no later epoch changes them, since no
    program donates a buffer they hold. Fields other than the arrays (states, best) are JSON-ready
    values, which a checkpoint stores as its metadata.
    """

    epochs_done: int
    states: list
    history: dict
    plan: list | None = None  # per bucket (widths, optimizer, config names, seeds), checked on resume
    best: list | None = None  # per bucket: the params of each variant's best epoch so far (like states' params)
    # a run in waves (`RunPlan.waves`): the wave in progress (from 0), whose buckets `states` and `best` hold
    # (epochs_done counts its epochs; the history holds every variant: finished waves whole, later ones empty),
    # and per wave its buckets' layouts (`RunPlan.wave_layout`), checked on resume; None: not recorded (one wave)
    wave: int = 0
    waves: list | None = None


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


@jax.jit
def _keep_best(best, params, improved):
    """Per leaf [seeds, configs, ...]: params where `improved` [seeds, configs], else best.

    `best` is not donated: a RunSnapshot taken after the previous epoch still holds it (see RunSnapshot)."""

    def pick(b, p):
        return jnp.where(improved.reshape(improved.shape + (1,) * (p.ndim - 2)), p, b)

    return jax.tree.map(pick, best, params)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What `run` returns.

    history: {(name, seed): {metric: [epochs]}}, columns `metric_names(task.metric, test)`
    (test: the data has a test split, `Dataset.test`, evaluated every epoch and never used to choose);
    params: {(name, seed): TrainedParams} (a `TrainedParamsMap`, read from the devices when asked); task:
    what was trained (`tasks.Task`); buckets:
    per compiled program, its variants and seeds and which path ran (`Execution.describe`:
    model, product, vmap or map, CPU kernels, fused update), which changes with the machine.
    """

    history: dict
    params: Mapping
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
    plan: RunPlan | None = None,
    on_wave: Callable[[int, int], None] | None = None,
    on_params: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train all variants for settings.epochs on `dataset`; returns a RunResult.

    The result holds every variant's and seed's history, its final and best-epoch parameters
    (for the study's MLP at its true widths, the padding cut off; the best epoch is
    `selection.best_epoch_tracker(divergence_threshold)`'s) and, per bucket, which path ran.

    The host loops over epochs and buckets only; each bucket-epoch is one compiled call, and
    the next epoch's batches are prepared while the device works on the current one.
    `on_epoch(epoch, row, snapshot)` is called after every epoch with
    row = {(name, seed): {metric: value}} and a function that returns a RunSnapshot (for a
    checkpoint); `resume` continues from such a snapshot with the same history as an
    uninterrupted run.

    Waves: a plan split to fit its memory (`runplan.in_waves`; without `plan`, when the estimate
    exceeds the devices' free memory) trains one wave after the other, each all its epochs, so
    only one wave's states are alive; epochs count from 0 in every wave (`on_wave(index, count)`
    is called as each starts, a row holds the wave's variants). Each wave's trained parameters
    go to `on_params(params)` as it ends and are not kept (RunResult.params is then empty);
    without it they are kept on the host until the end (counted in the plan's estimate; a run
    resumed in a later wave returns only the waves it trained).

    With settings.patience a wave ends early once every variant in it has stopped (`stopped`); the
    histories then hold the epochs their wave trained. Where each bucket runs: `plan`, the run's RunPlan
    (`runplan.plan_run` of these variants, data and settings; e.g. jaxreg.sweep's), or else
    `mesh` (default: all devices) holds every bucket, or `meshes` gives one per bucket, in
    `plan`'s order (e.g. `variant_mesh` of each of `place_buckets`' device tuples): buckets on
    different devices then train at the same time.
    """
    run_plan = _planned(variants, dataset, settings, mesh, meshes, policy, plan, keep_params=on_params is None)
    columns = metric_names(run_plan.task.metric, test=getattr(dataset, "test", None) is not None)
    progress = _start(variants, columns, divergence_threshold)
    if resume is not None:
        _restore_history(progress, resume, run_plan, columns)
    params, first = {}, progress.wave
    for index in range(first, len(run_plan.waves)):
        if on_wave is not None:
            on_wave(index, len(run_plan.waves))
        programs = [BucketProgram(b, dataset, settings) for b in run_plan.waves[index].buckets]
        _start_wave(programs, progress, index, resume if index == first else None)
        _train(programs, progress, settings, on_epoch, run_plan)
        trained = _trained_params(programs, progress)
        if on_params is not None:  # handed over, not kept: the next wave's arrays take their place
            on_params(trained)
        elif len(run_plan.waves) == 1:
            params = trained  # read from the devices when asked
        else:  # read to the host now: this wave's device arrays go
            params.update({key: trained[key] for key in trained})
        progress.states, progress.bests = [], []  # this wave's arrays go before the next wave's are made
        del programs, trained
    history = {key: {k: np.asarray(v) for k, v in h.items()} for key, h in progress.history.items()}
    buckets = [
        {"variants": [c.name for c in b.bucket.configs], "seeds": list(b.bucket.seeds)} for b in run_plan.buckets
    ]
    buckets = [{**d, **b.execution.describe()} for d, b in zip(buckets, run_plan.buckets)]
    return RunResult(history, params, run_plan.task, buckets)


def _planned(
    variants, dataset, settings: RunSettings, mesh, meshes, policy: PaddingPolicy, given: RunPlan | None, keep_params
) -> RunPlan:
    """The run's RunPlan: `given`, checked against the variants and settings, or made here on `mesh` or `meshes`
    (one per bucket) and split into waves when its estimate exceeds the devices' free memory."""
    if given is not None:
        if mesh is not None or meshes is not None:
            raise VariantError("run: give a plan or mesh(es), not both (the plan holds each bucket's devices)")
        if given.settings != settings:
            raise VariantError(f"run: the plan was made for other settings ({given.settings}), not {settings}")
        if sorted(given.keys) != sorted((v.name, v.seed) for v in variants):
            raise VariantError("run: the plan was made for another list of variants (names or seeds differ)")
        return given
    buckets = plan(variants, policy)
    if meshes is None:
        meshes = [mesh if mesh is not None else variant_mesh()] * len(buckets)
    elif mesh is not None or len(meshes) != len(buckets):
        raise VariantError(
            f"run: give mesh or one mesh per bucket ({len(buckets)} here), not both; got {len(meshes)} meshes"
        )
    devices = [tuple(m.devices.flat) for m in meshes]
    run_plan = plan_run(buckets, dataset, settings, devices, "given", estimate_memory=True)
    return _fitted(
        run_plan, dataset, sorted({d for bucket in devices for d in bucket}, key=lambda d: d.id), keep_params
    )


def _fitted(run_plan: RunPlan, dataset, devices, keep_params: bool) -> RunPlan:
    """The plan, in waves when its memory estimate exceeds the devices' free memory; VariantError, one line, when
    even one model cannot fit, before anything is allocated (a run_sweep plan is fitted by the sweep, with advice)."""
    available, where = memory.available_bytes(devices)
    estimate = run_plan.memory
    if not available or estimate.total <= available:
        return run_plan
    try:
        return in_waves(run_plan, dataset, available, keep_params)
    except DoesNotFit as e:
        raise VariantError(
            f"run: the variants need an estimated {memory.gigabytes(estimate.total)} but {where} has "
            f"{memory.gigabytes(available)} free, and {e.what} alone needs {memory.gigabytes(e.estimate.total)}; "
            f"most of it is the {e.estimate.driver} (num_words={dataset.num_words}, {len(run_plan.keys)} model(s))"
        ) from None


@dataclasses.dataclass
class _RunState:
    """A run's bookkeeping: the history so far of every variant, each one's best-epoch tracker and best epoch;
    and of the wave in training (`wave`), per bucket its (state, unit mask), best-epoch params and epochs done."""

    states: list
    bests: list
    history: dict
    trackers: dict
    best_epochs: dict
    epochs_done: int = 0
    wave: int = 0


def _start(variants, columns, divergence_threshold: float) -> _RunState:
    """Fresh bookkeeping: empty histories, no best epoch yet, no wave started."""
    history = {(v.name, v.seed): {m: [] for m in columns} for v in variants}
    return _RunState(
        states=[],
        bests=[],
        history=history,
        trackers={key: best_epoch_tracker(divergence_threshold) for key in history},
        best_epochs={key: None for key in history},
    )


def _start_wave(programs: list, progress: _RunState, index: int, resume: RunSnapshot | None) -> None:
    """Wave `index` begins: every bucket initialized, or restored from `resume` (a snapshot taken in this wave)."""
    progress.wave, progress.epochs_done = index, 0
    progress.states = [p.init() for p in programs]
    progress.bests = [_copied(state.params) for state, _ in progress.states]  # best so far: none yet, any tree will do
    if resume is None:
        return
    if len(resume.states) != len(programs) or len(resume.best) != len(programs):
        raise VariantError(
            f"the snapshot holds {len(resume.states)} bucket(s) of wave {index + 1}, this run's wave has {len(programs)}"
        )
    progress.states = [(_placed(saved, state), mask) for saved, (state, mask) in zip(resume.states, progress.states)]
    progress.bests = [_placed(saved, best) for saved, best in zip(resume.best, progress.bests)]
    progress.epochs_done = resume.epochs_done


def _restore_history(progress: _RunState, resume: RunSnapshot, run_plan: RunPlan, columns) -> None:
    """Continue from `resume`: its wave and history (the best-epoch bookkeeping replayed over it), checked against
    this run's plan, waves and columns; its states are restored as its wave starts (`_start_wave`)."""
    if resume.best is None or len(resume.best) != len(resume.states):
        raise VariantError("the snapshot has no best-epoch parameters (RunSnapshot.best); take it with run's on_epoch")
    other_plan = resume.plan is not None and _as_tuples(resume.plan) != _as_tuples(run_plan.layout())
    waves = getattr(resume, "waves", None)
    other_waves = waves is not None and _as_tuples(waves) != _as_tuples(run_plan.wave_layout())
    wave = getattr(resume, "wave", 0)
    if other_plan or not 0 <= wave < len(run_plan.waves):
        raise VariantError(
            "the snapshot was taken for a different list of variants (buckets, names, order or seeds differ); "
            "resume with exactly the variants of the interrupted run"
        )
    if other_waves:
        raise VariantError(
            f"the snapshot was taken in a run split into other waves ({len(waves or [0])}, now {len(run_plan.waves)}); "
            "resume with the interrupted run's waves (the same memory limit)"
        )
    saved = next(iter(resume.history.values()), {})
    if set(saved) != set(columns):
        raise VariantError(
            f"the snapshot's history has the columns {sorted(saved)}, this run's data gives {sorted(columns)} "
            "(a test split adds test_*); resume with the data of the interrupted run"
        )
    progress.history = {key: {m: list(resume.history[key][m]) for m in columns} for key in progress.history}
    progress.wave = wave
    for key, h in progress.history.items():  # replay the best-epoch bookkeeping over the restored history
        for e in range(len(h[columns[0]])):
            if progress.trackers[key]({m: h[m][e] for m in columns}):
                progress.best_epochs[key] = e + 1


def _placed(saved, like):
    """`saved` laid out as `like`: jax.Arrays (a checkpoint restored for this plan) moved where needed, host
    arrays put there (`distributed.put`)."""
    shardings = jax.tree.map(lambda x: x.sharding, like)
    if all(isinstance(x, jax.Array) for x in jax.tree.leaves(saved)):
        return jax.device_put(saved, shardings)
    return distributed.put(saved, shardings)


def _train(programs: list, progress: _RunState, settings: RunSettings, on_epoch, run_plan: RunPlan) -> None:
    """The wave's epochs from progress.epochs_done on: train, record, call on_epoch, stop early once every
    variant of the wave has stopped."""
    keys = [(c.name, s) for p in programs for s in p.bucket.seeds for c in p.bucket.configs]
    in_wave = set(keys)
    layout, waves, wave = run_plan.layout(), run_plan.wave_layout(), progress.wave

    def snapshot(epochs_done):
        # the wave's history lists only grow: a copy of their first epochs_done values is this epoch's
        copied = {
            key: {m: list(v[:epochs_done] if key in in_wave else v) for m, v in h.items()}
            for key, h in progress.history.items()
        }
        states = [s for s, _ in progress.states]
        return RunSnapshot(epochs_done, states, copied, layout, list(progress.bests), wave=wave, waves=waves)

    def all_stopped(epochs_done):
        return settings.patience is not None and all(
            stopped(progress.best_epochs[k], epochs_done, settings.patience) for k in keys
        )

    first = progress.epochs_done
    if all_stopped(first):  # a snapshot taken as the wave stopped: nothing left to train in it
        return
    batches = [p.train_batches(first) for p in programs] if first < settings.epochs else []
    for epoch in range(first, settings.epochs):
        outputs = []
        for i, program in enumerate(programs):
            state, mask = progress.states[i]
            new_state, metrics = program.epoch(state, mask, batches[i])  # dispatched, not waited for
            progress.states[i] = (new_state, mask)
            outputs.append(metrics)
        if epoch + 1 < settings.epochs:  # prepared on the host while the devices train
            batches = [p.train_batches(epoch + 1) for p in programs]
        row = _record_epoch(programs, progress, outputs, epoch)
        if on_epoch is not None:
            on_epoch(epoch, row, lambda e=epoch: snapshot(e + 1))
        if all_stopped(epoch + 1):
            break


def _record_epoch(programs: list, progress: _RunState, outputs: list, epoch: int) -> dict:
    """Append an epoch's metrics to the history, keep the params of new best epochs; returns the epoch's row."""
    row = {}
    for program, metrics in zip(programs, outputs):
        values = program.metrics_to_numpy(metrics)
        for si, seed in enumerate(program.bucket.seeds):
            for ci, config in enumerate(program.bucket.configs):
                row[(config.name, seed)] = {k: float(v[si, ci]) for k, v in values.items()}
    for key, values in row.items():
        for k, v in values.items():
            progress.history[key][k].append(v)
    for i, program in enumerate(programs):
        improved = np.zeros((len(program.bucket.seeds), len(program.configs)), bool)  # inert padding configs: False
        for si, seed in enumerate(program.bucket.seeds):
            for ci, config in enumerate(program.bucket.configs):
                if progress.trackers[(config.name, seed)](row[(config.name, seed)]):
                    improved[si, ci], progress.best_epochs[(config.name, seed)] = True, epoch + 1
        if improved.any():
            progress.bests[i] = _keep_best(
                progress.bests[i], progress.states[i][0].params, program.improved_mask(improved)
            )
    progress.epochs_done = epoch + 1
    return row


def _trained_params(programs: list, progress: _RunState) -> TrainedParamsMap:
    """{(name, seed): TrainedParams}, read from the devices when asked (see TrainedParamsMap)."""
    buckets = [
        (program.bucket, state.params, best)
        for program, (state, _), best in zip(programs, progress.states, progress.bests)
    ]
    return TrainedParamsMap(buckets, dict(progress.best_epochs))


class TrainedParamsMap(Mapping):
    """RunResult.params: {(name, seed): TrainedParams}, each variant's final and best-epoch params cut to its true
    widths, as NumPy, read from the device shard that holds the variant when asked: nothing is gathered, so no
    device or host ever holds every variant's parameters at once.

    `held_here()` gives the variants whose shards this process holds, one device's shard at a time (what each
    process of a run writes to params/); a variant held by another process is a KeyError-like LookupError here.
    """

    def __init__(self, buckets: list, best_epochs: dict):
        self._buckets = buckets  # per bucket: (Bucket, final params [seeds, padded configs, ...], best params)
        self._best_epochs = best_epochs
        self._where = {
            (config.name, seed): (b, si, ci)
            for b, (bucket, _, _) in enumerate(buckets)
            for si, seed in enumerate(bucket.seeds)
            for ci, config in enumerate(bucket.configs)
        }
        self._host = (None, None)  # (bucket, device) and the host copy of its shard: the last one read

    @property
    def best_epochs(self) -> dict:
        """{(name, seed): its best epoch (from 1) or None}, without reading any parameters."""
        return dict(self._best_epochs)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, key) -> TrainedParams:
        b, si, ci = self._where[key]
        for device, start, stop in _config_ranges(self._buckets[b][1]):
            if start <= ci < stop:
                return self._one(b, device, key, si, ci - start)
        raise LookupError(f"{key}: its parameters are held by another process's devices")

    def held_here(self):
        """(key, TrainedParams) of every variant this process's devices hold, one device's shard on the host at a time."""
        for b, (bucket, final, _) in enumerate(self._buckets):
            for device, start, stop in _config_ranges(final):
                for ci in range(start, min(stop, len(bucket.configs))):  # past the configs: inert padding copies
                    for si, seed in enumerate(bucket.seeds):
                        key = (bucket.configs[ci].name, seed)
                        yield key, self._one(b, device, key, si, ci - start)
        self._host = (None, None)

    def _one(self, b: int, device, key, si: int, local: int) -> TrainedParams:
        if self._host[0] != (b, device):  # this shard of every leaf, final and best, on the host
            _, final, best = self._buckets[b]
            self._host = ((b, device), (_shard_on_host(final, device), _shard_on_host(best, device)))
        final, best = self._host[1]
        widths = self._buckets[b][0].configs[self._where[key][2]].widths

        def one(tree):
            tree = jax.tree.map(lambda x: x[si, local], tree)
            return jax.tree.map(np.ascontiguousarray, tree if widths is None else unpadded(tree, widths))

        epoch = self._best_epochs[key]
        return TrainedParams(one(final), None if epoch is None else one(best), epoch)


def _config_ranges(tree) -> list:
    """[(device, first config, end)] of the shards of this process's devices (one replica each), sharded over the
    configs axis (axis 1) as `BucketProgram` places a state."""
    shards = jax.tree.leaves(tree)[0].addressable_shards
    starts = [(s, s.index[1].start or 0) for s in shards if s.replica_id == 0]
    return [(s.device, start, start + s.data.shape[1]) for s, start in starts]


def _shard_on_host(tree, device):
    """The shard of every leaf of `tree` that `device` holds, as NumPy."""
    return jax.tree.map(lambda x: np.asarray(next(s.data for s in x.addressable_shards if s.device == device)), tree)

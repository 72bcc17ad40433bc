"""The whole study in one call: a validated `SweepConfig` and `run_sweep`, resumable and checkpointed.

`run_sweep(config, out)` validates everything (config, output folder, data, devices) before
it writes anything, then trains every variant x seed in one `variants.run` and fills the run
folder (file formats in `jaxreg.results`):

  manifest.json        every file jaxreg wrote into the folder (see `jaxreg.runfolder`)
  config.json          the resolved config, variant list, plan, versions, devices, data
  status.json          running / interrupted / finished (+ diverged variants, seconds)
  checkpoint.msgpack   after every epoch: each bucket's TrainState and the history so far,
                       behind a sha256 header line (`runfolder.with_checksum`)
  history.jsonl/.csv, summary.md/.csv, figures/*.png   at the end

Checkpoints are written atomically (temporary file, then os.replace), so a run killed at
any moment can continue with `resume=True` and ends with exactly the history of an
uninterrupted run. A finished folder is never overwritten without `overwrite=True`, which
deletes only the files the manifest lists. One run at a time writes a folder: run_sweep
holds the folder's lock (`runfolder.exclusive`) from checking the folder to its last write.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import flax
import flax.serialization
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxreg
from jaxreg import batches as batching
from jaxreg import losses, machine, memory, results, runfolder
from jaxreg import variants as V
from jaxreg.data import DataError, Dataset, load_imdb, synthetic_dataset
from jaxreg.train import init_state

PRODUCTS = ("auto", "sparse", "dense")
VALIDATIONS = ("test", "holdout")
AXES = ("width", "l1", "l2", "dropout_rate", "learning_rate", "weight_decay")
CHECKPOINT_FILE = "checkpoint.msgpack"
CHECKPOINT_FORMAT = 2  # 2: behind a checksum header; 1 (no checksum) is refused
SYNTHETIC = dict(n_train=2000, n_validation=1000, num_words=1000)
# Largest accepted values: a history keeps every epoch; seeds and devices multiply the models;
# batch rows are int32 indices. Whether a run fits in memory is estimated later (jaxreg.memory).
MAXIMA = dict(epochs=V.MAX_EPOCHS, seeds=4096, batch_size=V.MAX_BATCH_SIZE, holdout_size=2**31 - 1, devices=4096)
# Fields that select the data file rather than the experiment; on resume the data checksum is compared instead.
_LOCAL_FIELDS = ("data",)


class SweepError(Exception):
    """A user-facing problem with a sweep's config, data, devices or output folder; one line."""


class SweepInterrupted(SweepError):
    """Ctrl-C (KeyboardInterrupt) once the run folder was written; it holds a checkpoint after `epochs_done` epochs."""

    def __init__(self, folder: Path, epochs_done: int, epochs: int):
        self.folder, self.epochs_done, self.epochs = folder, epochs_done, epochs
        if epochs_done:
            message = f"interrupted after epoch {epochs_done}/{epochs}; checkpoint: {folder / CHECKPOINT_FILE}"
        else:
            message = f"interrupted during the first epoch; no checkpoint yet in {folder} (resuming starts at epoch 1)"
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One study: the variants and everything that decides their results. Validated on construction.

    variants: base specs (seed 0); every one is trained with seeds 0..seeds-1 in one program.
    axis: the VariantSpec field the sweep varies ("width" = first hidden width), for figures
    against it; None for a set of named models (the book). data: archive or folder path
    (None: env JAXREG_DATA); synthetic: offline demo data instead (validation "test").
    devices: how many devices to shard the variants over (None: all).
    divergence_threshold: a variant has diverged from the first epoch where a loss exceeds
    this in size, or any metric is NaN or infinite (see `jaxreg.results`).
    """

    name: str
    variants: tuple[V.VariantSpec, ...]
    description: str = ""
    epochs: int = 20
    seeds: int = 1
    batch_size: int = 512
    loss: str = "keras"
    product: str = "auto"
    variant_loop: str = "auto"
    validation: str = "test"
    holdout_size: int = 10_000
    data: str | None = None
    synthetic: bool = False
    devices: int | None = None
    axis: str | None = None
    divergence_threshold: float = results.DIVERGENCE_THRESHOLD

    def __post_init__(self):
        def bad(field, why):
            raise SweepError(f"config {self.name!r}: {field}={getattr(self, field)!r} {why}")

        def positive_int(field):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < 1:
                bad(field, "must be an integer >= 1")
            object.__setattr__(self, field, int(value))  # NumPy ints too, as plain JSON-ready ints

        if not isinstance(self.name, str) or not self.name:
            raise SweepError(f"config name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "variants", tuple(self.variants))
        if not self.variants or not all(isinstance(v, V.VariantSpec) for v in self.variants):
            bad("variants", "must be a non-empty sequence of VariantSpec")
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            bad("variants", f"has duplicate names {duplicates}")
        if any("," in n for n in names):
            bad("variants", "names must not contain commas (--variants splits on them)")
        if any(v.seed != 0 for v in self.variants):
            bad("variants", "must have seed 0 (set seeds instead)")
        for field in ("epochs", "seeds", "batch_size", "holdout_size") + (("devices",) if self.devices is not None else ()):
            positive_int(field)
            if getattr(self, field) > MAXIMA[field]:
                bad(field, f"is above the maximum {MAXIMA[field]:,}")
        if self.loss not in losses.LOSS_MODES:
            bad("loss", f"must be one of {losses.LOSS_MODES}")
        if self.product not in PRODUCTS:
            bad("product", f"must be one of {PRODUCTS}")
        if self.variant_loop not in V.VARIANT_LOOPS:
            bad("variant_loop", f"must be one of {V.VARIANT_LOOPS}")
        if self.validation not in VALIDATIONS:
            bad("validation", f"must be one of {VALIDATIONS}")
        if self.axis is not None and self.axis not in AXES:
            bad("axis", f"must be None or one of {AXES}")
        if not isinstance(self.synthetic, bool):
            bad("synthetic", "must be True or False")
        if self.synthetic and self.data is not None:
            bad("data", "cannot be combined with synthetic=True (choose one)")
        if self.synthetic and self.validation != "test":
            bad("validation", "must be 'test' with synthetic data (it has its own validation split)")
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            bad("data", "must be a path or None")
        threshold = self.divergence_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < math.inf:
            bad("divergence_threshold", "must be a finite number > 0")
        object.__setattr__(self, "divergence_threshold", float(threshold))

    def replace(self, **changes) -> "SweepConfig":
        """A copy with some fields changed (validated again); unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SweepError(f"config {self.name!r}: unknown field(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def select(self, names: Sequence[str]) -> "SweepConfig":
        """Only the named variants, in the config's order."""
        known = [v.name for v in self.variants]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SweepError(f"unknown variant(s) {', '.join(unknown)} in preset {self.name!r}; known: {', '.join(known)}")
        return self.replace(variants=tuple(v for v in self.variants if v.name in names))

    def variant_specs(self) -> list[V.VariantSpec]:
        return V.with_seeds(self.variants, range(self.seeds))

    def run_settings(self) -> V.RunSettings:
        return V.RunSettings(
            epochs=self.epochs, batch_size=self.batch_size, loss=self.loss, product=self.product, variant_loop=self.variant_loop
        )

    def axis_values(self) -> dict[str, float]:
        """{variant name: the value of `axis`}; empty without an axis."""
        if self.axis is None:
            return {}
        if self.axis == "width":
            return {v.name: float(v.widths[0]) for v in self.variants}
        return {v.name: float(getattr(v, self.axis)) for v in self.variants}

    def to_dict(self) -> dict:
        """JSON-ready: every field, variants as dicts."""
        d = dataclasses.asdict(self)
        d["variants"] = [dataclasses.asdict(v) for v in self.variants]
        return json.loads(json.dumps(d))


@dataclasses.dataclass
class SweepResult:
    """What run_sweep returns: the folder, stacked histories (see jaxreg.results), summaries, divergences."""

    folder: Path
    histories: dict
    summaries: list
    diverged: list  # [(name, seed, first epoch from 1)]
    figures: list
    resumed_from: int = 0


# --- validation before anything is written ---------------------------------------------


def load_dataset(config: SweepConfig) -> Dataset:
    """The config's data (synthetic or IMDB); SweepError with the fix if it cannot be loaded."""
    if config.synthetic:
        return synthetic_dataset(**SYNTHETIC)
    path = config.data or os.environ.get("JAXREG_DATA")
    if not path:
        raise SweepError(
            "no data: pass --data PATH (the aclImdb .tar.gz archive or extracted folder), "
            "set JAXREG_DATA, or use --synthetic for offline demo data"
        )
    try:
        return load_imdb(path, validation=config.validation, holdout_size=config.holdout_size)
    except DataError as e:
        raise SweepError(str(e)) from e


def check_device_count(config: SweepConfig, plan: list) -> None:
    """Refuse more devices than the largest bucket has configs: the extra ones would train padding copies."""
    largest = max(len(b.configs) for b in plan)
    if config.devices is not None and config.devices > largest:
        raise SweepError(
            f"devices={config.devices} is more than the {largest} variant(s) of the largest program "
            f"(seeds share a device); pass --devices {largest} or fewer"
        )


def select_devices(count: int | None, most: int | None = None) -> list:
    """`count` devices (None: all, but at most `most`, the configs of the largest bucket)."""
    devices = jax.devices()
    if count is None and most is not None:
        count = min(len(devices), most)
    if count is not None and count > len(devices):
        hint = " (on CPU, --devices sets XLA_FLAGS before jax starts)" if devices[0].platform == "cpu" else ""
        raise SweepError(f"devices={count} asked for, but only {len(devices)} {devices[0].platform} device(s) exist{hint}")
    return devices[: count or len(devices)]


def folder_state(folder: Path) -> str:
    """"new" (absent or empty), "foreign" (something else), "legacy" (an older jaxreg's run, no
    manifest), "unfinished" or "finished" run folder."""
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        return "foreign"
    if not (folder / runfolder.MANIFEST_FILE).is_file():
        if (folder / results.CONFIG_FILE).is_file():
            return "legacy"
        return "new" if not any(folder.iterdir()) else "foreign"
    status = folder / results.STATUS_FILE
    try:
        finished = status.is_file() and results.read_json(status).get("state") == "finished"
    except (OSError, ValueError):
        finished = False
    return "finished" if finished else "unfinished"


def _check_writable(folder: Path) -> None:
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SweepError(f"cannot create the output folder {folder}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SweepError(f"cannot write the output folder {folder}: no write permission on {parent}")


def _check_folder(folder: Path, config: SweepConfig, resume: bool, overwrite: bool) -> str:
    if resume and overwrite:
        raise SweepError("--resume and --overwrite contradict each other: pass one of them")
    state = folder_state(folder)
    if state == "foreign":
        raise SweepError(
            f"{folder} exists and is not a jaxreg run folder (no {runfolder.MANIFEST_FILE}); choose another --out"
        )
    if state == "legacy":
        raise SweepError(
            f"{folder} holds a run of an older jaxreg (no {runfolder.MANIFEST_FILE}), which this version neither resumes "
            "nor overwrites; choose another --out (jaxreg.results.load_run still reads it)"
        )
    if state == "finished" and not (resume or overwrite):
        raise SweepError(f"{folder} holds a finished run; pass --overwrite to replace it, or choose another --out")
    if state == "unfinished" and not (resume or overwrite):
        raise SweepError(
            f"{folder} holds an unfinished run ({_done_text(folder)}); pass --resume to continue it or --overwrite to restart it"
        )
    if state in ("unfinished", "finished") and resume:
        _compare_configs(folder, config)
    if state == "unfinished" and resume and not (folder / CHECKPOINT_FILE).is_file():
        done = _epochs_done(folder)
        if done:
            raise SweepError(
                f"cannot resume {folder}: {results.STATUS_FILE} says {done} epoch(s) done but "
                f"{CHECKPOINT_FILE} is missing; use --overwrite to start again"
            )
    if state in ("unfinished", "finished"):
        try:
            runfolder.recorded(folder)  # overwrite deletes what it lists, resume cleans up after it
        except ValueError as e:
            action = "overwrite" if overwrite else "resume"
            raise SweepError(f"cannot {action} {folder}: {e}; delete the folder yourself or choose another --out") from e
    return state


def _epochs_done(folder: Path) -> int:
    """status.json's epochs_done; 0 without one (a run killed before its first status)."""
    path = folder / results.STATUS_FILE
    if not path.is_file():
        return 0
    try:
        return int(results.read_json(path).get("epochs_done", 0))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise SweepError(f"cannot resume {folder}: unreadable {path} ({e}); use --overwrite to start again") from e


def _done_text(folder: Path) -> str:
    try:
        status = results.read_json(folder / results.STATUS_FILE)
        return f"{status.get('epochs_done', 0)}/{status.get('epochs', '?')} epochs done"
    except (OSError, ValueError):
        return "no epoch done"


def _compare_configs(folder: Path, config: SweepConfig) -> None:
    try:
        saved = results.read_json(folder / results.CONFIG_FILE)["config"]
    except (OSError, ValueError, KeyError) as e:
        raise SweepError(f"cannot resume {folder}: unreadable {results.CONFIG_FILE} ({e}); use --overwrite") from e
    now = config.to_dict()
    differences = [
        f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in _LOCAL_FIELDS and saved.get(k) != now.get(k)
    ]
    if differences:
        shown = "; ".join(d if len(d) < 160 else d[:157] + "..." for d in differences)
        raise SweepError(
            f"cannot resume {folder}: the config differs from the saved one ({shown}); "
            "repeat the original options, or use --overwrite"
        )


def memory_estimate(config: SweepConfig, dataset: Dataset, devices: list, plan: list) -> memory.Estimate:
    """jaxreg.memory's estimate for this run's buckets, data and batch capacities."""
    settings = config.run_settings()
    train, val = dataset.train, dataset.validation
    capacity = max(
        batching.train_capacity(train.x.lengths, seeds, config.epochs, config.batch_size)
        for seeds in {b.seeds for b in plan}
    )
    data = memory.DataShape(
        num_words=dataset.num_words,
        n_train=len(train),
        n_validation=len(val),
        batch_size=config.batch_size,
        eval_batch_size=settings.eval_batch_size,
        train_capacity=capacity,
        validation_capacity=batching.capacity(val.x.lengths, [np.arange(len(val))], settings.eval_batch_size),
        index_bytes=2 if max(dataset.num_words, config.batch_size + 1) <= np.iinfo(np.int16).max else 4,
    )
    shapes = []
    for b in plan:
        product, sequential = V.bucket_execution(b, config.product, devices, config.variant_loop)
        n_configs = len(V.sharded_configs(b, len(devices)))
        shapes.append(memory.BucketShape(b.widths, len(b.seeds), n_configs, product, sequential, V.cpu_kernels_on(devices)))
    return memory.estimate(shapes, data, config.epochs)


def check_memory(config: SweepConfig, plan: list, estimate: memory.Estimate, available: int, where: str) -> None:
    """SweepError naming what drives the estimate when it exceeds the available memory (0: unknown)."""
    if not available or estimate.total <= available:
        return
    widest = max(plan, key=lambda b: sum(b.widths)).widths
    models = f"{len(config.variants)} variant(s) x {config.seeds} seed(s)"
    fixes = {
        "state": f"the models' parameters and optimizer state (widths up to {widest}, {models}); "
        "lower --seeds or the widths, or pick fewer --variants",
        "batches": f"the training batches (batch_size={config.batch_size}, {config.seeds} seed(s)); "
        "lower --batch-size or --seeds",
        "activations": f"the activations of a batch (batch_size={config.batch_size}, widths up to {widest}, {models}); "
        "lower --batch-size or --seeds",
        "history": f"the per-epoch history (epochs={config.epochs}, {models}); lower --epochs or --seeds",
    }
    raise SweepError(
        f"this run needs an estimated {memory.gigabytes(estimate.total)} but {where} has "
        f"{memory.gigabytes(available)} free; most of it is {fixes[estimate.driver]}"
    )


# --- checkpoints -----------------------------------------------------------------------


def save_checkpoint(folder: Path, snapshot: V.RunSnapshot) -> Path:
    """Atomically write the snapshot: states via flax msgpack, history as JSON text, behind a checksum."""
    history = [{"name": n, "seed": s, "metrics": m} for (n, s), m in snapshot.history.items()]
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epochs_done": snapshot.epochs_done,
        "history": json.dumps(history),
        "plan": json.dumps(getattr(snapshot, "plan", None)),  # bucket layout, checked by variants.run on resume
        "states": {str(i): flax.serialization.to_state_dict(s) for i, s in enumerate(snapshot.states)},
    }
    sealed = runfolder.with_checksum(flax.serialization.msgpack_serialize(payload))
    return results.atomic_write(folder / CHECKPOINT_FILE, sealed)


def _state_targets(config: SweepConfig, num_words: int, n_devices: int) -> list:
    """Per bucket: (abstract TrainState of one variant, leading axes [seeds, padded configs]) as variants.run builds it."""
    targets = []
    for bucket in V.plan(config.variant_specs()):
        step_config = bucket.step_config(config.loss, V.choose_product(bucket, config.product))  # shapes only
        one = jax.eval_shape(lambda c=step_config, w=bucket.widths: init_state(jax.random.key(0), c, num_words, w)[0])
        targets.append((one, (len(bucket.seeds), len(V.sharded_configs(bucket, n_devices)))))
    return targets


def load_checkpoint(folder: Path, config: SweepConfig, num_words: int, n_devices: int) -> V.RunSnapshot:
    """Read a checkpoint back into a RunSnapshot, checking its checksum and its structure against a fresh run's."""
    path = folder / CHECKPOINT_FILE
    try:
        payload = runfolder.verified(path.read_bytes())
    except runfolder.ChecksumMismatch as e:
        raise SweepError(f"checkpoint {path} is corrupt (checksum mismatch); use --overwrite to start again") from e
    except runfolder.NoChecksum as e:
        raise SweepError(
            f"checkpoint {path} has no checksum (an older jaxreg's format, or damaged); use --overwrite to start again"
        ) from e
    except OSError as e:
        raise SweepError(f"cannot resume from {path}: {e}; use --overwrite to start again") from e
    try:
        saved = flax.serialization.msgpack_restore(payload)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        states = []
        targets = _state_targets(config, num_words, n_devices)
        if len(saved["states"]) != len(targets):
            raise ValueError(f"{len(saved['states'])} buckets saved, this sweep has {len(targets)}")
        for i, (target, lead) in enumerate(targets):
            state = flax.serialization.from_state_dict(target, saved["states"][str(i)])
            for want, got in zip(jax.tree.leaves(target), jax.tree.leaves(state)):
                if tuple(got.shape) != lead + tuple(want.shape) or got.dtype != want.dtype:
                    raise ValueError(f"bucket {i}: saved array {got.shape} {got.dtype}, expected {lead + want.shape} {want.dtype}")
            states.append(state)
        history = {(h["name"], h["seed"]): h["metrics"] for h in json.loads(saved["history"])}
        expected = {(v.name, v.seed) for v in config.variant_specs()}
        if set(history) != expected:
            raise ValueError("the saved history has other variants or seeds")
        snapshot = V.RunSnapshot(int(saved["epochs_done"]), states, history)
        plan = json.loads(saved.get("plan", "null"))
        if plan is not None and hasattr(snapshot, "plan"):
            snapshot.plan = plan
        return snapshot
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"cannot resume from {path}: {e}; use --overwrite to start again") from e


# --- the run ---------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over epochs; postfix: the best mean validation data loss so far and its variant."""

    def __init__(self, config: SweepConfig, start: int, history: dict, enabled: bool):
        self.bar = tqdm(
            total=config.epochs, initial=start, desc=config.name, unit="epoch", disable=not enabled, dynamic_ncols=True
        )
        self.best = (math.inf, "", 0)
        self.threshold = config.divergence_threshold
        self.announced: set = set()
        for e in range(start):
            self._record(e, {k: {m: v[e] for m, v in h.items()} for k, h in history.items()})
        self._postfix()

    def _update_best(self, epoch: int, row: dict) -> None:
        per_name: dict[str, list] = {}
        for (name, _), metrics in row.items():
            per_name.setdefault(name, []).append(metrics["val_data_loss"])
        for name, values in per_name.items():
            mean = float(np.mean(values))
            if math.isfinite(mean) and mean < self.best[0]:
                self.best = (mean, name, epoch + 1)

    def _postfix(self) -> None:
        if self.best[1]:
            self.bar.set_postfix_str(f"best val data loss {self.best[0]:.4f} ({self.best[1]}, epoch {self.best[2]})")

    def _record(self, epoch: int, row: dict) -> None:
        """Announce new divergences, track the best loss."""
        for key, metrics in row.items():
            if key not in self.announced and results.blown_up(metrics, self.threshold):
                self.announced.add(key)
                message = f"epoch {epoch + 1}: {key[0]} (seed {key[1]}) diverged (loss {metrics['loss']})"
                self.bar.write(message, file=sys.stderr)
        self._update_best(epoch, row)

    def epoch_done(self, epoch: int, row: dict) -> None:
        self._record(epoch, row)
        self._postfix()
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _environment(config: SweepConfig, dataset: Dataset, devices: list, plan: list) -> dict:
    return {
        "config": config.to_dict(),
        "variants": [dataclasses.asdict(v) for v in config.variants],
        "seeds": list(range(config.seeds)),
        "axis": {"name": config.axis, "values": config.axis_values()} if config.axis else None,
        "plan": [
            {
                "widths": list(b.widths),
                "optimizer": b.optimizer,
                "variants": [c.name for c in b.configs],
                "seeds": list(b.seeds),
                "product": V.bucket_execution(b, config.product, devices, config.variant_loop)[0],
            }
            for b in plan
        ],
        "validation_protocol": dataset.protocol,
        "data": {
            "source": dataset.source,
            "checksum": dataset.checksum,
            "describe": dataset.describe(),
            "num_words": dataset.num_words,
            "train_size": len(dataset.train),
            "validation_size": len(dataset.validation),
        },
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)},
        # float32 results depend on it: histories are bit for bit only on the same instruction set
        "machine": {"cpu": machine.describe(), "instruction_set": machine.instruction_set()},
        "versions": {
            "jaxreg": jaxreg.__version__,
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _finish(folder: Path, config: SweepConfig, history, figures: bool, seconds: float, resumed_from: int, stream) -> SweepResult:
    histories = results.stack(history, [v.name for v in config.variants], config.divergence_threshold)
    summaries = results.summarize(histories)
    runfolder.record(folder, results.HISTORY_JSONL, results.HISTORY_CSV, results.SUMMARY_MD, results.SUMMARY_CSV)
    results.write_history(folder, histories)
    title = f"{config.name}: {config.epochs} epochs x {config.seeds} seed(s)"
    results.write_summary(folder, summaries, title=title, divergence_threshold=config.divergence_threshold)
    paths = []
    if figures:
        from jaxreg import plots  # matplotlib is only needed here

        axis = (config.axis, config.axis_values()) if config.axis else None
        names = plots.figure_files(list(histories), axis[0] if axis else None)
        runfolder.record(folder, *(f"{results.FIGURES_DIR}/{name}" for name in names))
        paths = plots.make_figures(histories, folder / results.FIGURES_DIR, axis=axis)
    diverged = [(s.name, seed, epoch) for s in summaries for seed, epoch in s.diverged]
    results.write_json(
        folder / results.STATUS_FILE,
        {
            "state": "finished",
            "epochs_done": config.epochs,
            "epochs": config.epochs,
            "seconds": round(seconds, 3),
            "resumed_from_epoch": resumed_from,
            "diverged": [{"variant": n, "seed": s, "epoch": e} for n, s, e in diverged],
        },
    )
    print_summary(summaries, folder, paths, stream, config.divergence_threshold)
    return SweepResult(folder, histories, summaries, diverged, paths, resumed_from)


def print_summary(
    summaries, folder: Path, figures: list, stream=sys.stdout, divergence_threshold: float = results.DIVERGENCE_THRESHOLD
) -> None:
    print("\n" + results.summary_table(summaries), file=stream)
    print(results.summary_notes(divergence_threshold=divergence_threshold), file=stream)
    written = [results.CONFIG_FILE, results.HISTORY_JSONL, results.HISTORY_CSV, results.SUMMARY_MD, results.SUMMARY_CSV]
    written += [str(p.relative_to(folder)) for p in figures]
    print(f"Wrote {folder}: {', '.join(written)}", file=stream)


def _reload_finished(folder: Path, stream) -> SweepResult:
    run = results.load_run(folder)
    summaries = results.summarize(run.histories)
    diverged = [(s.name, seed, epoch) for s in summaries for seed, epoch in s.diverged]
    figures = sorted((folder / results.FIGURES_DIR).glob("*.png"))
    print(f"{folder} already holds a finished run (use --overwrite to run it again).", file=stream)
    print_summary(summaries, folder, figures, stream, run.divergence_threshold)
    return SweepResult(folder, run.histories, summaries, diverged, figures, run.status.get("resumed_from_epoch", 0))


def run_sweep(
    config: SweepConfig,
    out,
    *,
    resume: bool = False,
    overwrite: bool = False,
    figures: bool = True,
    progress: bool = True,
    checkpoint_every: int = 1,
    stream=sys.stdout,
) -> SweepResult:
    """Train the sweep into the folder `out` (see the module docstring); SweepError for bad input.

    Raises SweepInterrupted on Ctrl-C after saving where to resume. Prints the data
    description, the plan and at the end the summary table to `stream`; the progress bar
    goes to stderr. SweepError at once if another process is writing the folder.
    """
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise SweepError(f"checkpoint_every={checkpoint_every!r} must be an integer >= 1")
    folder = Path(out)
    _check_writable(folder)
    try:
        with runfolder.exclusive(folder):
            return _run_locked(config, folder, resume, overwrite, figures, progress, checkpoint_every, stream)
    except runfolder.LockError as e:
        if e.in_use:
            raise SweepError(
                f"{folder} is in use by another jaxreg run (lock {e.path}); wait for it to end or choose another --out"
            ) from None
        raise SweepError(f"cannot create the lock file {e.path}: {e.reason}; choose another --out") from e


def _run_locked(config, folder: Path, resume, overwrite, figures, progress, checkpoint_every, stream) -> SweepResult:
    """run_sweep's work, while it holds the folder's lock."""
    state = _check_folder(folder, config, resume, overwrite)
    if state == "finished" and resume:
        return _reload_finished(folder, stream)
    variants = config.variant_specs()
    plan = V.plan(variants)
    check_device_count(config, plan)
    dataset = load_dataset(config)
    devices = select_devices(config.devices, max(len(b.configs) for b in plan))
    estimate = memory_estimate(config, dataset, devices, plan)
    available, where = memory.available_bytes(devices)
    check_memory(config, plan, estimate, available, where)
    environment = _environment(config, dataset, devices, plan)

    snapshot = None
    if state == "unfinished" and resume:
        saved = results.read_json(folder / results.CONFIG_FILE)
        checksum = saved.get("data", {}).get("checksum")
        if checksum != dataset.checksum:
            raise SweepError(
                f"cannot resume {folder}: the data differs from the saved run's (checksum "
                f"{str(checksum)[:16]}..., now {dataset.checksum[:16]}...)"
            )
        count = saved.get("devices", {}).get("count")
        if count != len(devices):
            raise SweepError(f"cannot resume {folder}: it ran on {count} device(s), now {len(devices)}; pass --devices {count}")
        if (folder / CHECKPOINT_FILE).is_file():
            snapshot = load_checkpoint(folder, config, dataset.num_words, len(devices))
        started_on = saved.get("machine", {}).get("instruction_set")
        if devices[0].platform == "cpu" and started_on != machine.instruction_set():
            print(
                f"note: {folder} was started with XLA:CPU on {started_on}, now {machine.instruction_set()}: "
                "the resumed epochs differ from an uninterrupted run by float32 round-off (amplified by training), not bit for bit",
                file=stream,
            )

    try:
        if state in ("unfinished", "finished") and overwrite:
            (folder / results.STATUS_FILE).unlink(missing_ok=True)  # interrupted now: an unfinished run folder
            runfolder.remove_recorded(folder)  # only jaxreg's files (the manifest last); the user's stay
        elif state == "unfinished":
            runfolder.remove_temporaries(folder)  # left by a process killed while writing
        folder.mkdir(parents=True, exist_ok=True)
        if not (resume and state == "unfinished"):
            runfolder.record(folder, results.CONFIG_FILE, results.STATUS_FILE, CHECKPOINT_FILE)
            results.write_json(folder / results.CONFIG_FILE, environment)
    except OSError as e:
        raise SweepError(f"cannot write the output folder {folder}: {e.strerror or e}") from e

    start = snapshot.epochs_done if snapshot else 0
    done, bar = start, None

    def write_status(name: str, epochs_done: int) -> None:
        results.write_json(folder / results.STATUS_FILE, {"state": name, "epochs_done": epochs_done, "epochs": config.epochs})

    def on_epoch(epoch, row, take_snapshot):
        nonlocal done
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs:
            save_checkpoint(folder, take_snapshot())
            done = epoch + 1
            write_status("running", done)
        bar.epoch_done(epoch, row)

    # From here on the folder is this run's: an interrupt at any moment, compiling, training or
    # writing the results, leaves it "interrupted" (unless already "finished") and resumable.
    try:
        print(dataset.describe(), file=stream)
        print(
            f"{config.name}: {len(config.variants)} variant(s) x {config.seeds} seed(s) = {len(variants)} models, "
            f"{config.epochs} epochs, batch {config.batch_size}, in {len(plan)} program(s) on "
            f"{len(devices)} {devices[0].platform} device(s) ({devices[0].device_kind}), "
            f"est. {memory.gigabytes(estimate.total)} of {memory.gigabytes(available)} {where}; output: {folder}"
            + (f"; resuming after epoch {start}" if snapshot else ""),
            file=stream,
            flush=True,
        )
        write_status("running", start)
        bar = _Progress(config, start, snapshot.history if snapshot else {}, progress)
        t0 = time.perf_counter()
        history = V.run(
            variants,
            dataset,
            config.run_settings(),
            mesh=V.variant_mesh(devices),
            on_epoch=on_epoch,
            resume=snapshot,
        )
        bar.close()
        return _finish(folder, config, history, figures, time.perf_counter() - t0, start, stream)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if folder_state(folder) != "finished":
            write_status("interrupted", done)
        raise SweepInterrupted(folder, done, config.epochs) from None

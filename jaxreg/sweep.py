"""The whole study in one call: `run_sweep(config, out)`, resumable and checkpointed.

`run_sweep(config, out)` validates everything (config, output folder, data, devices) before
it writes anything, then trains every variant x seed in one `variants.run` and fills the run
folder (the config: `jaxreg.config`; the folder's bookkeeping and checks: `jaxreg.runfolder`;
the checkpoint: `jaxreg.checkpoint`; the other files: `jaxreg.history`, `jaxreg.summaries`):

  manifest.json        every file jaxreg wrote into the folder (see `jaxreg.runfolder`)
  config.json          the resolved config, variant list, plan (with each program's devices), versions,
                       devices (count, placement), data
  status.json          running / interrupted / finished (+ diverged variants, seconds, compile_seconds)
  checkpoint/          an orbax checkpoint, saved every `checkpoint_seconds` (after the epoch that
                       passes them), at the end and on an interrupt: each bucket's TrainState,
                       best-epoch parameters and the history so far, with a sha256 of every file
                       (`jaxreg.checkpoint`); deleted (and dropped from the manifest) once the run
                       has finished, unless `keep_checkpoint=True`
  history.jsonl/.csv   appended after every epoch (`jaxreg.live`), rewritten at the end
  tensorboard/         TensorBoard events per variant and seed, after every epoch (`jaxreg.events`)
  params/<variant>/seed_<s>.final.msgpack, .best.msgpack   at the end: the trained parameters
                       at the variant's true widths (`jaxreg.params`, `load_params`)
  vocabulary.json      at the end, for IMDB and synthetic data: the words and tokenizer new text is
                       encoded with (`jaxreg.vocabulary`, `jaxreg.predict`)
  summary.md/.csv, figures/*.png   at the end

Checkpoints are saved asynchronously while the next epoch trains and committed atomically
(orbax renames a finished step into place; `checkpoint.Checkpoints`), so a run killed at any
moment can continue with `resume=True` and ends with exactly the history of an uninterrupted run. A finished folder
is never overwritten without `overwrite=True`, which
deletes only the files the manifest lists. One run at a time writes a folder: run_sweep
holds the folder's lock (`runfolder.exclusive`) from checking the folder to its last write.

Across processes and hosts (`jaxreg.distributed`): every process calls run_sweep alike;
process 0 alone checks, locks and writes the folder; the others train their share and write only
their shards of the checkpoint and their variants' params/ files, into process 0's folder.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import flax
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxreg
from jaxreg import compiletime, distributed, fileio, machine, memory, runfolder, selection
from jaxreg import params as saved_params
from jaxreg import variants as V
from jaxreg.agreement import Agreement, training_note
from jaxreg.checkpoint import (
    Checkpoints,
    epochs_of,
    latest_step,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    verify,
)
from jaxreg.config import LOCAL_FIELDS, SweepConfig, SweepError  # noqa: F401  (SweepConfig: also importable from here)
from jaxreg.data import DataError, Dataset, load_imdb, synthetic_dataset
from jaxreg.history import has_test, metric_names, stack, write_history
from jaxreg.live import LiveLog
from jaxreg.runfolder import CHECKPOINT_DIR, folder_state  # noqa: F401
from jaxreg.runplan import DoesNotFit, RunPlan, data_shape, in_waves, plan_run, resplit
from jaxreg.runs import load_run
from jaxreg.specs import training_descriptions
from jaxreg.summaries import (
    early_stopping_notes,
    early_stopping_table,
    summarize,
    summary_notes,
    summary_table,
    write_summary,
)
from jaxreg.vocabulary import VOCABULARY_FILE, save_vocabulary

SYNTHETIC = dict(n_train=2000, n_validation=1000, num_words=1000)
# Seconds between checkpoints: a CPU book run (~1 min of training) saves at the end only, a long GPU run
# every 2 minutes, losing at most that much to a killed process (an interrupt saves first).
DEFAULT_CHECKPOINT_SECONDS = 120


class SweepInterrupted(SweepError):
    """Ctrl-C (KeyboardInterrupt) once the run folder was written; it holds a checkpoint after `epochs_done` epochs."""

    def __init__(self, folder: Path, epochs_done: int, epochs: int):
        self.folder, self.epochs_done, self.epochs = folder, epochs_done, epochs
        if epochs_done:
            message = f"interrupted after epoch {epochs_done}/{epochs}; checkpoint: {folder / CHECKPOINT_DIR}"
        else:
            message = f"interrupted during the first epoch; no checkpoint yet in {folder} (resuming starts at epoch 1)"
        super().__init__(message)


class WriteFailed(SweepError):
    """Writing a run file failed (a full disk, a quota, an I/O error) once the run folder was written; the folder is
    left "interrupted" with the reason, where status.json could still be written, and continues with --resume."""


class ProcessLost(SweepError):
    """A run of many processes lost one: a collective failed (see jaxreg.distributed); the folder is resumable."""


@dataclasses.dataclass
class SweepResult:
    """What run_sweep returns: the folder, stacked histories (see jaxreg.history), summaries, divergences."""

    folder: Path
    histories: dict
    summaries: list
    diverged: list  # [(name, seed, first epoch from 1)]
    figures: list
    resumed_from: int = 0


# --- validation before anything is written ---------------------------------------------


TFDS = "tfds"  # the data path that means tensorflow-datasets' imdb_reviews (load_imdb(source="tfds"))


def load_dataset(config: SweepConfig, progress: bool = False) -> Dataset:
    """The config's data (synthetic or IMDB); SweepError with the fix if it cannot be loaded.

    The data path "tfds" (--data tfds, or JAXREG_DATA=tfds) loads tensorflow-datasets'
    imdb_reviews; a file named tfds in the current folder is ./tfds.

    progress: a line and a progress bar on stderr while the IMDB reviews are read (first time only)."""
    if config.synthetic:
        return synthetic_dataset(**SYNTHETIC)
    path = data_path(config)
    source = {"path": None, "source": "tfds"} if path == TFDS else {"path": path}
    try:
        return load_imdb(**source, validation=config.validation, holdout_size=config.holdout_size, progress=progress)
    except DataError as e:
        raise SweepError(str(e)) from e


def data_path(config: SweepConfig) -> str | None:
    """The data path a run reads (--data, else JAXREG_DATA; None for synthetic data); SweepError when none is given."""
    if config.synthetic:
        return None
    path = config.data or os.environ.get("JAXREG_DATA")
    if not path:
        raise SweepError(
            "no data: pass --data PATH (the aclImdb .tar.gz archive or extracted folder), "
            "--data tfds (tensorflow-datasets' copy), set JAXREG_DATA, or use --synthetic for offline demo data"
        )
    return path


def placement(config: SweepConfig, platform: str | None = None) -> str:
    """The config's placement with "auto" resolved: spread on CPU when no device count is given (in one
    process), else shard (many processes shard the variants over all of their devices)."""
    if config.placement != "auto":
        return config.placement
    platform = platform or jax.devices()[0].platform
    return "spread" if config.devices is None and platform == "cpu" and not distributed.many() else "shard"


def most_devices(config: SweepConfig, plan: list) -> int:
    """The most devices the run can use: one per program when spread, else the configs of the largest bucket."""
    return len(plan) if placement(config) == "spread" else max(len(b.configs) for b in plan)


def check_device_count(config: SweepConfig, plan: list) -> None:
    """Refuse more devices than the run can use: sharded, the extra ones would train padding copies; spread, they would idle."""
    most = most_devices(config, plan)
    if config.devices is not None and config.devices > most:
        if placement(config) == "spread":
            why = f"the {most} program(s) of this run (placement spread: one program per device)"
        else:
            why = f"the {most} variant(s) of the largest program (seeds share a device)"
        raise SweepError(f"devices={config.devices} is more than {why}; pass --devices {most} or fewer")


def select_devices(count: int | None, most: int | None = None) -> list:
    """`count` devices (None: all, but at most `most`, see `most_devices`).

    With many processes: all processes' devices (each must take part), `count` being each process's."""
    devices = jax.devices()
    if distributed.many():
        if count is not None and count != jax.local_device_count():
            raise SweepError(
                f"devices={count}: with many processes every device of every process trains, and --devices is the "
                f"count per process; this process has {jax.local_device_count()} (on CPU, --devices creates them)"
            )
        return devices
    if count is None and most is not None:
        count = min(len(devices), most)
    if count is not None and count > len(devices):
        hint = " (on CPU, --devices sets XLA_FLAGS before jax starts)" if devices[0].platform == "cpu" else ""
        raise SweepError(
            f"devices={count} asked for, but only {len(devices)} {devices[0].platform} device(s) exist{hint}"
        )
    return devices[: count or len(devices)]


# The share of a --memory-limit (less the baseline) that waves may fill: the estimate leaves out orbax's host
# copy of a wave's arrays while a checkpoint is saved and the allocator's slack (a synthetic run under 0.8 GB
# peaked at 0.82 GB with all of it).
LIMIT_SHARE = 0.9


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """What each wave of a run must fit in: the devices' free memory (`memory.available_bytes`; 0: unknown),
    and a user's --memory-limit, a limit on the whole process, less what it already holds (`baseline`: Python,
    jax and the data, measured as it plans). `total`: the bytes a wave's estimate may reach (0: no limit)."""

    available: int
    where: str
    limit: int | None = None
    baseline: int = 0

    @property
    def total(self) -> int:
        if self.limit is None:
            return self.available
        room = max(int((self.limit - self.baseline) * LIMIT_SHARE), 1)
        return min(room, self.available) if self.available else room

    def limited_by_user(self) -> bool:
        return self.limit is not None and (not self.available or self.limit - self.baseline <= self.available)

    def describe(self) -> str:
        """What the waves fit, for the plan line: "--memory-limit 4.0 GB" or "the 24.7 GB of host RAM free"."""
        if self.limited_by_user():
            return f"--memory-limit {memory.gigabytes(self.limit)}"
        return f"the {memory.gigabytes(self.available)} of {self.where} free"

    def held(self) -> str:
        """What of a --memory-limit is left for the run: " of the 3.4 GB left after the 0.2 GB this process holds"."""
        if not self.limited_by_user():
            return ""
        return f" of the {memory.gigabytes(self.total)} left after the {memory.gigabytes(self.baseline)} this process holds (90%)"

    def room(self) -> str:
        """Where the bytes run out, for a refusal: "host RAM has 1.0 GB free" or the limit less the baseline."""
        if self.limited_by_user():
            return (
                f"--memory-limit {memory.gigabytes(self.limit)} leaves {memory.gigabytes(self.total)} after the "
                f"{memory.gigabytes(self.baseline)} this process already holds (jax, the data)"
            )
        return f"{self.where} has {memory.gigabytes(self.available)} free"


def fit_memory(config: SweepConfig, run_plan: RunPlan, dataset: Dataset, budget: MemoryBudget) -> RunPlan:
    """The plan, split into waves (`runplan.in_waves`) when its memory estimate exceeds the budget; SweepError
    naming what drives the estimate when even the smallest wave (one model) cannot fit."""
    estimate = run_plan.memory
    if not budget.total or estimate.total <= budget.total:
        return run_plan
    try:
        return in_waves(run_plan, dataset, budget.total)
    except DoesNotFit as e:
        smallest = e
    one = smallest.estimate
    widest = max((b.execution.step for b in run_plan.buckets), key=lambda step: sum(step.widths))
    widest = widest.widths if widest.network is None else widest.network.name
    models = f"{len(config.variants)} variant(s) x {config.seeds} seed(s)"
    fixes = {
        "state": f"the models' parameters and optimizer state (widths up to {widest}, {models}); "
        "lower --seeds or the widths, or pick fewer --variants",
        "batches": f"the training batches (batch_size={config.batch_size}, {config.seeds} seed(s)); "
        "lower --batch-size or --seeds",
        "activations": f"the activations of a batch (batch_size={config.batch_size}, widths up to {widest}, {models}); "
        "lower --batch-size or --seeds",
        "history": f"the per-epoch history (epochs={config.epochs}, {models}); lower --epochs or --seeds",
        "overhead": "the compiled programs' own memory",
        "kept": "the trained parameters kept until the end",
    }
    raise SweepError(
        f"this run needs an estimated {memory.gigabytes(estimate.total)} but {budget.room()}; most of it is "
        f"{fixes[one.driver]}; waves cannot fit it: {smallest.what} alone needs {memory.gigabytes(one.total)}"
    )


def waves_note(run_plan: RunPlan, budget: MemoryBudget | None) -> str:
    """The plan line's memory part: "est. 2.1 GB of 24.7 GB host RAM", or for a run in waves "in 3 waves to fit
    --memory-limit 4.0 GB (est. 3.6 GB each at most of the 3.7 GB left after the 0.3 GB this process holds; 20.1 GB in one)"."""
    peak = memory.gigabytes(run_plan.peak_memory.total)
    if len(run_plan.waves) == 1:
        if budget is None or not budget.total:
            return f"est. {peak}"
        if budget.limited_by_user():
            return f"est. {peak}{budget.held()}, --memory-limit {memory.gigabytes(budget.limit)}"
        return f"est. {peak} of {memory.gigabytes(budget.available)} {budget.where}"
    why = "as the interrupted run was split" if budget is None else f"to fit {budget.describe()}"
    whole = memory.gigabytes(run_plan.memory.total)
    held = "" if budget is None else budget.held()
    return f"in {len(run_plan.waves)} waves {why} (est. {peak} each at most{held}; {whole} in one)"


def plan_table(run_plan: RunPlan, dataset: Dataset) -> str:
    """Per wave, its estimate by part and each bucket's (or piece's) models, devices and estimate: what --plan prints."""
    data = data_shape(run_plan, dataset)
    lines = []
    for i, wave in enumerate(run_plan.waves):
        e = wave.memory
        parts = ", ".join(
            f"{name} {memory.gigabytes(getattr(e, name))}"
            for name in ("state", "batches", "activations", "overhead", "history", "kept")
            if getattr(e, name)
        )
        lines.append(
            f"wave {i + 1}/{len(run_plan.waves)}: {wave.models} models, est. {memory.gigabytes(e.total)} ({parts})"
        )
        for b in wave.buckets:
            step, bucket = b.execution.step, b.bucket
            model = f"MLP{step.widths}" if step.network is None else step.network.name
            seeds = (
                f"seed {bucket.seeds[0]}" if len(bucket.seeds) == 1 else f"seeds {bucket.seeds[0]}-{bucket.seeds[-1]}"
            )
            alone = memory.bucket_estimate(b.memory_shape(), data).total
            lines.append(
                f"  {model} {bucket.optimizer}: {len(bucket.configs)} variant(s) x {seeds} = {b.models} models "
                f"on {'+'.join(str(d) for d in b.devices)}, est. {memory.gigabytes(alone)} without the history"
            )
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over epochs; postfix: the best mean validation data loss so far and its variant.

    The first epoch of a process includes XLA's compilation, so its rate and time left are
    measured from the epochs after it (the elapsed time still counts from the start).
    """

    def __init__(self, config: SweepConfig, start: int, history: dict, enabled: bool, waves: tuple[int, int] = (0, 1)):
        """waves: (the wave it starts in, from 0; how many): the bar runs over every wave's epochs, "wave 2/3"."""
        self.name, self.epochs, (self.in_wave, self.waves) = config.name, config.epochs, waves
        self.bar = tqdm(
            total=config.epochs * self.waves,
            initial=self.in_wave * config.epochs + start,
            desc=self._desc(),
            unit="epoch",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self.best = (math.inf, "", 0)
        self.threshold = config.divergence_threshold
        self.announced: set = set()
        self.compiling = True
        for e in range(max((len(h["loss"]) for h in history.values()), default=0)):  # in waves: each its own
            self._record(e, {k: {m: v[e] for m, v in h.items()} for k, h in history.items() if len(h["loss"]) > e})
        self._postfix()

    def _desc(self) -> str:
        return self.name if self.waves == 1 else f"{self.name} wave {self.in_wave + 1}/{self.waves}"

    def wave(self, index: int, count: int) -> None:
        """variants.run's on_wave: a wave starts (one that stopped early leaves its unused epochs behind)."""
        if index != self.in_wave:
            self.in_wave = index
            self.bar.n = self.bar.last_print_n = index * self.epochs
            self.bar.set_description(self._desc())

    def _update_best(self, epoch: int, row: dict) -> None:
        """The summary's best (`selection`): a variant's mean over seeds counts while none of its seeds has diverged."""
        per_name: dict[str, list] = {}
        for (name, seed), metrics in row.items():
            per_name.setdefault(name, []).append(
                math.nan if (name, seed) in self.announced else metrics[selection.CHOICE]
            )
        for name, values in per_name.items():
            mean = float(np.mean(values))
            if math.isfinite(mean) and selection.is_improvement(mean, self.best[0]):
                self.best = (mean, name, epoch + 1)

    def _postfix(self) -> None:
        if self.best[1]:
            self.bar.set_postfix_str(f"best val data loss {self.best[0]:.4f} ({self.best[1]}, epoch {self.best[2]})")

    def _record(self, epoch: int, row: dict) -> None:
        """Announce new divergences, track the best loss."""
        for key, metrics in row.items():
            if key not in self.announced and selection.blown_up(metrics, self.threshold):
                self.announced.add(key)
                message = f"epoch {epoch + 1}: {key[0]} (seed {key[1]}) diverged (loss {metrics['loss']})"
                self.bar.write(message, file=sys.stderr)
        self._update_best(epoch, row)

    def epoch_done(self, epoch: int, row: dict) -> None:
        self._record(epoch, row)
        self._postfix()
        if self.compiling:  # counted, but left out of the rate, as if the bar had started after it
            self.compiling = False
            self.bar.n += 1
            self.bar.initial = self.bar.last_print_n = self.bar.n
            self.bar.last_print_t = time.time()  # tqdm's clock
            self.bar.refresh()
        else:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _environment(config: SweepConfig, dataset: Dataset, devices: list, run_plan: RunPlan) -> dict:
    """config.json's content: the config, the variants, the run plan (`RunPlan.describe`), the data,
    devices, machine and versions."""
    return {
        "config": config.to_dict(),
        "variants": [v.to_dict() for v in config.variants],
        "seeds": list(range(config.seeds)),
        "axis": {"name": config.axis, "values": config.axis_values(), "series": config.axis_series()}
        if config.axis
        else None,
        "plan": run_plan.describe(),
        "waves": run_plan.describe_waves(),  # None: one wave; a resumed run keeps these (`runplan.resplit`)
        "validation_protocol": dataset.protocol,
        "data": {
            "source": dataset.source,
            "checksum": dataset.checksum,
            "describe": dataset.describe(),
            "num_words": dataset.num_words,
            "train_size": len(dataset.train),
            "validation_size": len(dataset.validation),
            **({} if dataset.test is None else {"test_size": len(dataset.test)}),
        },
        "devices": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
            "processes": jax.process_count(),
            "placement": run_plan.placement,
        },
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


def _where(run_plan: RunPlan, devices: list) -> str:
    """For the plan line: which device runs which bucket, when not every bucket runs on all devices."""
    if len(devices) == 1 or all(len(b.devices) == len(devices) for b in run_plan.buckets):
        return ""

    def name(planned):
        step = planned.execution.step
        model = "x".join(map(str, step.widths)) if step.network is None else step.network.name
        return f"{model} [{len(planned.bucket.configs)}]"

    return "; " + ", ".join(f"{name(b)} on {'+'.join(str(d) for d in b.devices)}" for b in run_plan.buckets)


def _finish(
    folder: Path,
    config: SweepConfig,
    history,
    figures: bool,
    seconds: float,
    resumed_from: int,
    stream,
    compile_seconds=None,
    epochs_run: int | None = None,
) -> SweepResult:
    """Write the results of a finished run; epochs_run: epochs trained (fewer than config.epochs after early stopping)."""
    epochs_run = config.epochs if epochs_run is None else epochs_run
    histories = stack(history, [v.name for v in config.variants], config.divergence_threshold)
    training = training_descriptions(config.variants)
    summaries = summarize(histories, training=training)
    runfolder.record(folder, fileio.HISTORY_JSONL, fileio.HISTORY_CSV, fileio.SUMMARY_MD, fileio.SUMMARY_CSV)
    write_history(folder, histories)
    stopped_early = f" (early stopping: {epochs_run} of {config.epochs})" if epochs_run < config.epochs else ""
    title = f"{config.name}: {epochs_run} epochs{stopped_early} x {config.seeds} seed(s)"
    write_summary(folder, summaries, title=title, divergence_threshold=config.divergence_threshold, histories=histories)
    paths = []
    if figures:
        from jaxreg import plots, run_figures  # matplotlib is only needed here

        axis = (config.axis, config.axis_values(), config.axis_series()) if config.axis else None
        grid = run_figures.run_grid([v.to_dict() for v in config.variants], list(histories), training)
        names = run_figures.figure_files(list(histories), axis and axis[0], plots.tested(histories), grid)
        runfolder.record(folder, *(f"{fileio.FIGURES_DIR}/{name}" for name in names))
        paths = run_figures.make_figures(
            histories, folder / fileio.FIGURES_DIR, axis, training, grid, f"{config.name}, {epochs_run} epochs"
        )
    diverged = [(s.name, seed, epoch) for s in summaries for seed, epoch in s.diverged]
    fileio.write_json(
        folder / fileio.STATUS_FILE,
        {
            "state": "finished",
            "epochs_done": epochs_run,
            "epochs": config.epochs,
            "seconds": round(seconds, 3),
            "compile_seconds": None if compile_seconds is None else round(compile_seconds, 3),
            "resumed_from_epoch": resumed_from,
            "diverged": [{"variant": n, "seed": s, "epoch": e} for n, s, e in diverged],
        },
    )
    print_summary(summaries, folder, paths, stream, config.divergence_threshold)
    return SweepResult(folder, histories, summaries, diverged, paths, resumed_from)


def print_summary(
    summaries,
    folder: Path,
    figures: list,
    stream=sys.stdout,
    divergence_threshold: float = selection.DIVERGENCE_THRESHOLD,
) -> None:
    print("\n" + summary_table(summaries), file=stream)
    print(summary_notes(divergence_threshold=divergence_threshold), file=stream)
    tested = early_stopping_table(summaries)
    if tested:
        print("\n" + tested + "\n" + early_stopping_notes(), file=stream)
    written = [fileio.CONFIG_FILE, fileio.HISTORY_JSONL, fileio.HISTORY_CSV, fileio.SUMMARY_MD, fileio.SUMMARY_CSV]
    written += [str(p.relative_to(folder)) for p in figures]
    written += [VOCABULARY_FILE] if (folder / VOCABULARY_FILE).is_file() else []
    written += [f"{d}/" for d in ("params", "tensorboard") if (folder / d).is_dir()]  # per variant and seed
    print(f"Wrote {folder}: {', '.join(written)}", file=stream)


def _reload_finished(folder: Path, stream) -> SweepResult:
    run = load_run(folder)
    summaries = summarize(run.histories, training=training_descriptions(run.config.get("variants", [])))
    diverged = [(s.name, seed, epoch) for s in summaries for seed, epoch in s.diverged]
    figures = sorted((folder / fileio.FIGURES_DIR).glob("*.png"))
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
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
    stream=sys.stdout,
    tensorboard: bool = True,
    keep_checkpoint: bool = False,
    memory_limit: int | None = None,
) -> SweepResult:
    """Train the sweep into the folder `out` (see the module docstring); SweepError for bad input. Beyond
    the free memory or `memory_limit` (bytes, of the whole process) it trains in waves (`fit_memory`).
    Raises SweepInterrupted on Ctrl-C after saving where to resume. Prints the data
    description, the plan and at the end the summary table to `stream`; the progress bar
    goes to stderr. SweepError at once if another process is writing the folder.
    history.jsonl/.csv and (unless `tensorboard=False`) TensorBoard events grow every epoch. The
    resume checkpoint is saved when `checkpoint_seconds` have passed since the last one (0: after every
    epoch), at the end and when interrupted; it is deleted once the run has finished, unless `keep_checkpoint`.

    In a run of many processes (`jaxreg.distributed`) every process calls run_sweep with the
    same arguments: process 0 alone checks and locks the folder, writes into it and prints;
    the others train their share, write only their shards of the checkpoint and their variants'
    params/ files (into process 0's folder: a file system all processes see) and return the same histories. Before any
    training all processes agree that each could start and read the same data (else each
    raises SweepError); a process lost later raises ProcessLost in the others.
    """
    _check_seconds(checkpoint_seconds)
    folder = Path(out)
    agreement = Agreement(config, checkpoint_seconds)
    try:
        if not distributed.is_writer():
            return _run_locked(
                config,
                folder,
                resume,
                overwrite,
                False,
                False,
                checkpoint_seconds,
                io.StringIO(),
                False,
                keep_checkpoint,
                agreement,
                memory_limit,
            )
        data_path(config)  # before the lock: a run refused for no data leaves nothing behind
        if isinstance(out, str) and not out:  # Path("") would be the current folder
            raise SweepError("the output folder is an empty name: pass a folder with --out")
        runfolder.check_writable(folder)
        try:
            with runfolder.exclusive(folder):
                return _run_locked(
                    config,
                    folder,
                    resume,
                    overwrite,
                    figures,
                    progress,
                    checkpoint_seconds,
                    stream,
                    tensorboard,
                    keep_checkpoint,
                    agreement,
                    memory_limit,
                )
        except runfolder.LockError as e:
            if e.in_use:
                raise SweepError(
                    f"{folder} is in use by another jaxreg run (lock {e.path}); wait for it to end or choose another --out"
                ) from None
            raise SweepError(
                f"cannot lock the output folder {folder} ({e.path}): {e.reason}; choose another --out"
            ) from None
    except BaseException:
        agreement.refuse()  # the other processes must not wait for this one
        raise


def _check_seconds(checkpoint_seconds) -> None:
    """SweepError unless checkpoint_seconds is a finite number >= 0."""
    if isinstance(checkpoint_seconds, bool) or not isinstance(checkpoint_seconds, (int, float)):
        raise SweepError(f"checkpoint_seconds={checkpoint_seconds!r} must be a number of seconds >= 0")
    if not 0 <= checkpoint_seconds < math.inf:
        raise SweepError(f"checkpoint_seconds={checkpoint_seconds!r} must be a number of seconds >= 0")


def plan_sweep(config: SweepConfig, memory_limit: int | None = None, stream=sys.stdout) -> RunPlan:
    """What run_sweep would train, without training or writing anything (--plan): loads the data (its shape
    decides the estimate), plans the run and its waves, prints the plan line and per wave and bucket the
    memory estimate; returns the RunPlan. SweepError as run_sweep's for bad input or a run that cannot fit."""
    data_path(config)
    prepared = _prepare(config, False, memory_limit)
    print(prepared.dataset.describe(), file=stream)
    print(plan_line(config, prepared), file=stream)
    print(plan_table(prepared.plan, prepared.dataset), file=stream)
    print("(--plan: nothing was compiled, trained or written)", file=stream, flush=True)
    return prepared.plan


def _wait_quietly(writer: Checkpoints) -> None:
    """Let a checkpoint being saved finish; a failed save only leaves the previous checkpoint."""
    try:
        writer.wait()
    except Exception:  # noqa: BLE001
        pass


def _remove_checkpoint(folder: Path, stream) -> None:
    """Delete a finished run's checkpoint, then drop it from the manifest (a finished run needs none to be read or resumed).

    The run has succeeded by then, so a failure is a note, not an error.
    """
    try:
        remove_checkpoint(folder)
        runfolder.unrecord(folder, CHECKPOINT_DIR)
    except OSError as e:
        print(
            f"note: cannot delete the checkpoint {folder / CHECKPOINT_DIR} ({e.strerror or e}); delete it yourself",
            file=stream,
        )


def _run_locked(
    config,
    folder: Path,
    resume,
    overwrite,
    figures,
    progress,
    checkpoint_seconds,
    stream,
    tensorboard=True,
    keep_checkpoint=False,
    agreement: Agreement | None = None,
    memory_limit: int | None = None,
) -> SweepResult:
    """run_sweep's work, while process 0 holds the folder's lock (the others write only their shards):
    agree on the folder, plan the run once, check a resume, prepare the folder, train and finish."""
    agreement = agreement or Agreement()
    writes = distributed.is_writer()
    # the device count may change on resume (`_check_devices` says when)
    ignored = (*LOCAL_FIELDS, "devices")
    state = runfolder.check_folder(folder, config.to_dict(), resume, overwrite, ignored) if writes else None
    reload = writes and state == "finished" and resume
    records = agreement(True, finished=reload)  # stage "folder": before anything heavy
    if reload:
        return _reload_finished(folder, stream)
    if records[0][1]:  # process 0 reloads a finished run: nothing to train
        return SweepResult(folder, {}, [], [], [], 0)
    Agreement.check(records, data=False)
    prepared = _prepare(config, progress, memory_limit)
    resuming = writes and state == "unfinished" and resume
    step = _resumable_checkpoint(folder, prepared, stream) if resuming else None
    Agreement.check(agreement(True, data_checksum=prepared.dataset.checksum))  # stage "start"
    _agree_waves(folder, prepared, resuming, stream)
    snapshot, shared = _load_snapshot(folder, prepared, step, stream)
    if writes:
        _prepare_folder(folder, state, resume, overwrite, prepared.environment)
    outputs = _Outputs(figures, progress, checkpoint_seconds, stream, tensorboard, keep_checkpoint, shared)
    return _train(config, folder, prepared, snapshot, outputs)


@dataclasses.dataclass
class _Prepared:
    """What a run decides before it writes anything: its variants, data, devices and plan (built once,
    read by training, config.json, the memory check and the checkpoint restore), and config.json's content."""

    variants: list
    dataset: Dataset
    devices: list
    plan: RunPlan
    budget: MemoryBudget | None  # None: the waves of the interrupted run it resumes
    environment: dict


def _prepare(config: SweepConfig, progress: bool, memory_limit: int | None = None) -> _Prepared:
    """Plan the run: group the variants into buckets, check the device count, load the data, pick the
    devices, make the RunPlan (with its memory estimate) and split it into waves that fit the free memory
    and `memory_limit` (`fit_memory`)."""
    variants = config.variant_specs()
    buckets = V.plan(variants)
    check_device_count(config, buckets)
    dataset = load_dataset(config, progress)
    devices = select_devices(config.devices, most_devices(config, buckets))
    where_to = placement(config, devices[0].platform)
    run_plan = plan_run(buckets, dataset, config.run_settings(), devices, where_to, estimate_memory=True)
    budget = MemoryBudget(*_available_memory(devices), memory_limit, memory.process_rss() if memory_limit else 0)
    run_plan = fit_memory(config, run_plan, dataset, budget)
    environment = _environment(config, dataset, devices, run_plan)
    return _Prepared(variants, dataset, devices, run_plan, budget, environment)


def _resumable_checkpoint(folder: Path, prepared: _Prepared, stream) -> int | None:
    """Process 0, resuming an unfinished run: SweepError unless the data and the placement are the saved run's
    and its checkpoint is intact; the checkpoint's step (epochs done; None without one). Notes another
    instruction set."""
    saved = fileio.read_json(folder / fileio.CONFIG_FILE)
    dataset = prepared.dataset
    checksum = saved.get("data", {}).get("checksum")
    if checksum != dataset.checksum:
        raise SweepError(
            f"cannot resume {folder}: the data differs from the saved run's (checksum "
            f"{str(checksum)[:16]}..., now {dataset.checksum[:16]}...)"
        )
    _check_devices(folder, saved, prepared)
    step = latest_step(folder)
    if step is not None:
        verify(folder / CHECKPOINT_DIR / str(step))
    started_on = saved.get("machine", {}).get("instruction_set")
    if prepared.devices[0].platform == "cpu" and started_on != machine.instruction_set():
        print(
            f"note: {folder} was started with XLA:CPU on {started_on}, now {machine.instruction_set()}: "
            "the resumed epochs differ from an uninterrupted run by float32 round-off (amplified by training), not bit for bit",
            file=stream,
        )
    return step


def _check_devices(folder: Path, saved: dict, prepared: _Prepared) -> None:
    """SweepError unless the resumed run compiles the saved run's programs: the same device count and placement,
    or, with any count, every program on one device before and now (each bucket's program is then the
    same one-device program wherever it runs; a sharded bucket's program changes with its device count)."""
    devices = prepared.devices
    count = saved.get("devices", {}).get("count")
    one_each = all(len(b.get("devices", ())) == 1 for b in saved.get("plan", [])) and all(
        len(b.devices) == 1 for b in prepared.plan.buckets
    )
    if count != len(devices) and not one_each:
        raise SweepError(
            f"cannot resume {folder}: it ran with programs sharded over {count} device(s), now {len(devices)}; "
            f"pass --devices {count}"
        )
    was = saved.get("devices", {}).get("placement", "shard")  # before placements, runs were sharded
    if len(devices) > 1 and count == len(devices) and was != prepared.plan.placement:  # on one device both are the same
        raise SweepError(
            f"cannot resume {folder}: its programs were placed {was!r}, now {prepared.plan.placement!r}; pass --placement {was}"
        )


def _agree_waves(folder: Path, prepared: _Prepared, resuming: bool, stream) -> None:
    """The waves the run trains in: a resumed run's own (config.json's "waves"; its checkpoint holds one of
    them), else this plan's; with many processes, process 0's for all (each planned with its own free memory)."""
    described = prepared.plan.describe_waves()
    if resuming:
        described = fileio.read_json(folder / fileio.CONFIG_FILE).get("waves")
    if distributed.many():  # a collective: every process takes part
        text = distributed.broadcast_bytes(json.dumps(described).encode() if distributed.is_writer() else None)
        described = json.loads(text)
    if described == prepared.plan.describe_waves():
        return
    try:
        prepared.plan = resplit(prepared.plan, prepared.dataset, described)
    except V.VariantError as e:
        raise SweepError(f"cannot resume {folder}: {e}; use --overwrite to start again") from None
    prepared.budget = None  # the waves are the interrupted run's (or process 0's), not this budget's
    if resuming:
        print(f"note: {folder} keeps the {len(prepared.plan.waves)} wave(s) it was started in", file=stream)


def _load_snapshot(folder: Path, prepared: _Prepared, step: int | None, stream):
    """(the RunSnapshot to resume from, None to start at epoch 1; the folder every process saves checkpoints in),
    restored into the run plan's shardings: each process reads its own shards of process 0's folder (a shared
    file system). A run started without test columns goes on without them."""
    if distributed.many():
        sent = (
            json.dumps({"folder": os.path.abspath(folder), "step": step}).encode() if distributed.is_writer() else None
        )
        shared = json.loads(distributed.broadcast_bytes(sent))
        note = training_note(folder)  # a collective: every process takes part
        if not distributed.is_writer():
            print(note, file=sys.stderr, flush=True)
        folder, step = Path(shared["folder"]), shared["step"]
    if step is None:
        return None, folder
    snapshot = load_checkpoint(folder, prepared.plan, step, check=False)  # process 0 has verified it
    saved_columns = next(iter(snapshot.history.values()), {})
    if prepared.dataset.test is not None and not has_test(saved_columns):
        # a run started before test splits were evaluated: it goes on as it began, without test columns
        prepared.dataset = dataclasses.replace(prepared.dataset, test=None)
        print(f"note: {folder} was started without test columns; it is resumed without them", file=stream)
    return snapshot, folder


def _prepare_folder(folder: Path, state: str, resume: bool, overwrite: bool, environment: dict) -> None:
    """Process 0: clear an overwritten run's files (or a killed write's temporaries), write config.json for a new run."""
    try:
        if state in ("unfinished", "finished") and overwrite:
            (folder / fileio.STATUS_FILE).unlink(missing_ok=True)  # interrupted now: an unfinished run folder
            runfolder.remove_recorded(folder)  # only jaxreg's files (the manifest last); the user's stay
        elif state == "unfinished":
            runfolder.remove_temporaries(folder)  # left by a process killed while writing
        folder.mkdir(parents=True, exist_ok=True)
        if not (resume and state == "unfinished"):
            runfolder.record(folder, fileio.CONFIG_FILE, fileio.STATUS_FILE, CHECKPOINT_DIR)
            fileio.write_json(folder / fileio.CONFIG_FILE, environment)
    except OSError as e:
        raise SweepError(f"cannot write the output folder {folder}: {e.strerror or e}") from e


@dataclasses.dataclass(frozen=True)
class _Outputs:
    """run_sweep's options for what a run shows and leaves behind."""

    figures: bool
    progress: bool
    checkpoint_seconds: float
    stream: object
    tensorboard: bool
    keep_checkpoint: bool
    shared: Path | None = None  # the folder every process saves checkpoints in (process 0's); None: the run's


class _EpochWriter:
    """What follows each epoch: history lines and TensorBoard events (`live`), a checkpoint once
    `checkpoint_seconds` have passed since the last one (saved asynchronously while the next epoch
    trains), status.json, the progress bar; and the folder's state when the run stops early. Process 0
    writes the folder's files; every process saves its shards of a checkpoint (collectives).
    """

    def __init__(self, config: SweepConfig, folder: Path, outputs: _Outputs, start: int):
        self.config, self.folder, self.seconds = config, folder, outputs.checkpoint_seconds
        self.writes = distributed.is_writer()
        self.done = start  # epochs the folder's checkpoint holds, as far as this process knows
        self.bar: _Progress | None = None
        self.live: LiveLog | None = None
        self.latest = None  # the RunSnapshot of the last finished epoch (its arrays, not copies)
        self.last_save = time.monotonic()
        self.checkpoints = Checkpoints(outputs.shared or folder, then=self._saved)

    def _saved(self, epochs_done: int) -> None:
        self.done = epochs_done
        self.write_status("running", epochs_done)

    def write_status(self, name: str, epochs_done: int, reason: str | None = None) -> None:
        if self.writes:
            status = {"state": name, "epochs_done": epochs_done, "epochs": self.config.epochs}
            fileio.write_json(self.folder / fileio.STATUS_FILE, status | ({"reason": reason} if reason else {}))

    def on_epoch(self, epoch: int, row: dict, take_snapshot) -> None:
        """variants.run's on_epoch."""
        if self.writes:
            self.live.epoch(epoch, row)  # history lines and TensorBoard events, flushed
        self.latest = take_snapshot()  # references to the epoch's arrays: cheap
        self.checkpoints.poll()
        due = self.seconds == 0 or time.monotonic() - self.last_save >= self.seconds
        # With many processes a save waits for the previous one, whose barriers wait for every process: not
        # while it is still written, so that a lost process is found by the next collective, not by a barrier.
        due = due and not (distributed.many() and self.checkpoints.saving())
        if distributed.agreed(due):  # process 0's clock decides for all: a save is a collective
            self.save_latest()
        self.bar.epoch_done(epoch, row)

    def save_latest(self) -> None:
        """Start saving the last finished epoch's snapshot, unless the checkpoint holds it already."""
        if self.latest is not None:
            self.last_save = time.monotonic()
            save_checkpoint(self.checkpoints, self.latest)  # looked up when called: tests replace it

    def save_before_stopping(self) -> None:
        """On Ctrl-C, SIGTERM or a failed write of a run file: save the last finished epoch, so that --resume
        loses none (where it can: a full disk fails this save too). One process only: with many, the others
        are not at the same point to take part, and the last saved checkpoint stands."""
        if distributed.many():
            return
        try:
            self.checkpoints.wait()
            if self.latest is not None:
                self.checkpoints.save(self.latest)
        except Exception:  # noqa: BLE001  (the previous checkpoint stands)
            pass

    def checkpointed(self) -> int:
        """Epochs the folder's checkpoint holds, once the saves have finished."""
        _wait_quietly(self.checkpoints)
        self.done = self.checkpoints.written if self.checkpoints.written is not None else self.done
        return self.done

    def stopped(self, reason: str | None = None) -> int:
        """The run stopped before its end: close the bar, mark the folder "interrupted" (unless
        finished), with `reason` if given; returns the epochs checkpointed."""
        if self.bar is not None:
            self.bar.close()
        if self.writes:  # a save completed on disk (renamed into place) though not yet waited for
            latest = latest_step(self.folder)  # in a run in waves a step is wave x WAVE_STEPS + epochs
            self.done = self.done if latest is None else epochs_of(latest)
        if self.writes and folder_state(self.folder) != "finished":
            self.write_status("interrupted", self.done, reason)
        return self.done

    def write_failed(self, error: OSError) -> WriteFailed:
        """The run stopped because writing `error.filename` failed: the folder "interrupted" with the reason, if
        status.json can still be written (a full disk often still takes its few bytes, since a failed
        write's temporary file is removed); the one-line error to raise."""
        what = f"{error.filename}" if error.filename else "a file of the run folder"
        reason = f"cannot write {what}: {error.strerror or error}"
        self.save_before_stopping()
        self.checkpointed()
        try:
            done = self.stopped(reason)
            recorded = 'status.json says "interrupted"'
        except OSError as again:
            done, recorded = self.done, f"status.json could not be updated either ({again.strerror or again})"
        kept = f"the checkpoint holds epoch {done}" if done else "no checkpoint yet"
        return WriteFailed(
            f"{reason}; the run stopped ({kept}; {recorded}); free space or fix the folder, then --resume"
        )


def _train(config: SweepConfig, folder: Path, prepared: _Prepared, snapshot, outputs: _Outputs) -> SweepResult:
    """Train the planned run from `snapshot` (None: from the start), then write its results.

    From here on the folder is this run's: an interrupt at any moment, compiling, training or
    writing the results, leaves it "interrupted" (unless already "finished") and resumable."""
    writer = _EpochWriter(config, folder, outputs, snapshot.epochs_done if snapshot else 0)
    lost = False
    try:
        return _train_and_finish(config, folder, prepared, snapshot, outputs, writer)
    except KeyboardInterrupt:
        writer.save_before_stopping()
        writer.checkpointed()  # the checkpoint being saved completes; `done` then names it
        raise SweepInterrupted(folder, writer.stopped(), config.epochs) from None
    except Exception as e:
        if _write_error(e):
            raise writer.write_failed(e) from e
        if not distributed.many():
            writer.checkpointed()  # no checkpoint is left half-handled by a thread that outlives the run
            raise
        lost = True  # a save in flight waits for every process: not waited for (the last complete one stands)
        done = writer.stopped()
        if not distributed.lost_peer(e):
            raise
        resumable = f"; {folder} holds a checkpoint after epoch {done} (--resume)" if done else ""
        raise ProcessLost(
            f"process {jax.process_index()}: exchanging arrays with the other processes failed, most likely another "
            f"process stopped (see its output): {str(e).splitlines()[0] if str(e) else type(e).__name__}{resumable}"
        ) from None
    except BaseException:
        _wait_quietly(writer.checkpoints)
        raise
    finally:
        writer.checkpoints.close(wait=not lost)


# What a failed write of a run file raises (training reads no file): a full disk or quota, a read-only or failing disk.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM)


def _write_error(error: BaseException) -> bool:
    """Whether `error` is an OSError of writing a file (not, e.g., a connection reset by a lost process)."""
    return isinstance(error, OSError) and (error.filename is not None or error.errno in _WRITE_ERRNOS)


def _announce(
    config: SweepConfig, folder: Path, prepared: _Prepared, start: int, stream, resumed_wave: int = 0
) -> None:
    """Print the data's description and the plan line."""
    print(prepared.dataset.describe(), file=stream)
    print(
        plan_line(config, prepared)
        + f"; output: {folder}"
        + (f"; resuming after epoch {start}" if start else "")
        + (f" of wave {resumed_wave + 1}" if resumed_wave else ""),
        file=stream,
        flush=True,
    )


def plan_line(config: SweepConfig, prepared: _Prepared) -> str:
    """The plan: models, epochs, programs, devices and the memory estimate (`waves_note`)."""
    devices, run_plan = prepared.devices, prepared.plan
    return (
        f"{config.name}: {len(config.variants)} variant(s) x {config.seeds} seed(s) = {len(prepared.variants)} models, "
        f"{config.epochs} epochs, batch {config.batch_size}, in {len(run_plan.buckets)} program(s) on "
        f"{len(devices)} {devices[0].platform} device(s) ({devices[0].device_kind}{_where(run_plan, devices)})"
        + (f" of {jax.process_count()} processes" if distributed.many() else "")
        + f", {waves_note(run_plan, prepared.budget)}"
    )


def _wave_started(run_plan: RunPlan, index: int, writer: _EpochWriter, stream) -> None:
    """variants.run's on_wave: the previous wave's last epoch saved and let go (its arrays must not outlive it),
    a line for each wave of a run in waves ("wave 2/5: 6 models, est. 2.9 GB"), the bar's name."""
    if writer.latest is not None:
        writer.save_latest()
        writer.checkpoints.wait()
        writer.latest = None
    writer.bar.wave(index, len(run_plan.waves))
    if len(run_plan.waves) > 1:
        wave = run_plan.waves[index]
        estimate = f", est. {memory.gigabytes(wave.memory.total)}" if wave.memory is not None else ""
        print(f"wave {index + 1}/{len(run_plan.waves)}: {wave.models} models{estimate}", file=stream, flush=True)


def _train_and_finish(
    config: SweepConfig, folder: Path, prepared: _Prepared, snapshot, outputs: _Outputs, writer: _EpochWriter
) -> SweepResult:
    """Announce, train every variant (`variants.run` on the plan), then write the results (process 0)."""
    start, stream, dataset = writer.done, outputs.stream, prepared.dataset
    history_so_far, wave = (snapshot.history, snapshot.wave) if snapshot else ({}, 0)
    _announce(config, folder, prepared, start, stream, wave)
    writer.write_status("running", start)
    if writer.writes:
        columns = metric_names("accuracy", test=dataset.test is not None)
        writer.live = LiveLog(folder, config, history_so_far, start, outputs.tensorboard, columns=columns)
    writer.bar = _Progress(config, start, history_so_far, outputs.progress, (wave, len(prepared.plan.waves)))
    # each wave's parameters are written as it ends (every process its own variants), so none are held to the end
    keep = lambda trained: _save_params(outputs.shared or folder, trained, writer.writes)  # noqa: E731
    t0 = time.perf_counter()
    with compiletime.measure() as compiled:
        outcome = V.run(
            prepared.variants,
            dataset,
            config.run_settings(),
            plan=prepared.plan,
            on_epoch=writer.on_epoch,
            resume=snapshot,
            divergence_threshold=config.divergence_threshold,
            on_wave=lambda index, count: _wave_started(prepared.plan, index, writer, stream),
            on_params=keep,
        )
    writer.save_latest()  # the end of training: nothing left to overlap with, so it completes before the results
    writer.checkpoints.wait()
    seconds = time.perf_counter() - t0
    writer.bar.close()
    print(f"{compiled.describe()}; compiling and training took {seconds:.1f} s", file=stream)
    history = outcome.history  # params/ is written (`keep`)
    if not writer.writes:
        histories = stack(history, [v.name for v in config.variants], config.divergence_threshold)
        summaries = summarize(histories, training=training_descriptions(config.variants))
        diverged = [(s.name, seed, epoch) for s in summaries for seed, epoch in s.diverged]
        return SweepResult(folder, histories, summaries, diverged, [], start)
    epochs_run = max(len(h["loss"]) for h in history.values())  # in waves: the longest wave's
    if epochs_run < config.epochs:
        ended = (
            "every variant stopped; the run"
            if len(prepared.plan.waves) == 1
            else "each wave ended as its variants stopped; the last"
        )
        print(
            f"early stopping (patience {config.patience}): {ended} ended after epoch "
            f"{epochs_run} of {config.epochs}; params/ keeps each variant's best epoch",
            file=stream,
        )
    writer.live.finish(epochs_run)
    save_vocabulary(folder, dataset)  # what new text is encoded with (jaxreg.predict); none for array data
    result = _finish(folder, config, history, outputs.figures, seconds, start, stream, compiled.seconds, epochs_run)
    if not outputs.keep_checkpoint:
        _remove_checkpoint(folder, stream)
    return result


def _save_params(folder: Path, params: V.TrainedParamsMap, writes: bool) -> None:
    """params/: every process writes the variants its devices hold (`params.save_params`), after process 0 has
    recorded every file in the manifest; all have written before process 0 goes on (collectives)."""
    if writes:
        saved_params.save_params(folder, {}, params.best_epochs, record=True)
    distributed.agreed(True)
    saved_params.save_params(folder, params, params.best_epochs, record=False)
    distributed.agreed(True)


def _available_memory(devices) -> tuple[int, str]:
    """memory.available_bytes for the run's devices; with many processes, this process's times the devices'
    processes, or, for host RAM, times the machines (processes on one machine share its RAM).

    A process cannot ask another's devices, so the others are assumed to be alike."""
    if not distributed.many():
        return memory.available_bytes(devices)
    available, where = memory.available_bytes(jax.local_devices())
    if where == "host RAM":
        hosts = distributed.hosts()
        return available * hosts, where if hosts == 1 else f"{where} (this machine's x {hosts} machines)"
    return available * jax.process_count(), f"{where} (this process's x {jax.process_count()} processes)"

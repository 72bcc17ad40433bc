"""The whole study in one call: `run_sweep(config, out)`, resumable and checkpointed.

`run_sweep(config, out)` validates everything (config, output folder, data, devices) before
it writes anything, then trains every variant x seed in one `variants.run` and fills the run
folder (the config: `jaxreg.config`; the folder's bookkeeping and checks: `jaxreg.runfolder`;
the checkpoint: `jaxreg.checkpoint`; the other files: `jaxreg.history`, `jaxreg.summaries`):

  manifest.json        every file jaxreg wrote into the folder (see `jaxreg.runfolder`)
  config.json          the resolved config, variant list, plan (with each program's devices), versions,
                       devices (count, placement), data
  status.json          running / interrupted / finished (+ diverged variants, seconds, compile_seconds)
  checkpoint.msgpack   after every epoch: each bucket's TrainState, best-epoch parameters and
                       the history so far, behind a sha256 header line (`runfolder.with_checksum`);
                       deleted (and dropped from the manifest) once the run has finished, unless
                       `keep_checkpoint=True`
  history.jsonl/.csv   appended after every epoch (`jaxreg.live`), rewritten at the end
  tensorboard/         TensorBoard events per variant and seed, after every epoch (`jaxreg.events`)
  params/<variant>/seed_<s>.final.msgpack, .best.msgpack   at the end: the trained parameters
                       at the variant's true widths (`jaxreg.params`, `load_params`)
  summary.md/.csv, figures/*.png   at the end

Checkpoints are written atomically (temporary file, then os.replace) on a background thread
while the next epoch trains (`checkpoint.CheckpointWriter`), so a run killed at any moment
can continue with `resume=True` and ends with exactly the history of an uninterrupted run. A finished folder is never overwritten without `overwrite=True`, which
deletes only the files the manifest lists. One run at a time writes a folder: run_sweep
holds the folder's lock (`runfolder.exclusive`) from checking the folder to its last write.

Across processes and hosts (`jaxreg.distributed`): every process calls run_sweep alike;
process 0 alone checks, locks and writes the folder, the others only train their share.
"""

from __future__ import annotations

import dataclasses
import io
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
from jaxreg import batches as batching
from jaxreg import compiletime, distributed, fileio, machine, memory, runfolder, selection
from jaxreg import params as saved_params
from jaxreg import variants as V
from jaxreg.agreement import Agreement
from jaxreg.checkpoint import CHECKPOINT_FILE, CheckpointWriter, load_checkpoint, read_checkpoint, save_checkpoint
from jaxreg.checks import is_int
from jaxreg.config import LOCAL_FIELDS, SweepConfig, SweepError  # noqa: F401  (SweepConfig: also importable from here)
from jaxreg.live import LiveLog
from jaxreg.data import DataError, Dataset, load_imdb, synthetic_dataset
from jaxreg.history import has_test, metric_names, stack, write_history
from jaxreg.runs import load_run
from jaxreg.summaries import early_stopping_notes, early_stopping_table, summarize, summary_notes, summary_table, write_summary
from jaxreg.runfolder import folder_state  # noqa: F401

SYNTHETIC = dict(n_train=2000, n_validation=1000, num_words=1000)


class SweepInterrupted(SweepError):
    """Ctrl-C (KeyboardInterrupt) once the run folder was written; it holds a checkpoint after `epochs_done` epochs."""

    def __init__(self, folder: Path, epochs_done: int, epochs: int):
        self.folder, self.epochs_done, self.epochs = folder, epochs_done, epochs
        if epochs_done:
            message = f"interrupted after epoch {epochs_done}/{epochs}; checkpoint: {folder / CHECKPOINT_FILE}"
        else:
            message = f"interrupted during the first epoch; no checkpoint yet in {folder} (resuming starts at epoch 1)"
        super().__init__(message)


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
    path = config.data or os.environ.get("JAXREG_DATA")
    if not path:
        raise SweepError(
            "no data: pass --data PATH (the aclImdb .tar.gz archive or extracted folder), "
            "--data tfds (tensorflow-datasets' copy), set JAXREG_DATA, or use --synthetic for offline demo data"
        )
    source = {"path": None, "source": "tfds"} if path == TFDS else {"path": path}
    try:
        return load_imdb(**source, validation=config.validation, holdout_size=config.holdout_size, progress=progress)
    except DataError as e:
        raise SweepError(str(e)) from e


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
        raise SweepError(f"devices={count} asked for, but only {len(devices)} {devices[0].platform} device(s) exist{hint}")
    return devices[: count or len(devices)]


def bucket_devices(config: SweepConfig, plan: list, devices: list, num_words: int) -> list[tuple]:
    """The devices each bucket of the plan runs on (`variants.place_buckets` with the resolved placement)."""
    return V.place_buckets(plan, devices, placement(config, devices[0].platform), num_words)


def memory_estimate(config: SweepConfig, dataset: Dataset, placed: list, plan: list) -> memory.Estimate:
    """jaxreg.memory's estimate for this run's buckets (each on its devices, `bucket_devices`), data and batch capacities."""
    settings = config.run_settings()
    train, val, test = dataset.train, dataset.validation, dataset.test
    capacity = max(
        batching.train_capacity(train.x.lengths, seeds, config.epochs, config.batch_size)
        for seeds in {b.seeds for b in plan}
    )
    data = memory.DataShape(
        num_words=dataset.num_words,
        n_train=len(train),
        n_validation=len(val) + (0 if test is None else len(test)),  # the test batches are evaluated alike
        batch_size=config.batch_size,
        eval_batch_size=settings.eval_batch_size,
        train_capacity=capacity,
        validation_capacity=max(
            batching.capacity(s.x.lengths, [np.arange(len(s))], settings.eval_batch_size)
            for s in (val, test)
            if s is not None
        ),
        index_bytes=2 if max(dataset.num_words, config.batch_size + 1) <= np.iinfo(np.int16).max else 4,
    )
    shapes = []
    for b, devices in zip(plan, placed):
        run = V.execution(b, settings, devices)
        shapes.append(memory.BucketShape(b.widths, len(b.seeds), run.n_configs, run.product, run.sequential, run.cpu_kernels))
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


# --- the run ---------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over epochs; postfix: the best mean validation data loss so far and its variant.

    The first epoch of a process includes XLA's compilation, so its rate and time left are
    measured from the epochs after it (the elapsed time still counts from the start).
    """

    def __init__(self, config: SweepConfig, start: int, history: dict, enabled: bool):
        self.bar = tqdm(
            total=config.epochs, initial=start, desc=config.name, unit="epoch", disable=not enabled, dynamic_ncols=True
        )
        self.best = (math.inf, "", 0)
        self.threshold = config.divergence_threshold
        self.announced: set = set()
        self.compiling = True
        for e in range(start):
            self._record(e, {k: {m: v[e] for m, v in h.items()} for k, h in history.items()})
        self._postfix()

    def _update_best(self, epoch: int, row: dict) -> None:
        """The summary's best (`selection`): a variant's mean over seeds counts while none of its seeds has diverged."""
        per_name: dict[str, list] = {}
        for (name, seed), metrics in row.items():
            per_name.setdefault(name, []).append(math.nan if (name, seed) in self.announced else metrics[selection.CHOICE])
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


def _environment(config: SweepConfig, dataset: Dataset, devices: list, plan: list, placed: list) -> dict:
    return {
        "config": config.to_dict(),
        "variants": [dataclasses.asdict(v) for v in config.variants],
        "seeds": list(range(config.seeds)),
        "axis": {"name": config.axis, "values": config.axis_values(), "series": config.axis_series()} if config.axis else None,
        "plan": [
            {
                "widths": list(b.widths),
                "optimizer": b.optimizer,
                "variants": [c.name for c in b.configs],
                "seeds": list(b.seeds),
                **V.execution(b, config.run_settings(), on).describe(),
                "devices": [str(d) for d in on],
            }
            for b, on in zip(plan, placed)
        ],
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
            "placement": placement(config, devices[0].platform),
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


def _where(plan: list, placed: list, devices: list) -> str:
    """For the plan line: which device runs which program, when not every program runs on all devices."""
    if len(devices) == 1 or all(len(on) == len(devices) for on in placed):
        return ""
    names = lambda b: "x".join(map(str, b.widths)) + f" [{len(b.configs)}]"  # noqa: E731
    return "; " + ", ".join(f"{names(b)} on {'+'.join(str(d) for d in on)}" for b, on in zip(plan, placed))


def _finish(
    folder: Path, config: SweepConfig, history, figures: bool, seconds: float, resumed_from: int, stream, compile_seconds=None,
    epochs_run: int | None = None,
) -> SweepResult:
    """Write the results of a finished run; epochs_run: epochs trained (fewer than config.epochs after early stopping)."""
    epochs_run = config.epochs if epochs_run is None else epochs_run
    histories = stack(history, [v.name for v in config.variants], config.divergence_threshold)
    summaries = summarize(histories)
    runfolder.record(folder, fileio.HISTORY_JSONL, fileio.HISTORY_CSV, fileio.SUMMARY_MD, fileio.SUMMARY_CSV)
    write_history(folder, histories)
    stopped_early = f" (early stopping: {epochs_run} of {config.epochs})" if epochs_run < config.epochs else ""
    title = f"{config.name}: {epochs_run} epochs{stopped_early} x {config.seeds} seed(s)"
    write_summary(folder, summaries, title=title, divergence_threshold=config.divergence_threshold)
    paths = []
    if figures:
        from jaxreg import plots  # matplotlib is only needed here

        axis = (config.axis, config.axis_values(), config.axis_series()) if config.axis else None
        names = plots.figure_files(list(histories), axis[0] if axis else None, tested=plots.tested(histories))
        runfolder.record(folder, *(f"{fileio.FIGURES_DIR}/{name}" for name in names))
        paths = plots.make_figures(histories, folder / fileio.FIGURES_DIR, axis=axis)
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
    summaries, folder: Path, figures: list, stream=sys.stdout, divergence_threshold: float = selection.DIVERGENCE_THRESHOLD
) -> None:
    print("\n" + summary_table(summaries), file=stream)
    print(summary_notes(divergence_threshold=divergence_threshold), file=stream)
    tested = early_stopping_table(summaries)
    if tested:
        print("\n" + tested + "\n" + early_stopping_notes(), file=stream)
    written = [fileio.CONFIG_FILE, fileio.HISTORY_JSONL, fileio.HISTORY_CSV, fileio.SUMMARY_MD, fileio.SUMMARY_CSV]
    written += [str(p.relative_to(folder)) for p in figures]
    written += [f"{d}/" for d in ("params", "tensorboard") if (folder / d).is_dir()]  # per variant and seed
    print(f"Wrote {folder}: {', '.join(written)}", file=stream)


def _reload_finished(folder: Path, stream) -> SweepResult:
    run = load_run(folder)
    summaries = summarize(run.histories)
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
    checkpoint_every: int = 1,
    stream=sys.stdout,
    tensorboard: bool = True,
    keep_checkpoint: bool = False,
) -> SweepResult:
    """Train the sweep into the folder `out` (see the module docstring); SweepError for bad input.

    Raises SweepInterrupted on Ctrl-C after saving where to resume. Prints the data
    description, the plan and at the end the summary table to `stream`; the progress bar
    goes to stderr. SweepError at once if another process is writing the folder.
    history.jsonl/.csv and (unless `tensorboard=False`) TensorBoard events grow every epoch. The
    resume checkpoint is deleted once the run has finished, unless `keep_checkpoint`.

    In a run of many processes (`jaxreg.distributed`) every process calls run_sweep with the
    same arguments: process 0 alone checks and locks the folder, writes into it and prints;
    the others train their share, write nothing and return the same histories. Before any
    training all processes agree that each could start and read the same data (else each
    raises SweepError); a process lost later raises ProcessLost in the others.
    """
    if not is_int(checkpoint_every) or checkpoint_every < 1:
        raise SweepError(f"checkpoint_every={checkpoint_every!r} must be an integer >= 1")
    folder = Path(out)
    agreement = Agreement(config, checkpoint_every)
    try:
        if not distributed.is_writer():
            return _run_locked(
                config, folder, resume, overwrite, False, False, checkpoint_every, io.StringIO(), False, keep_checkpoint,
                agreement,
            )
        runfolder.check_writable(folder)
        try:
            with runfolder.exclusive(folder):
                return _run_locked(
                    config, folder, resume, overwrite, figures, progress, checkpoint_every, stream, tensorboard,
                    keep_checkpoint, agreement,
                )
        except runfolder.LockError as e:
            if e.in_use:
                raise SweepError(
                    f"{folder} is in use by another jaxreg run (lock {e.path}); wait for it to end or choose another --out"
                ) from None
            raise SweepError(f"cannot create the lock file {e.path}: {e.reason}; choose another --out") from e
    except BaseException:
        agreement.refuse()  # the other processes must not wait for this one
        raise


def _wait_quietly(writer: CheckpointWriter) -> None:
    """Let a checkpoint being written finish; a failed write only leaves the previous checkpoint."""
    try:
        writer.wait()
    except Exception:  # noqa: BLE001
        pass


def _remove_checkpoint(folder: Path, stream) -> None:
    """Delete a finished run's checkpoint, then drop it from the manifest (a finished run needs none to be read or resumed).

    The run has succeeded by then, so a failure is a note, not an error.
    """
    try:
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        runfolder.unrecord(folder, CHECKPOINT_FILE)
    except OSError as e:
        print(f"note: cannot delete the checkpoint {folder / CHECKPOINT_FILE} ({e.strerror or e}); delete it yourself", file=stream)


def _run_locked(
    config,
    folder: Path,
    resume,
    overwrite,
    figures,
    progress,
    checkpoint_every,
    stream,
    tensorboard=True,
    keep_checkpoint=False,
    agreement: Agreement | None = None,
) -> SweepResult:
    """run_sweep's work, while process 0 holds the folder's lock (the other processes write nothing)."""
    agreement = agreement or Agreement()
    writes = distributed.is_writer()
    state = runfolder.check_folder(folder, config.to_dict(), resume, overwrite, LOCAL_FIELDS) if writes else None
    reload = writes and state == "finished" and resume
    records = agreement(True, finished=reload)  # stage "folder": before anything heavy
    if reload:
        return _reload_finished(folder, stream)
    if records[0][1]:  # process 0 reloads a finished run: nothing to train
        return SweepResult(folder, {}, [], [], [], 0)
    Agreement.check(records, data=False)
    variants = config.variant_specs()
    plan = V.plan(variants)
    check_device_count(config, plan)
    dataset = load_dataset(config, progress)
    devices = select_devices(config.devices, most_devices(config, plan))
    placed = bucket_devices(config, plan, devices, dataset.num_words)
    estimate = memory_estimate(config, dataset, placed, plan)
    available, where = _available_memory(devices)
    check_memory(config, plan, estimate, available, where)
    environment = _environment(config, dataset, devices, plan, placed)

    checkpoint = None  # its bytes, read by process 0 and sent to all
    if writes and state == "unfinished" and resume:
        saved = fileio.read_json(folder / fileio.CONFIG_FILE)
        checksum = saved.get("data", {}).get("checksum")
        if checksum != dataset.checksum:
            raise SweepError(
                f"cannot resume {folder}: the data differs from the saved run's (checksum "
                f"{str(checksum)[:16]}..., now {dataset.checksum[:16]}...)"
            )
        count = saved.get("devices", {}).get("count")
        if count != len(devices):
            raise SweepError(f"cannot resume {folder}: it ran on {count} device(s), now {len(devices)}; pass --devices {count}")
        was = saved.get("devices", {}).get("placement", "shard")  # before placements, runs were sharded
        if len(devices) > 1 and was != environment["devices"]["placement"]:  # on one device both are the same
            now = environment["devices"]["placement"]
            raise SweepError(f"cannot resume {folder}: its programs were placed {was!r}, now {now!r}; pass --placement {was}")
        if (folder / CHECKPOINT_FILE).is_file():
            checkpoint = read_checkpoint(folder)
        started_on = saved.get("machine", {}).get("instruction_set")
        if devices[0].platform == "cpu" and started_on != machine.instruction_set():
            print(
                f"note: {folder} was started with XLA:CPU on {started_on}, now {machine.instruction_set()}: "
                "the resumed epochs differ from an uninterrupted run by float32 round-off (amplified by training), not bit for bit",
                file=stream,
            )
    Agreement.check(agreement(True, data_checksum=dataset.checksum))  # stage "start"
    if distributed.many():
        checkpoint = distributed.broadcast_bytes(b"" if checkpoint is None else checkpoint) or None
        if not writes:
            print(f"{distributed.describe()}: training with process 0, which writes {folder}", file=sys.stderr, flush=True)
    snapshot = None if checkpoint is None else load_checkpoint(folder, config, dataset.num_words, placed, checkpoint)
    saved_columns = next(iter(snapshot.history.values()), {}) if snapshot is not None else {}
    if snapshot is not None and dataset.test is not None and not has_test(saved_columns):
        # a run started before test splits were evaluated: it goes on as it began, without test columns
        dataset = dataclasses.replace(dataset, test=None)
        print(f"note: {folder} was started without test columns; it is resumed without them", file=stream)

    try:
        if writes:
            if state in ("unfinished", "finished") and overwrite:
                (folder / fileio.STATUS_FILE).unlink(missing_ok=True)  # interrupted now: an unfinished run folder
                runfolder.remove_recorded(folder)  # only jaxreg's files (the manifest last); the user's stay
            elif state == "unfinished":
                runfolder.remove_temporaries(folder)  # left by a process killed while writing
            folder.mkdir(parents=True, exist_ok=True)
            if not (resume and state == "unfinished"):
                runfolder.record(folder, fileio.CONFIG_FILE, fileio.STATUS_FILE, CHECKPOINT_FILE)
                fileio.write_json(folder / fileio.CONFIG_FILE, environment)
    except OSError as e:
        raise SweepError(f"cannot write the output folder {folder}: {e.strerror or e}") from e

    start = snapshot.epochs_done if snapshot else 0
    done, bar, live = start, None, None

    def write_status(name: str, epochs_done: int) -> None:
        if writes:
            fileio.write_json(folder / fileio.STATUS_FILE, {"state": name, "epochs_done": epochs_done, "epochs": config.epochs})

    # Process 0 writes checkpoints while the next epoch trains; `done` (what the folder's checkpoint
    # holds) is only read after checkpoints.wait().
    checkpoints = CheckpointWriter(
        folder,
        then=lambda epochs_done: write_status("running", epochs_done),
        save=lambda *args: save_checkpoint(*args),  # looked up when called: tests replace it
    )

    def on_epoch(epoch, row, take_snapshot):
        nonlocal done
        if writes:
            live.epoch(epoch, row)  # history lines and TensorBoard events, flushed
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs:
            taken = take_snapshot()  # gathers the state: every process takes it
            if writes:
                checkpoints.submit(taken)
                if epoch + 1 == config.epochs:  # nothing left to overlap with: its bytes go before the results are made
                    checkpoints.wait()
            else:
                done = epoch + 1
        bar.epoch_done(epoch, row)

    def checkpointed() -> int:
        """Epochs the folder's checkpoint holds, once the writer has finished (process 0), else as far as known."""
        _wait_quietly(checkpoints)
        return checkpoints.written if checkpoints.written is not None else done

    # From here on the folder is this run's: an interrupt at any moment, compiling, training or
    # writing the results, leaves it "interrupted" (unless already "finished") and resumable.
    try:
        print(dataset.describe(), file=stream)
        print(
            f"{config.name}: {len(config.variants)} variant(s) x {config.seeds} seed(s) = {len(variants)} models, "
            f"{config.epochs} epochs, batch {config.batch_size}, in {len(plan)} program(s) on "
            f"{len(devices)} {devices[0].platform} device(s) ({devices[0].device_kind}{_where(plan, placed, devices)})"
            + (f" of {jax.process_count()} processes" if distributed.many() else "")
            + f", est. {memory.gigabytes(estimate.total)} of {memory.gigabytes(available)} {where}; output: {folder}"
            + (f"; resuming after epoch {start}" if snapshot else ""),
            file=stream,
            flush=True,
        )
        write_status("running", start)
        if writes:
            live = LiveLog(
                folder, config, snapshot.history if snapshot else {}, start, tensorboard,
                columns=metric_names("accuracy", test=dataset.test is not None),
            )
        bar = _Progress(config, start, snapshot.history if snapshot else {}, progress)
        t0 = time.perf_counter()
        with compiletime.measure() as compiled:
            outcome = V.run(
                variants,
                dataset,
                config.run_settings(),
                meshes=[V.variant_mesh(on) for on in placed],
                on_epoch=on_epoch,
                resume=snapshot,
                divergence_threshold=config.divergence_threshold,
            )
            history, trained = outcome.history, outcome.params
        checkpoints.wait()
        seconds = time.perf_counter() - t0
        bar.close()
        print(f"{compiled.describe()}; compiling and training took {seconds:.1f} s", file=stream)
        if not writes:
            histories = stack(history, [v.name for v in config.variants], config.divergence_threshold)
            summaries = summarize(histories)
            diverged = [(s.name, seed, epoch) for s in summaries for seed, epoch in s.diverged]
            return SweepResult(folder, histories, summaries, diverged, [], start)
        epochs_run = len(next(iter(next(iter(history.values())).values())))
        if epochs_run < config.epochs:
            print(f"early stopping (patience {config.patience}): every variant stopped; the run ended after epoch "
                  f"{epochs_run} of {config.epochs}; params/ keeps each variant's best epoch", file=stream)
        live.finish(epochs_run)
        saved_params.save_params(folder, trained)
        result = _finish(folder, config, history, figures, seconds, start, stream, compiled.seconds, epochs_run)
        if not keep_checkpoint:
            _remove_checkpoint(folder, stream)
        return result
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        done = checkpointed()  # the checkpoint being written completes; `done` then names it
        if writes and folder_state(folder) != "finished":
            write_status("interrupted", done)
        raise SweepInterrupted(folder, done, config.epochs) from None
    except Exception as e:
        done = checkpointed()  # no checkpoint is left half-handled by a thread that outlives the run
        if not distributed.many():
            raise
        if bar is not None:
            bar.close()
        if writes and folder_state(folder) != "finished":
            write_status("interrupted", done)
        if not distributed.lost_peer(e):
            raise
        resumable = f"; {folder} holds a checkpoint after epoch {done} (--resume)" if done else ""
        raise ProcessLost(
            f"process {jax.process_index()}: exchanging arrays with the other processes failed, most likely another "
            f"process stopped (see its output): {str(e).splitlines()[0] if str(e) else type(e).__name__}{resumable}"
        ) from None
    except BaseException:
        _wait_quietly(checkpoints)
        raise


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

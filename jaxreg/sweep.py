"""The whole study in one call: a validated `SweepConfig` and `run_sweep`, resumable and checkpointed.

`run_sweep(config, out)` validates everything (config, output folder, data, devices) before
it writes anything, then trains every variant x seed in one `variants.run` and fills the run
folder (file formats in `jaxreg.results`):

  config.json          the resolved config, variant list, plan, versions, devices, data
  status.json          running / interrupted / finished (+ diverged variants, seconds)
  checkpoint.msgpack   after every epoch: each bucket's TrainState and the history so far
  history.jsonl/.csv, summary.md/.csv, figures/*.png   at the end

Checkpoints are written atomically (temporary file, then os.replace), so a run killed at
any moment can continue with `resume=True` and ends with exactly the history of an
uninterrupted run. A finished folder is never overwritten without `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
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
from jaxreg import losses, results
from jaxreg import variants as V
from jaxreg.data import DataError, Dataset, load_imdb, synthetic_dataset
from jaxreg.train import init_state

PRODUCTS = ("auto", "sparse", "dense")
VALIDATIONS = ("test", "holdout")
AXES = ("width", "l1", "l2", "dropout_rate", "learning_rate", "weight_decay")
CHECKPOINT_FILE = "checkpoint.msgpack"
CHECKPOINT_FORMAT = 1
SYNTHETIC = dict(n_train=2000, n_validation=1000, num_words=1000)
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

    def __post_init__(self):
        def bad(field, why):
            raise SweepError(f"config {self.name!r}: {field}={getattr(self, field)!r} {why}")

        def positive_int(field):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(field, "must be an integer >= 1")

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
        for field in ("epochs", "seeds", "batch_size", "holdout_size"):
            positive_int(field)
        if self.devices is not None:
            positive_int("devices")
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


def select_devices(count: int | None) -> list:
    devices = jax.devices()
    if count is not None and count > len(devices):
        hint = " (on CPU, --devices sets XLA_FLAGS before jax starts)" if devices[0].platform == "cpu" else ""
        raise SweepError(f"devices={count} asked for, but only {len(devices)} {devices[0].platform} device(s) exist{hint}")
    return devices[: count or len(devices)]


def folder_state(folder: Path) -> str:
    """"new" (absent or empty), "foreign" (something else), "unfinished" or "finished" run folder."""
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        return "foreign"
    if not (folder / results.CONFIG_FILE).is_file():
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
        raise SweepError(f"{folder} exists and is not a jaxreg run folder (no {results.CONFIG_FILE}); choose another --out")
    if state == "finished" and not (resume or overwrite):
        raise SweepError(f"{folder} holds a finished run; pass --overwrite to replace it, or choose another --out")
    if state == "unfinished" and not (resume or overwrite):
        raise SweepError(
            f"{folder} holds an unfinished run ({_done_text(folder)}); pass --resume to continue it or --overwrite to restart it"
        )
    if state in ("unfinished", "finished") and resume:
        _compare_configs(folder, config)
    _check_writable(folder)
    return state


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


# --- checkpoints -----------------------------------------------------------------------


def save_checkpoint(folder: Path, snapshot: V.RunSnapshot) -> Path:
    """Atomically write the snapshot: states via flax msgpack, history as JSON text."""
    history = [{"name": n, "seed": s, "metrics": m} for (n, s), m in snapshot.history.items()]
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epochs_done": snapshot.epochs_done,
        "history": json.dumps(history),
        "plan": json.dumps(getattr(snapshot, "plan", None)),  # bucket layout, checked by variants.run on resume
        "states": {str(i): flax.serialization.to_state_dict(s) for i, s in enumerate(snapshot.states)},
    }
    return results.atomic_write(folder / CHECKPOINT_FILE, flax.serialization.msgpack_serialize(payload))


def _state_targets(config: SweepConfig, num_words: int, n_devices: int) -> list:
    """Per bucket: (abstract TrainState of one variant, leading axes [seeds, padded configs]) as variants.run builds it."""
    targets = []
    for bucket in V.plan(config.variant_specs()):
        step_config = bucket.step_config(config.loss, V.choose_product(bucket, config.product))  # shapes only
        one = jax.eval_shape(lambda c=step_config, w=bucket.widths: init_state(jax.random.key(0), c, num_words, w)[0])
        targets.append((one, (len(bucket.seeds), len(V.sharded_configs(bucket, n_devices)))))
    return targets


def load_checkpoint(folder: Path, config: SweepConfig, num_words: int, n_devices: int) -> V.RunSnapshot:
    """Read a checkpoint back into a RunSnapshot, checking it against the structure of a fresh run."""
    path = folder / CHECKPOINT_FILE
    try:
        saved = flax.serialization.msgpack_restore(path.read_bytes())
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
            if key not in self.announced and not all(math.isfinite(v) for v in metrics.values()):
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
    histories = results.stack(history, [v.name for v in config.variants])
    summaries = results.summarize(histories)
    results.write_history(folder, histories)
    results.write_summary(folder, summaries, title=f"{config.name}: {config.epochs} epochs x {config.seeds} seed(s)")
    paths = []
    if figures:
        from jaxreg import plots  # matplotlib is only needed here

        axis = (config.axis, config.axis_values()) if config.axis else None
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
    print_summary(summaries, folder, paths, stream)
    return SweepResult(folder, histories, summaries, diverged, paths, resumed_from)


def print_summary(summaries, folder: Path, figures: list, stream=sys.stdout) -> None:
    print("\n" + results.summary_table(summaries), file=stream)
    print(results.summary_notes(), file=stream)
    written = [results.CONFIG_FILE, results.HISTORY_JSONL, results.HISTORY_CSV, results.SUMMARY_MD, results.SUMMARY_CSV]
    written += [str(p.relative_to(folder)) for p in figures]
    print(f"Wrote {folder}: {', '.join(written)}", file=stream)


def _reload_finished(folder: Path, stream) -> SweepResult:
    run = results.load_run(folder)
    summaries = results.summarize(run.histories)
    diverged = [(s.name, seed, epoch) for s in summaries for seed, epoch in s.diverged]
    figures = sorted((folder / results.FIGURES_DIR).glob("*.png"))
    print(f"{folder} already holds a finished run (use --overwrite to run it again).", file=stream)
    print_summary(summaries, folder, figures, stream)
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
    goes to stderr.
    """
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise SweepError(f"checkpoint_every={checkpoint_every!r} must be an integer >= 1")
    folder = Path(out)
    state = _check_folder(folder, config, resume, overwrite)
    if state == "finished" and resume:
        return _reload_finished(folder, stream)
    dataset = load_dataset(config)
    devices = select_devices(config.devices)
    variants = config.variant_specs()
    plan = V.plan(variants)
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

    try:
        if state in ("unfinished", "finished") and overwrite:
            # status.json first, config.json last: interrupted, it is still an unfinished run folder
            order = {results.STATUS_FILE: 0, results.CONFIG_FILE: 2}
            for path in sorted(folder.iterdir(), key=lambda p: order.get(p.name, 1)):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            folder.rmdir()
        for stale in folder.glob(".*.tmp") if state == "unfinished" else ():
            stale.unlink()  # left by a process killed while writing
        folder.mkdir(parents=True, exist_ok=True)
        if not (resume and state == "unfinished"):
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
            f"{len(devices)} {devices[0].platform} device(s) ({devices[0].device_kind}); output: {folder}"
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

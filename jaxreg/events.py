"""TensorBoard event files of a run: one TensorBoard run per variant and seed, every metric per epoch.

<run folder>/tensorboard/<variant>/seed_<s>/events.out.tfevents.jaxreg holds, as scalars with
step = epoch (from 1), every metric of the history (`history.metric_names`; with a test split,
its test_* columns too), appended and flushed after every epoch, and the variant's
hyperparameters for TensorBoard's HParams plugin (with, at the end, the final and best
validation metrics; the best epoch is `jaxreg.selection`'s, with the run's divergence threshold).
`tensorboard --logdir <run folder or its parent>`.

Written with tensorboardX's protobufs and summary builders (pure Python and protobuf, unlike
tensorboard, which brings a web server) but not its SummaryWriter: that names files by time
and host, while here the name is fixed, so the manifest records a file before it exists,
and a resumed run can rewrite the file to hold each epoch once (see `EventLog`).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tensorboardX import summary as tbx_summary
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c

from jaxreg import fileio, runfolder, selection
from jaxreg.history import columns, task_metric

EVENTS_DIR = "tensorboard"
EVENT_FILE = "events.out.tfevents.jaxreg"  # TensorBoard reads files with "tfevents" in their name
HPARAM_FIELDS = ("l1", "l2", "dropout_rate", "learning_rate", "weight_decay", "l1_proximal", "optimizer")
# the optimizer's and schedule's settings (run folders written before they existed lack them: left out);
# piecewise boundaries and scales as text, e.g. "1000,2000"
OPTIMIZER_HPARAM_FIELDS = (
    "momentum",
    "b1",
    "b2",
    "eps",
    "nesterov",
    "schedule",
    "decay_rate",
    "decay_steps",
    "warmup_steps",
    "alpha",
    "boundaries",
    "scales",
)


# what the HParams plugin compares variants by: the last value of each tag in a run
def hparam_metrics(metric: str = "accuracy") -> tuple[str, ...]:
    """The metrics the HParams plugin shows for a task whose metric is `metric` (accuracy, mae)."""
    return ("val_data_loss", f"val_{metric}", "best/val_data_loss", f"best/val_{metric}", "best/epoch")


HPARAM_METRICS = hparam_metrics("accuracy")


def event_file(name: str, seed: int) -> str:
    """The event file of a variant and seed, relative to the run folder."""
    return f"{EVENTS_DIR}/{name}/seed_{seed}/{EVENT_FILE}"


def hparams_of(variant: Mapping, seed: int) -> dict:
    """The HParams of a variant (`VariantSpec.to_dict`) and seed: widths as text, e.g. "16x16"
    (an own model: its description)."""
    widths = variant["widths"]
    values = {
        "variant": variant["name"],
        "widths": variant.get("model") if widths is None else "x".join(map(str, widths)),
    }
    values.update({k: variant[k] for k in HPARAM_FIELDS})
    for k in OPTIMIZER_HPARAM_FIELDS:
        if k in variant:
            values[k] = ",".join(f"{x:g}" for x in variant[k]) if isinstance(variant[k], (list, tuple)) else variant[k]
    values["seed"] = int(seed)
    return values


def _record(event: Event) -> bytes:
    """One TFRecord: length, its masked crc32c, the serialized event, its masked crc32c."""
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _summary_event(summary, step: int, wall_time: float | None = None) -> bytes:
    return _record(Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary))


def scalar_records(step: int, values: Mapping[str, float]) -> bytes:
    """One scalar event per value (tag: its name), at `step`."""
    wall_time = time.time()
    return b"".join(_summary_event(tbx_summary.scalar(tag, float(v)), step, wall_time) for tag, v in values.items())


def header_records(hparams: Mapping, metric: str = "accuracy") -> bytes:
    """What an event file starts with: its version, the HParams experiment and this run's hyperparameters."""
    experiment, session_start, _ = tbx_summary.hparams(dict(hparams), {m: None for m in hparam_metrics(metric)})
    version = _record(Event(wall_time=time.time(), step=0, file_version="brain.Event:2"))
    return version + _summary_event(experiment, 0) + _summary_event(session_start, 0)


def best_metrics(history: Mapping[str, Sequence[float]], divergence_threshold: float) -> dict:
    """The best epoch of one seed's history {metric: [epochs]} (`selection.seed_best_epoch`: its lowest
    val_data_loss before it diverged, with the run's `divergence_threshold`), its val_data_loss and the
    task's metric (val_accuracy, val_mae); {} when it diverged from epoch 1."""
    best = selection.seed_best_epoch(history, divergence_threshold)
    if best is None:
        return {}
    metric = f"val_{task_metric(history)}"
    loss = float(history[selection.CHOICE][best])
    return {"best/val_data_loss": loss, f"best/{metric}": float(history[metric][best]), "best/epoch": best + 1}


def _end_records(step: int, history: Mapping[str, Sequence[float]], divergence_threshold: float) -> bytes:
    _, _, session_end = tbx_summary.hparams({}, {})
    return scalar_records(step, best_metrics(history, divergence_threshold)) + _summary_event(session_end, step)


class EventLog:
    """The event files of a run's variants and seeds, kept in step with its history.

    Opening writes each file afresh (atomically): header, then the epochs of `history` (the
    resume checkpoint's), so a resumed run's files hold every epoch once, as an uninterrupted
    run's do; the re-run epochs are appended again as they finish. Each epoch is appended and
    flushed with one write per file; files are opened per write, so none stays open.
    """

    def __init__(
        self,
        folder,
        hparams: Mapping[tuple[str, int], Mapping],
        history: Mapping,
        epochs_done: int,
        metric: str = "accuracy",
        divergence_threshold: float = selection.DIVERGENCE_THRESHOLD,
    ):
        """`divergence_threshold`: the run's (`SweepConfig.divergence_threshold`), for the best metrics at the end."""
        self.folder = Path(folder)
        self.threshold = divergence_threshold
        self.keys = list(hparams)
        runfolder.record(self.folder, *(event_file(n, s) for n, s in self.keys))
        for key in self.keys:
            kept = (
                b"".join(
                    scalar_records(e + 1, {m: history[key][m][e] for m in columns(history[key])})
                    for e in range(len(next(iter(history[key].values()), [])))  # in waves: its own epochs
                )
                if key in history
                else b""
            )
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fileio.atomic_write(path, header_records(hparams[key], metric) + kept)

    def _path(self, key) -> Path:
        return self.folder / event_file(*key)

    def _append(self, key, data: bytes) -> None:
        with fileio.naming(self._path(key)), open(self._path(key), "ab") as f:
            f.write(data)
            f.flush()

    def epoch(self, epoch: int, row: Mapping[tuple[str, int], Mapping[str, float]]) -> None:
        """Append an epoch (from 0) of `variants.run`'s row: every metric at step epoch + 1."""
        for key in (k for k in self.keys if k in row):  # in waves: the variants of the wave
            self._append(key, scalar_records(epoch + 1, {m: row[key][m] for m in columns(row[key])}))

    def finish(self, history: Mapping, epochs: int) -> None:
        """Append each run's best metrics (for the HParams plugin) and the end of its session."""
        for key in self.keys:  # in waves a wave that stopped early ends at its own last epoch
            trained = len(next(iter(history[key].values()), [])) or epochs
            self._append(key, _end_records(trained, history[key], self.threshold))

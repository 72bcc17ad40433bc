"""What a run writes after every epoch, so it can be watched: history.jsonl/.csv lines and TensorBoard events.

`LiveLog` starts the files afresh (atomically) with the epochs a resumed run keeps (its
checkpoint's), then appends every epoch as one write per file, flushed: a reader sees whole
epochs, or a last line still being written, which `history.read_history` skips. While the run
trains the lines are in epoch order; at the end `jaxreg.sweep` rewrites history.jsonl/.csv in
`history.write_history`'s order (variant, seed, epoch), so a finished run's files are the same
whether or not it was interrupted and resumed. Every file is in the manifest before it exists.
A run resumed with `tensorboard=False` leaves the event files already written as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from jaxreg import fileio, runfolder
from jaxreg.history import METRICS, csv_lines, epoch_records, has_test, jsonl_lines, task_metric


class LiveLog:
    """The per-epoch files of one run: history.jsonl/.csv and, unless `tensorboard=False`, `jaxreg.events`."""

    def __init__(self, folder, config, history: Mapping, epochs_done: int, tensorboard: bool = True, columns=METRICS):
        """`history`: {(name, seed): {metric: [epochs]}} of the epochs kept (a checkpoint's), `epochs_done` of them.
        `columns`: the run's history columns (`history.metric_names`; with test columns for data with a test split)."""
        self.columns = tuple(columns)
        self.folder = Path(folder)
        self.names = [v.name for v in config.variants]
        self.threshold = config.divergence_threshold
        self.diverged: dict = {}
        self.history = {(v.name, v.seed): {m: [] for m in self.columns} for v in config.variant_specs()}
        runfolder.record(self.folder, fileio.HISTORY_JSONL, fileio.HISTORY_CSV)
        kept, first = [], self.columns[0]
        for epoch in range(max((len(h[first]) for h in history.values()), default=0)):  # in waves: each its own epochs
            row = {key: {m: h[m][epoch] for m in self.columns} for key, h in history.items() if len(h[first]) > epoch}
            kept += self._add(epoch, row)
        test = has_test(self.columns)
        fileio.atomic_write(self.folder / fileio.HISTORY_JSONL, jsonl_lines(kept))
        fileio.atomic_write(self.folder / fileio.HISTORY_CSV, csv_lines(kept, header=True, test=test))
        self.events = None
        if tensorboard:
            from jaxreg import events

            hparams = {(v.name, v.seed): events.hparams_of(v.to_dict(), v.seed) for v in config.variant_specs()}
            metric = task_metric(self.columns)
            self.events = events.EventLog(self.folder, hparams, history, epochs_done, metric, self.threshold)

    def _add(self, epoch: int, row: Mapping) -> list[dict]:
        """The history records of an epoch (from 0); remembers the row and which seeds have diverged."""
        records = epoch_records(epoch, row, self.names, self.diverged, self.threshold)
        for r in records:
            key = (r["variant"], r["seed"])
            self.diverged[key] = r["diverged"]
            for m in self.columns:
                self.history[key][m].append(r[m])
        return records

    def epoch(self, epoch: int, row: Mapping) -> None:
        """Append an epoch (from 0) of `variants.run`'s row to every file, flushed."""
        records = self._add(epoch, row)
        lines = {fileio.HISTORY_JSONL: jsonl_lines(records), fileio.HISTORY_CSV: csv_lines(records)}
        for name, text in lines.items():
            with fileio.naming(self.folder / name), open(self.folder / name, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
        if self.events is not None:
            self.events.epoch(epoch, row)

    def finish(self, epochs: int) -> None:
        """The run trained every epoch: the final and best metrics for TensorBoard's HParams."""
        if self.events is not None:
            self.events.finish(self.history, epochs)

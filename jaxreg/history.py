"""A run's history: its columns, the stacked form every summary and figure reads, and its files.

A *history* is what `variants.run` returns: {(name, seed): {metric: [epochs]}}, with the
columns `metric_names(metric)`: loss, data_loss, penalty, the task's metric (accuracy,
or mae for regression) and their val_ twins, and, for data with a test split, test_loss,
test_data_loss and test_<metric> (`test_names`: reported apart, never used to choose the best
epoch or to mark divergence); every function here reads the columns from the history it is
given (`columns`). `stack` turns it into the form `jaxreg.summaries` and `jaxreg.plots` take,
one entry per variant: {name: {metric: float array [seeds, epochs], "diverged": bool array
[seeds, epochs], "seeds": [seeds]}}, with the seeds in increasing order and divergence marked
by `jaxreg.selection`. Epochs are numbered from 1 in every file and table.

Files: history.jsonl (one line per variant, seed and epoch: every metric and `diverged`;
non-finite values as null) and history.csv (the same; non-finite as nan/inf), both appended
after every epoch while a run trains (`jaxreg.live`) and rewritten in variant, seed, epoch
order at the end (`write_history`); `read_history` reads either state.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxreg.fileio import HISTORY_CSV, HISTORY_JSONL, atomic_write
from jaxreg.selection import DIVERGENCE_THRESHOLD, blown_up, diverged_mask, masked


def metric_names(metric: str = "accuracy", test: bool = False) -> tuple[str, ...]:
    """A history's columns for a task whose metric is `metric` (tasks.Task.metric): the training
    epoch's means, then the validation's, then (`test`: the data has a test split) `test_names`."""
    train = ("loss", "data_loss", "penalty", metric)
    return train + tuple(f"val_{m}" for m in train) + (test_names(metric) if test else ())


def test_names(metric: str = "accuracy") -> tuple[str, ...]:
    """The test split's columns: test_loss (data loss + penalty), test_data_loss and test_<metric>.

    No test_penalty: it is val_penalty (the same parameters). These columns are reported
    apart and never used to choose anything: not the best epoch, not divergence (`selection.blown_up`
    skips them), not early stopping.
    """
    return ("test_loss", "test_data_loss", f"test_{metric}")


def has_test(names) -> bool:
    """Whether a history's columns (or a mapping's keys) include the test split's."""
    return "test_loss" in names


METRICS = metric_names("accuracy")  # a classification history's columns (the study's)


def task_metric(names) -> str:
    """The task's metric ("accuracy", "mae", ...) among a history's column names (or a mapping's keys)."""
    losses = {"val_loss", "val_data_loss", "val_penalty"}
    found = [n[4:] for n in names if n.startswith("val_") and n not in losses]
    if len(found) != 1:
        raise ValueError(f"cannot tell the task's metric from the columns {sorted(names)}")
    return found[0]


def columns(names) -> tuple[str, ...]:
    """A history's metric columns in their canonical order, from its column names (or a mapping's keys)."""
    return metric_names(task_metric(names), test=has_test(names))


def stack(
    history: Mapping[tuple[str, int], Mapping[str, Sequence[float]]],
    names: Sequence[str] | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
) -> dict:
    """{(name, seed): {metric: [epochs]}} -> {name: {metric: [seeds, epochs], "diverged": ..., "seeds": [seeds]}}.

    Variants keep the order of `names` (default: first appearance in `history`).
    """
    if names is None:
        names = list(dict.fromkeys(name for name, _ in history))
    out = {}
    for name in names:
        seeds = sorted(seed for n, seed in history if n == name)
        if not seeds:
            raise KeyError(f"no history for variant {name!r}")
        arrays = {
            m: np.array([np.asarray(history[(name, s)][m], np.float64) for s in seeds])
            for m in columns(history[(name, seeds[0])])
        }
        arrays["diverged"] = diverged_mask(arrays, divergence_threshold)
        arrays["seeds"] = np.array(seeds)
        out[name] = arrays
    return out


def is_penalized(h: Mapping[str, np.ndarray]) -> bool:
    """Whether the variant's Keras val_loss carries a penalty (so it differs from val_data_loss)."""
    return bool(np.any(np.abs(masked(h, "val_penalty")) > 0))


def history_records(histories: Mapping[str, Mapping[str, np.ndarray]]) -> list[dict]:
    """One record per variant, seed and epoch (epoch from 1), in variant, seed, epoch order."""
    records = []
    for name, h in histories.items():
        for si, seed in enumerate(h["seeds"]):
            for e in range(h["loss"].shape[1]):
                record = {"variant": name, "seed": int(seed), "epoch": e + 1}
                record.update({m: float(h[m][si, e]) for m in columns(h)})
                record["diverged"] = bool(h["diverged"][si, e])
                records.append(record)
    return records


def history_fields(metric: str = "accuracy", test: bool = False) -> tuple[str, ...]:
    """The fields of a history record (and history.csv's header) for a task with this metric (and a test split)."""
    return ("variant", "seed", "epoch", *metric_names(metric, test), "diverged")


HISTORY_FIELDS = history_fields("accuracy")


def jsonl_lines(records: Sequence[Mapping]) -> str:
    """history.jsonl lines of `records` (non-finite -> null, so every line is strict JSON)."""

    def strict(r):
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}

    return "".join(json.dumps(strict(r), allow_nan=False) + "\n" for r in records)


def csv_lines(
    records: Sequence[Mapping], header: bool = False, metric: str | None = None, test: bool | None = None
) -> str:
    """history.csv lines of `records` (floats as repr: exact), after the header line if asked.

    The columns are the records' (`metric`, e.g. "accuracy", and `test`, whether there are
    test columns, name them when there are no records).
    """
    metric = metric or (task_metric(records[0]) if records else "accuracy")
    test = has_test(records[0]) if test is None and records else bool(test)
    metrics = metric_names(metric, test)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history_fields(metric, test)), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows({**r, **{m: repr(r[m]) for m in metrics}} for r in records)
    return buf.getvalue()


def write_history(folder, histories) -> tuple[Path, Path]:
    """history.jsonl (non-finite -> null) and history.csv, in variant, seed, epoch order, atomically."""
    folder = Path(folder)
    records = history_records(histories)
    return (
        atomic_write(folder / HISTORY_JSONL, jsonl_lines(records)),
        atomic_write(folder / HISTORY_CSV, csv_lines(records, header=True)),
    )


def epoch_records(
    epoch: int,
    row: Mapping[tuple[str, int], Mapping[str, float]],
    names: Sequence[str],
    diverged_before: Mapping[tuple[str, int], bool],
    threshold: float = DIVERGENCE_THRESHOLD,
) -> list[dict]:
    """The history records of one epoch (from 0) of `variants.run`'s `row`, in variant, seed order.

    `diverged` as `stack` marks it: True from the first blown-up epoch on, so it needs whether
    each (name, seed) had diverged before this epoch.
    """
    records = []
    for name in names:
        for seed in sorted(s for n, s in row if n == name):
            metrics = row[(name, seed)]
            record = {"variant": name, "seed": int(seed), "epoch": epoch + 1}
            record.update({m: float(metrics[m]) for m in columns(metrics)})
            record["diverged"] = bool(
                diverged_before.get((name, seed), False) or blown_up(record_metrics(record), threshold)
            )
            records.append(record)
    return records


def record_metrics(record: Mapping) -> dict:
    """The metrics of one history record, as numbers (for `blown_up`)."""
    return {m: record[m] for m in columns(record)}


def _complete_lines(path) -> list[str]:
    """The whole lines of a file being appended to: a last line without its newline is still being written."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text.split("\n")[:-1]


def read_history(path) -> dict:
    """history.jsonl -> the stacked form of `stack` (null -> NaN), also while a run appends to it.

    An incomplete last line is skipped, and each variant keeps the epochs (from 1, in a row)
    that all its seeds have, so a file read during a write gives the epochs written so far.
    """
    rows: dict[str, dict[int, dict[int, dict]]] = {}
    for line in _complete_lines(path):
        if line.strip():
            r = json.loads(line)
            rows.setdefault(r["variant"], {}).setdefault(r["seed"], {})[r["epoch"]] = r
    out = {}
    for name, by_seed in rows.items():
        seeds = sorted(by_seed)
        n = 0
        while all(n + 1 in by_seed[s] for s in seeds):
            n += 1
        epochs, shape = range(1, n + 1), (len(seeds), n)  # reshape: n may be 0

        def column(m, null=np.nan, dtype=np.float64):
            return np.array(
                [[null if by_seed[s][e][m] is None else by_seed[s][e][m] for e in epochs] for s in seeds], dtype=dtype
            ).reshape(shape)

        first = by_seed[seeds[0]]
        h = {m: column(m) for m in columns(first[min(first)])}
        h["diverged"] = column("diverged", False, bool)
        h["seeds"] = np.array(seeds)
        out[name] = h
    return out

"""Histories, summaries and run folders: what a sweep writes, and `load_run` to read it back.

A *history* is what `variants.run` returns: {(name, seed): {metric: [epochs]}}, with the
columns `metric_names(metric)`: loss, data_loss, penalty, the task's metric (accuracy,
or mae for regression) and their val_ twins, and, for data with a test split, test_loss,
test_data_loss and test_<metric> (`test_names`: reported apart, never used to choose the best
epoch or to mark divergence); every function here reads the columns from the history it is
given (`columns`). `stack`
turns it into the form every function here and in `plots` takes, one entry per variant:
{name: {metric: float array [seeds, epochs], "diverged": bool array [seeds, epochs]}}, with
the seeds in increasing order. Epochs are numbered from 1 in every file and table.

Definitions used by the summary (all on the *mean over seeds* of a metric, per epoch):
  * diverged: a (variant, seed) has diverged from the first epoch where any of its metrics
    is NaN or infinite, or any loss (every metric but the accuracies) exceeds the divergence
    threshold in size (DIVERGENCE_THRESHOLD = 1e6 unless the sweep sets another), to the end;
    its values there are ignored (treated as missing), so a mean over seeds is missing
    wherever any seed has diverged. The threshold catches blow-ups that Keras' clipped loss
    keeps finite: its per-example data loss is at most ~16.1, so a loss of 1e6 comes from
    exploding weights (through the penalty) or an exploding logit loss.
  * best epoch: the epoch of the lowest mean validation *data* loss (Keras' val_loss of a
    penalized model includes the penalty, which is not comparable across variants).
  * honest early stopping (`early_stopping`, with test columns): per seed, the epoch chosen
    on validation and the test loss there, against the epoch chosen on the test set (the
    book's protocol) and the test loss there; summary.md's second table.
  * overfitting onset (`overfitting_onset`): the first epoch after the best one from which
    the mean validation data loss stays above (1 + tolerance) x its minimum until the last
    epoch; None when the last epoch is still within that band (no overfitting seen yet).

Run folder files: config.json (written by `jaxreg.sweep`), status.json, history.jsonl (one
line per variant, seed and epoch: every metric and `diverged`; non-finite values as null),
history.csv (the same; non-finite as nan/inf), both appended after every epoch while a run
trains (`jaxreg.live`), summary.md, summary.csv, figures/*.png; the manifest of these files
and the folder's lock are `jaxreg.runfolder`'s. `load_run` reads a folder in any state.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping, Sequence

import numpy as np


def metric_names(metric: str = "accuracy", test: bool = False) -> tuple[str, ...]:
    """A history's columns for a task whose metric is `metric` (tasks.Task.metric): the training
    epoch's means, then the validation's, then (`test`: the data has a test split) `test_names`."""
    train = ("loss", "data_loss", "penalty", metric)
    return train + tuple(f"val_{m}" for m in train) + (test_names(metric) if test else ())


def test_names(metric: str = "accuracy") -> tuple[str, ...]:
    """The test split's columns: test_loss (data loss + penalty), test_data_loss and test_<metric>.

    No test_penalty: it is val_penalty (the same parameters). These columns are reported
    apart and never used to choose anything: not the best epoch, not divergence (`blown_up`
    skips them), not early stopping.
    """
    return ("test_loss", "test_data_loss", f"test_{metric}")


def has_test(names) -> bool:
    """Whether a history's columns (or a mapping's keys) include the test split's."""
    return "test_loss" in names


METRICS = metric_names("accuracy")  # a classification history's columns (the study's)
TEST_PREFIX = "test_"
OVERFITTING_TOLERANCE = 0.01
DIVERGENCE_THRESHOLD = 1e6

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_JSONL = "history.jsonl"
HISTORY_CSV = "history.csv"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
FIGURES_DIR = "figures"


# --- files -----------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes | str, *more: bytes) -> Path:
    """Write to a temporary file in the same folder, then os.replace it: readers never see half a file.

    `more`: further bytes written after `data`, as if joined to it (without the copy joining makes)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as f:
        f.write(payload)
        for chunk in more:
            f.write(chunk)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path) -> Iterator[BinaryIO]:
    """A binary file for the new content of `path`, written piece by piece; `path` is replaced when the block ends without error.

    The content goes to a temporary file in the same folder, is flushed to disk, then
    os.replace'd onto `path`; on an error the temporary file is removed and `path` is as before."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, value) -> Path:
    return atomic_write(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --- histories -------------------------------------------------------------------------


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



def blown_up(values: Mapping[str, np.ndarray], threshold: float = DIVERGENCE_THRESHOLD) -> np.ndarray:
    """bool, elementwise: any metric non-finite, or any loss (a metric but an accuracy) above `threshold` in size.

    The test split's columns (test_*) are left out: they never decide anything."""
    bad = np.zeros(np.shape(values[next(iter(values))]), dtype=bool)
    for name, v in values.items():
        if name in ("diverged", "seeds") or name.startswith(TEST_PREFIX):
            continue
        v = np.asarray(v, dtype=np.float64)
        bad |= ~np.isfinite(v)
        if not name.endswith("accuracy"):
            bad |= np.abs(v) > threshold
    return bad


def diverged_mask(values: Mapping[str, np.ndarray], threshold: float = DIVERGENCE_THRESHOLD) -> np.ndarray:
    """bool [..., epochs]: True from the first epoch that is `blown_up`, to the end."""
    return np.logical_or.accumulate(blown_up(values, threshold), axis=-1)


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
            m: np.array([np.asarray(history[(name, s)][m], np.float64) for s in seeds]) for m in columns(history[(name, seeds[0])])
        }
        arrays["diverged"] = diverged_mask(arrays, divergence_threshold)
        arrays["seeds"] = np.array(seeds)
        out[name] = arrays
    return out


def masked(h: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """A metric [seeds, epochs] with the diverged epochs set to NaN."""
    return np.where(h["diverged"], np.nan, h[metric])


def is_penalized(h: Mapping[str, np.ndarray]) -> bool:
    """Whether the variant's Keras val_loss carries a penalty (so it differs from val_data_loss)."""
    return bool(np.any(np.abs(masked(h, "val_penalty")) > 0))


def seed_mean(h: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """Mean over seeds per epoch; NaN where any seed has diverged."""
    return masked(h, metric).mean(axis=0)


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


def csv_lines(records: Sequence[Mapping], header: bool = False, metric: str | None = None, test: bool | None = None) -> str:
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
            record["diverged"] = bool(diverged_before.get((name, seed), False) or blown_up(record_metrics(record), threshold))
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


# --- summary ---------------------------------------------------------------------------


def overfitting_onset(curve: Sequence[float], tolerance: float = OVERFITTING_TOLERANCE) -> int | None:
    """First epoch (from 1) after the minimum from which `curve` stays above (1 + tolerance) x minimum.

    NaN entries (diverged) count as above the band. None if the curve has no finite value or
    its last epoch is within the band. With tolerance 0 this is simply the epoch after the
    last minimum, unless the minimum is the last epoch.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if not np.isfinite(curve).any():
        return None
    threshold = np.nanmin(curve) * (1 + tolerance)
    within = np.flatnonzero(np.isfinite(curve) & (curve <= threshold))
    last = int(within[-1])
    return None if last == curve.size - 1 else last + 2


@dataclasses.dataclass(frozen=True)
class VariantSummary:
    """One variant over its seeds; `_mean`/`_std` over seeds (std: sample std, NaN with one seed)."""

    name: str
    seeds: int
    best_epoch: int | None
    best_val_data_loss_mean: float
    best_val_data_loss_std: float
    best_val_metric_mean: float  # the task's metric (`metric`) at the best epoch
    best_val_metric_std: float
    best_val_loss_mean: float
    final_val_data_loss_mean: float
    final_val_data_loss_std: float
    final_val_loss_mean: float
    final_loss_mean: float
    final_data_loss_mean: float
    overfitting_epoch: int | None
    diverged: tuple[tuple[int, int], ...]  # (seed, first diverged epoch from 1)
    penalized: bool  # val_loss (Keras) includes a non-zero penalty, so it differs from val_data_loss
    metric: str = "accuracy"  # the task's metric: accuracy (classification) or mae (regression)
    # With a test split (history columns test_*; `early_stopping`), per seed, then mean/std over seeds:
    tested: bool = False  # the history has test columns; the fields below are NaN without
    chosen_epoch_mean: float = math.nan  # the epoch each seed's validation chooses (its lowest val data loss)
    chosen_epoch_std: float = math.nan
    chosen_test_data_loss_mean: float = math.nan  # the test data loss at that epoch: the honest estimate
    chosen_test_data_loss_std: float = math.nan
    chosen_test_metric_mean: float = math.nan  # the task's test metric at that epoch
    chosen_test_metric_std: float = math.nan
    oracle_epoch_mean: float = math.nan  # the epoch the test set chooses (its lowest test data loss): the book's protocol
    oracle_epoch_std: float = math.nan
    oracle_test_data_loss_mean: float = math.nan  # the test data loss there: what the book's protocol reports
    oracle_test_data_loss_std: float = math.nan
    optimism_mean: float = math.nan  # chosen minus oracle test data loss, >= 0 per seed: the book's protocol's optimism
    optimism_std: float = math.nan


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return mean, std


TESTED_FIELDS = (
    "chosen_epoch", "chosen_test_data_loss", "chosen_test_metric", "oracle_epoch", "oracle_test_data_loss", "optimism",
)


def early_stopping(h: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Honest early stopping against the book's protocol, per seed, for a history with test columns.

    chosen_epoch (from 1): each seed's first epoch of lowest validation data loss before it
    diverged (what `variants.best_epoch_tracker` keeps as .best parameters); chosen_test_*:
    the test data loss and the task's test metric there, the honest estimate. oracle_epoch:
    the seed's first epoch of lowest *test* data loss before it diverged, as choosing the epoch
    on the test curves does; oracle_test_data_loss: the test data loss there. optimism: chosen
    minus oracle test data loss (>= 0), how much the book's protocol flatters the test loss.
    float arrays [seeds]; NaN for a seed without a finite value (diverged from epoch 1).
    """
    if not has_test(h):
        have = sorted(k for k in h if k not in ("diverged", "seeds"))
        raise KeyError(f"the history has no test columns (test_loss, ...); it has {have}")
    metric = task_metric(h)
    val, test, test_metric = masked(h, "val_data_loss"), masked(h, "test_data_loss"), masked(h, f"test_{metric}")
    out = {name: np.full(val.shape[0], np.nan) for name in TESTED_FIELDS}
    for s in range(val.shape[0]):
        if np.isfinite(val[s]).any():
            chosen = int(np.nanargmin(val[s]))
            out["chosen_epoch"][s] = chosen + 1
            out["chosen_test_data_loss"][s] = test[s, chosen]
            out["chosen_test_metric"][s] = test_metric[s, chosen]
        if np.isfinite(test[s]).any():
            oracle = int(np.nanargmin(test[s]))
            out["oracle_epoch"][s] = oracle + 1
            out["oracle_test_data_loss"][s] = test[s, oracle]
    out["optimism"] = out["chosen_test_data_loss"] - out["oracle_test_data_loss"]
    return out


def _tested_summary(h: Mapping[str, np.ndarray]) -> dict:
    """VariantSummary's test fields (mean and std over the seeds that have a value), {} without test columns."""
    if not has_test(h):
        return {}
    fields: dict = {"tested": True}
    for name, values in early_stopping(h).items():
        finite = values[np.isfinite(values)]
        mean, std = _mean_std(finite) if finite.size else (math.nan, math.nan)
        fields[f"{name}_mean"], fields[f"{name}_std"] = mean, std
    return fields


def summarize(
    histories, tolerance: float = OVERFITTING_TOLERANCE, divergence_threshold: float | None = None
) -> list[VariantSummary]:
    """The summary of every variant (definitions in the module docstring).

    Divergence as the histories mark it ("diverged", set by `stack`), or, given
    `divergence_threshold`, marked again with that threshold (e.g. to re-read a run).
    """
    out = []
    for name, h in histories.items():
        if divergence_threshold is not None:
            h = {**h, "diverged": diverged_mask(h, divergence_threshold)}
        curve = seed_mean(h, "val_data_loss")
        best = int(np.nanargmin(curve)) if np.isfinite(curve).any() else None

        def at(metric, epoch):
            return (math.nan, math.nan) if epoch is None else _mean_std(masked(h, metric)[:, epoch])

        best_loss, final_loss = at("val_data_loss", best), at("val_data_loss", -1)
        metric = task_metric(h)
        best_metric = at(f"val_{metric}", best)
        out.append(
            VariantSummary(
                name=name,
                seeds=int(h["loss"].shape[0]),
                best_epoch=None if best is None else best + 1,
                best_val_data_loss_mean=best_loss[0],
                best_val_data_loss_std=best_loss[1],
                best_val_metric_mean=best_metric[0],
                best_val_metric_std=best_metric[1],
                best_val_loss_mean=at("val_loss", best)[0],
                final_val_data_loss_mean=final_loss[0],
                final_val_data_loss_std=final_loss[1],
                final_val_loss_mean=at("val_loss", -1)[0],
                final_loss_mean=at("loss", -1)[0],
                final_data_loss_mean=at("data_loss", -1)[0],
                overfitting_epoch=overfitting_onset(curve, tolerance),
                diverged=tuple(
                    (int(seed), int(np.argmax(row)) + 1) for seed, row in zip(h["seeds"], h["diverged"]) if row.any()
                ),
                penalized=is_penalized(h),
                metric=metric,
                **_tested_summary(h),
            )
        )
    return out


def _num(x: float, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "-"
    return _num(mean, digits) if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _diverged_text(s: VariantSummary) -> str:
    return ", ".join(f"seed {seed} @ {epoch}" for seed, epoch in s.diverged) or "-"


METRIC_HEADERS = {"accuracy": "val acc @ best", "mae": "val MAE @ best"}


def summary_columns(metric: str = "accuracy") -> tuple[str, ...]:
    """The summary table's header for a task with this metric (the data loss is the MSE for regression)."""
    return (
        "variant",
        "seeds",
        "best epoch",
        "best val data loss" if metric != "mae" else "best val MSE",
        METRIC_HEADERS.get(metric, f"val {metric} @ best"),
        "final val data loss" if metric != "mae" else "final val MSE",
        *SUMMARY_COLUMNS[6:],
    )


SUMMARY_COLUMNS = (
    "variant",
    "seeds",
    "best epoch",
    "best val data loss",
    "val acc @ best",
    "final val data loss",
    "final val loss (Keras)",
    "final train loss (Keras)",
    "overfitting from",
    "diverged",
)


def summary_table(summaries: Sequence[VariantSummary]) -> str:
    """A Markdown table (readable as plain text too) with one row per variant."""
    rows = [
        [
            s.name,
            str(s.seeds),
            "-" if s.best_epoch is None else str(s.best_epoch),
            _pm(s.best_val_data_loss_mean, s.best_val_data_loss_std),
            _pm(s.best_val_metric_mean, s.best_val_metric_std),
            _pm(s.final_val_data_loss_mean, s.final_val_data_loss_std),
            _num(s.final_val_loss_mean) + (" (+penalty)" if s.penalized else ""),
            _num(s.final_loss_mean),
            "-" if s.overfitting_epoch is None else str(s.overfitting_epoch),
            _diverged_text(s),
        ]
        for s in summaries
    ]
    return _markdown(summary_columns(summaries[0].metric if summaries else "accuracy"), rows)


TEST_METRIC_HEADERS = {"accuracy": "test acc there", "mae": "test MAE there"}


def early_stopping_columns(metric: str = "accuracy") -> tuple[str, ...]:
    """The header of `early_stopping_table` for a task with this metric."""
    loss = "test data loss" if metric != "mae" else "test MSE"
    return (
        "variant",
        "seeds",
        "epoch chosen on val",
        f"{loss} there (honest)",
        TEST_METRIC_HEADERS.get(metric, f"test {metric} there"),
        "epoch chosen on test",
        f"{loss} there (book)",
        "optimism (honest - book)",
    )


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def early_stopping_table(summaries: Sequence[VariantSummary]) -> str:
    """A Markdown table of the variants with test columns (`VariantSummary.tested`): the epoch
    the validation set chooses and the test loss there, against the epoch the test set chooses
    (the book's protocol) and the test loss there. "" when no variant has test columns."""
    tested = [s for s in summaries if s.tested]
    if not tested:
        return ""
    rows = [
        [
            s.name,
            str(s.seeds),
            _pm(s.chosen_epoch_mean, s.chosen_epoch_std, 1),
            _pm(s.chosen_test_data_loss_mean, s.chosen_test_data_loss_std),
            _pm(s.chosen_test_metric_mean, s.chosen_test_metric_std),
            _pm(s.oracle_epoch_mean, s.oracle_epoch_std, 1),
            _pm(s.oracle_test_data_loss_mean, s.oracle_test_data_loss_std),
            _pm(s.optimism_mean, s.optimism_std),
        ]
        for s in tested
    ]
    return _markdown(early_stopping_columns(tested[0].metric), rows)


def early_stopping_notes() -> str:
    return (
        "Honest early stopping: per seed, the epoch of the lowest validation data loss (held-out data) and the "
        "test data loss there, against the epoch of the lowest test data loss and the test loss there (the "
        "book's protocol: its validation set is the test set); optimism: the difference, >= 0 per seed. Means "
        "over seeds (± sample std). The test columns are never used to choose anything in a run."
    )


def summary_notes(tolerance: float = OVERFITTING_TOLERANCE, divergence_threshold: float = DIVERGENCE_THRESHOLD) -> str:
    return (
        "Means over seeds (± sample std). best epoch: lowest mean validation data loss (without the "
        "penalty that Keras adds to val_loss). overfitting from: first epoch after the best from which "
        f"the mean validation data loss stays above (1 + {tolerance:g}) x its minimum; - if not seen. "
        "Train loss is Keras' running mean over the epoch (dropout active, penalty included). "
        f"diverged: from the first epoch with a NaN or infinite metric or a loss above {divergence_threshold:g}."
    )


def write_summary(
    folder,
    summaries: Sequence[VariantSummary],
    title: str = "",
    tolerance: float = OVERFITTING_TOLERANCE,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
):
    """summary.md (table + definitions) and summary.csv (every field, empty for missing values)."""
    folder = Path(folder)
    notes = summary_notes(tolerance, divergence_threshold)
    md = (f"# {title}\n\n" if title else "") + summary_table(summaries) + "\n\n" + notes + "\n"
    tested = early_stopping_table(summaries)
    if tested:
        md += "\n## Honest early stopping: the test loss at the epoch chosen on validation and on test\n\n"
        md += tested + "\n\n" + early_stopping_notes() + "\n"
    fields = [f.name for f in dataclasses.fields(VariantSummary)]
    if not any(s.tested for s in summaries):  # summary.csv as before a test split existed
        fields = fields[: fields.index("tested")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for s in summaries:
        row = dataclasses.asdict(s)
        for k, v in row.items():
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                row[k] = ""
        row["diverged"] = ";".join(f"{seed}@{epoch}" for seed, epoch in s.diverged)
        writer.writerow({k: row[k] for k in fields})
    return atomic_write(folder / SUMMARY_MD, md), atomic_write(folder / SUMMARY_CSV, buf.getvalue())


def read_summary(path) -> list[dict]:
    """summary.csv -> list of dicts with numbers parsed (empty -> None)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                if k in ("name", "diverged", "metric"):
                    parsed[k] = v
                elif k in ("penalized", "tested"):
                    parsed[k] = v == "True"
                elif v == "":
                    parsed[k] = None
                elif k in ("seeds", "best_epoch", "overfitting_epoch"):
                    parsed[k] = int(v)
                else:
                    parsed[k] = float(v)
            out.append(parsed)
    return out


# --- run folders -----------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A run folder read back: config.json, status.json, histories (stacked) and summary rows.

    state: "running" (a process is training into it), "interrupted" (stopped or killed before
    the end; `--resume` continues it) or "finished" (status.json; "running" in a folder whose
    lock nobody holds is a killed run, so "interrupted"). The histories of an unfinished run
    hold the epochs written so far (`epochs_present`); its summary rows may be stale.
    divergence_threshold: the one the run marked divergence with (config.json); infinite for a
    run from an older jaxreg, which marked only NaN and infinite values.
    """

    folder: Path
    config: dict
    status: dict
    histories: dict
    summary: list
    divergence_threshold: float = DIVERGENCE_THRESHOLD
    state: str = "finished"

    @property
    def epochs(self) -> np.ndarray:
        """Epoch numbers (from 1) of the first variant's history."""
        first = next(iter(self.histories.values()), None)
        return np.arange(1, (0 if first is None else first["loss"].shape[1]) + 1)

    @property
    def epochs_present(self) -> dict[str, int]:
        """{variant: epochs in its history} (all its seeds have them)."""
        return {name: int(h["loss"].shape[1]) for name, h in self.histories.items()}

    @property
    def finished(self) -> bool:
        return self.state == "finished"


def run_state(folder, status: Mapping) -> str:
    """"running", "interrupted" or "finished", from status.json and whether the folder's lock is held."""
    from jaxreg import runfolder  # runfolder imports this module

    state = status.get("state")
    if state == "finished":
        return "finished"
    if state == "running" and runfolder.lock_held(folder):
        return "running"
    return "interrupted"


def load_run(folder) -> Run:
    """Read a run folder, running, interrupted or finished: `run.histories["l2"]["val_data_loss"]` is [seeds, epochs]."""
    folder = Path(folder)
    if not (folder / HISTORY_JSONL).is_file() and not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has neither {HISTORY_JSONL} nor {CONFIG_FILE}: not a jaxreg run folder")
    config = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
    status = read_json(folder / STATUS_FILE) if (folder / STATUS_FILE).is_file() else {}
    histories = read_history(folder / HISTORY_JSONL) if (folder / HISTORY_JSONL).is_file() else {}
    names = [v["name"] for v in config.get("variants", [])]
    if names and set(histories) <= set(names):
        histories = {n: histories[n] for n in names if n in histories}
    summary = read_summary(folder / SUMMARY_CSV) if (folder / SUMMARY_CSV).is_file() else []
    threshold = config.get("config", {}).get("divergence_threshold", math.inf)
    state = run_state(folder, status) if status else ("finished" if summary else "interrupted")
    return Run(folder, config, status, histories, summary, float(threshold), state)

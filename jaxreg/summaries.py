"""Summaries of a run: one `VariantSummary` per variant over its seeds, its tables and summary.md/.csv.

Definitions (all on the *mean over seeds* of a metric, per epoch; which epochs count, the best
epoch and the overfitting onset are `jaxreg.selection`'s):
  * best epoch: the epoch of the lowest mean validation *data* loss among the epochs where no
    seed has diverged.
  * honest early stopping (`early_stopping`, with test columns): per seed, the epoch chosen
    on validation and the test loss there, against the epoch chosen on the test set (the
    book's protocol) and the test loss there; summary.md's second table.
  * overfitting onset: the first epoch after the best one from which the mean validation data
    loss stays above (1 + tolerance) x its minimum until the last epoch; None when the last
    epoch is still within that band (no overfitting seen yet).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxreg import selection
from jaxreg.fileio import SUMMARY_CSV, SUMMARY_MD, atomic_write
from jaxreg.history import has_test, is_penalized, task_metric
from jaxreg.selection import DIVERGENCE_THRESHOLD, OVERFITTING_TOLERANCE, masked


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
    # the variant's optimizer and learning-rate schedule as `specs.describe_training` names them ("" unknown)
    optimizer: str = ""
    schedule: str = ""
    # With a test split (history columns test_*; `early_stopping`), per seed, then mean/std over seeds:
    tested: bool = False  # the history has test columns; the fields below are NaN without
    chosen_epoch_mean: float = math.nan  # the epoch each seed's validation chooses (its lowest val data loss)
    chosen_epoch_std: float = math.nan
    chosen_test_data_loss_mean: float = math.nan  # the test data loss at that epoch: the honest estimate
    chosen_test_data_loss_std: float = math.nan
    chosen_test_metric_mean: float = math.nan  # the task's test metric at that epoch
    chosen_test_metric_std: float = math.nan
    oracle_epoch_mean: float = (
        math.nan
    )  # the epoch the test set chooses (its lowest test data loss): the book's protocol
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
    "chosen_epoch",
    "chosen_test_data_loss",
    "chosen_test_metric",
    "oracle_epoch",
    "oracle_test_data_loss",
    "optimism",
)


def early_stopping(h: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Honest early stopping against the book's protocol, per seed, for a history with test columns.

    chosen_epoch (from 1): each seed's first epoch of lowest validation data loss before it
    diverged (`selection.early_stopping_epochs`; what training keeps as .best parameters); chosen_test_*:
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
    test, test_metric = masked(h, "test_data_loss"), masked(h, f"test_{metric}")
    out = {name: np.full(test.shape[0], np.nan) for name in TESTED_FIELDS}
    for s, (chosen, oracle) in enumerate(zip(*selection.early_stopping_epochs(h))):
        if chosen is not None:
            out["chosen_epoch"][s] = chosen + 1
            out["chosen_test_data_loss"][s] = test[s, chosen]
            out["chosen_test_metric"][s] = test_metric[s, chosen]
        if oracle is not None:
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
    histories,
    tolerance: float = OVERFITTING_TOLERANCE,
    divergence_threshold: float | None = None,
    training: Mapping[str, tuple[str, str]] | None = None,
) -> list[VariantSummary]:
    """The summary of every variant (definitions in the module docstring and `jaxreg.selection`).

    Divergence as the histories mark it ("diverged", set by `stack`), or, given
    `divergence_threshold`, marked again with that threshold (e.g. to re-read a run). `training`:
    {variant: (optimizer, schedule)} as `specs.training_descriptions` names them, for the tables.
    """
    training = training or {}
    out = []
    for name, h in histories.items():
        if divergence_threshold is not None:
            h = {**h, "diverged": selection.diverged_mask(h, divergence_threshold)}
        best = selection.variant_best_epoch(h)

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
                overfitting_epoch=selection.overfitting_onset(selection.choice_curve(h), tolerance),
                diverged=tuple(
                    (int(seed), int(np.argmax(row)) + 1) for seed, row in zip(h["seeds"], h["diverged"]) if row.any()
                ),
                penalized=is_penalized(h),
                metric=metric,
                optimizer=training.get(name, ("", ""))[0],
                schedule=training.get(name, ("", ""))[1],
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


TRAINING_FIELDS = ("optimizer", "schedule")  # VariantSummary's description of how a variant trains


def differing_training(summaries: Sequence[VariantSummary]) -> tuple[str, ...]:
    """The TRAINING_FIELDS whose description differs between the variants: the table's own columns."""
    return tuple(f for f in TRAINING_FIELDS if len({getattr(s, f) for s in summaries}) > 1)


def shared_training_line(summaries: Sequence[VariantSummary]) -> str:
    """One line naming the optimizer and schedule every variant shares (those that differ are columns);
    "" when they differ or are unknown."""
    differing = differing_training(summaries)
    shared = [f"{f} {getattr(summaries[0], f)}" for f in TRAINING_FIELDS if summaries and f not in differing]
    shared = [text for text in shared if text.split(" ", 1)[1]]
    return f"Every variant: {'; '.join(shared)}." if shared else ""


def summary_table(summaries: Sequence[VariantSummary]) -> str:
    """A Markdown table (readable as plain text too) with one row per variant; an optimizer and a schedule
    column where the variants differ in them, else one line above the table naming the shared ones."""
    differing = differing_training(summaries)
    rows = [
        [
            s.name,
            *(getattr(s, f) for f in differing),
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
    header = summary_columns(summaries[0].metric if summaries else "accuracy")
    table = _markdown((header[0], *differing, *header[1:]), rows)
    line = shared_training_line(summaries)
    return f"{line}\n\n{table}" if line else table


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
    histories: Mapping | None = None,
):
    """summary.md (table + definitions) and summary.csv (every field, empty for missing values). With the stacked
    `histories` of a run that `ranks_configurations`, summary.md opens with the ten best configurations."""
    folder = Path(folder)
    notes = summary_notes(tolerance, divergence_threshold)
    top = top_configurations_sections(histories) if histories is not None and ranks_configurations(histories) else ""
    every = f"## All {len(summaries)} variants\n\n" if top else ""
    md = (f"# {title}\n\n" if title else "") + top + every + summary_table(summaries) + "\n\n" + notes + "\n"
    tested = early_stopping_table(summaries)
    if tested:
        md += "\n## Honest early stopping: the test loss at the epoch chosen on validation and on test\n\n"
        md += tested + "\n\n" + early_stopping_notes() + "\n"
    fields = [f.name for f in dataclasses.fields(VariantSummary)]
    if not any(s.tested for s in summaries):  # summary.csv as before a test split existed
        fields = fields[: fields.index("tested")]
    if not any(getattr(s, f) for s in summaries for f in TRAINING_FIELDS):  # and before optimizers were named
        fields = [f for f in fields if f not in TRAINING_FIELDS]
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
                if k in ("name", "diverged", "metric", *TRAINING_FIELDS):
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


# --- configurations compared over seeds, paired (same seed: same initialization, same batches) ----

TIE_STANDARD_ERRORS = 2.0  # a configuration is as good as the best within this many standard errors


def seed_values(h: Mapping[str, np.ndarray], which: str = "best") -> np.ndarray:
    """Per seed, the validation data loss at the variant's best epoch (`selection.variant_best_epoch`, the
    lowest mean over seeds, as summary.md's column) or at its final one; NaN where a seed has diverged there."""
    values = masked(h, "val_data_loss")
    epoch = selection.variant_best_epoch(h) if which == "best" else values.shape[1] - 1
    return np.full(values.shape[0], np.nan) if epoch is None else values[:, epoch]


def paired_tie(values: np.ndarray, best: np.ndarray, standard_errors: float = TIE_STANDARD_ERRORS) -> bool:
    """Whether `values` [seeds] is indistinguishable from `best` [seeds], paired by seed: the mean of the
    differences is at most `standard_errors` x its standard error (std over seeds / sqrt(seeds)). With one
    seed there is no noise estimate: only a value at or below the best ties. Never with a NaN."""
    differences = np.asarray(values, dtype=np.float64) - np.asarray(best, dtype=np.float64)
    if differences.size == 0 or not np.isfinite(differences).all():
        return False
    n = differences.size
    error = differences.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    return bool(differences.mean() <= standard_errors * error)


def ties_with_best(values: Mapping) -> tuple:
    """(the key of the lowest mean, {key: `paired_tie` with it}) of {key: values [seeds]}, seeds in the same
    order in every entry; entries with a NaN never tie and are never the best ((None, all False) if all have)."""
    means = {k: float(np.mean(v)) for k, v in values.items() if np.isfinite(v).all() and np.size(v)}
    if not means:
        return None, {k: False for k in values}
    best = min(means, key=means.get)
    return best, {k: paired_tie(v, values[best]) for k, v in values.items()}


def check_same_seeds(histories: Mapping) -> None:
    """ValueError unless every variant has the same seeds (what a paired comparison pairs)."""
    seeds = {tuple(np.asarray(h["seeds"]).tolist()) for h in histories.values() if "seeds" in h}
    if len(seeds) > 1:
        raise ValueError(f"a paired comparison needs the same seeds in every variant; found {sorted(seeds)}")


def top_configurations_table(histories: Mapping, which: str = "best", n: int = 10) -> str:
    """A Markdown table of the `n` variants with the lowest mean `seed_values`: mean ± std over seeds, the paired
    difference to the best (mean ± std over seeds) and whether it is indistinguishable from it (`paired_tie`)."""
    check_same_seeds(histories)
    values = {name: seed_values(h, which) for name, h in histories.items()}
    best, ties = ties_with_best(values)
    if best is None:
        values = {}
    ranked = sorted((k for k in values if np.isfinite(values[k]).all()), key=lambda k: float(np.mean(values[k])))
    rows = [
        [
            str(rank),
            name,
            str(values[name].size),
            _pm(*_mean_std(values[name])),
            _pm(*_mean_std(values[name] - values[best])),
            "yes" if ties[name] else "no",
        ]
        for rank, name in enumerate(ranked[:n], start=1)
    ]
    header = (
        "rank",
        "configuration",
        "seeds",
        f"{which} val data loss",
        "paired difference to the best",
        f"within {TIE_STANDARD_ERRORS:g} SE of the best",
    )
    return _markdown(header, rows)


TOP_CONFIGURATIONS = 10  # summary.md's ranking of the best configurations: this many rows


def ranks_configurations(histories: Mapping) -> bool:
    """Whether summary.md ranks the best configurations (`top_configurations_sections`): with two seeds or more
    (a paired comparison needs a noise estimate), the same seeds in every variant (what it pairs), and more
    variants than the ranking has rows (with fewer, the summary table already shows every one at a glance)."""
    seeds = {tuple(np.asarray(h["seeds"]).tolist()) for h in histories.values() if "seeds" in h}
    return len(histories) > TOP_CONFIGURATIONS and len(seeds) == 1 and len(next(iter(seeds))) >= 2


def tie_count(histories: Mapping, which: str = "best") -> int:
    """How many variants (the best among them) are indistinguishable from the best (`ties_with_best`)."""
    _, ties = ties_with_best({name: seed_values(h, which) for name, h in histories.items()})
    return sum(ties.values())


def top_configurations_sections(histories: Mapping, n: int = TOP_CONFIGURATIONS) -> str:
    """Markdown sections: the `n` best configurations by best and by final validation data loss
    (`top_configurations_table`), and how a tie with the best is decided."""
    sections = [
        f"## The {n} best configurations by {which} validation data loss\n\n"
        + top_configurations_table(histories, which, n)
        + f"\n\n{tie_count(histories, which)} of {len(histories)} configurations are within "
        f"{TIE_STANDARD_ERRORS:g} SE of the best.\n\n"
        for which in ("best", "final")
    ]
    note = (
        f"Mean ± std over seeds; paired difference: per seed (same initialization, same batches), the "
        f"configuration minus the best, mean ± std over seeds; within {TIE_STANDARD_ERRORS:g} SE: that mean is at "
        f"most {TIE_STANDARD_ERRORS:g} standard errors (std / sqrt(seeds)) above 0, indistinguishable from the "
        "best within the seed noise.\n\n"
    )
    return "".join(sections) + note

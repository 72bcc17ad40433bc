"""Tables of a swept axis: one row per series (e.g. per model), one column per axis value.

What a learning curve or a label-noise sweep reads as numbers beside its figure: the best and
final validation loss, and how far each model fits its training labels (final training
accuracy, and the first epoch at which it reaches a level, e.g. 0.99 for memorized labels).
Means ± sample std over seeds; "best" is the epoch of the lowest mean validation data loss
(`selection.variant_best_epoch`, as in `summaries.summarize`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from jaxreg.history import task_metric
from jaxreg.selection import masked, variant_best_epoch
from jaxreg.specs import shared_and_own_settings


def _series(values: Mapping[str, float], series: Mapping[str, str]) -> dict[str, dict[float, str]]:
    out: dict[str, dict[float, str]] = {}
    for name, value in values.items():
        out.setdefault(series.get(name, name), {})[float(value)] = name
    return out


def _pm(values: np.ndarray, digits: int) -> str:
    values = values[np.isfinite(values)]
    if not values.size:
        return "-"
    std = f" ± {np.std(values, ddof=1):.{digits}f}" if values.size > 1 else ""
    return f"{np.mean(values):.{digits}f}{std}"


def cell(h: Mapping[str, np.ndarray], quantity: str, level: float = 0.99) -> str:
    """One variant's entry: quantity is "best" or "final" (validation data loss), "best_epoch",
    "final_train_metric", "final_val_metric" or "epochs_to_level" (first epoch at which the
    mean training metric reaches `level`; ">E" if it never does within the E epochs)."""
    metric = task_metric(h)
    best = variant_best_epoch(h)
    if quantity == "best":
        return "-" if best is None else _pm(masked(h, "val_data_loss")[:, best], 4)
    if quantity == "best_epoch":
        return "-" if best is None else str(best + 1)
    if quantity == "final":
        return _pm(masked(h, "val_data_loss")[:, -1], 4)
    if quantity == "final_train_metric":
        return _pm(masked(h, metric)[:, -1], 4)
    if quantity == "final_val_metric":
        return _pm(masked(h, f"val_{metric}")[:, -1], 4)
    if quantity == "epochs_to_level":
        reached = np.flatnonzero(masked(h, metric).mean(axis=0) >= level)
        return str(reached[0] + 1) if reached.size else f">{h[metric].shape[1]}"
    raise ValueError(f"unknown quantity {quantity!r}")


def axis_table(
    histories: Mapping,
    values: Mapping[str, float],
    series: Mapping[str, str],
    quantity: str,
    axis: str,
    training: Mapping | None = None,
    **kw,
) -> str:
    """A markdown table of `cell(quantity)`: rows are series, columns the axis values (sorted). `training`
    ({variant: `specs.describe_training`}): a row's label adds the optimizer and schedule settings its series
    has and the others have not (`specs.shared_and_own_settings`), e.g. "adam_l2 (adam)" against "sgd_l2 (sgd)"."""
    groups = _series(values, series)
    members = {label: list(by_value.values()) for label, by_value in groups.items()}
    _, own = shared_and_own_settings({n: training.get(n, ("", "")) for n in values} if training else {}, members, True)
    columns = sorted({v for g in groups.values() for v in g})
    head = (
        f"| {axis} | "
        + " | ".join(f"{v:g}" if not math.isclose(v, round(v)) else f"{int(round(v)):,}" for v in columns)
        + " |"
    )
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for label, by_value in groups.items():
        cells = [cell(histories[by_value[v]], quantity, **kw) if v in by_value else "" for v in columns]
        shown = f"{label} ({own[label]})" if own.get(label) and own[label] != label else label
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

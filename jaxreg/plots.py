"""The study's figures, from stacked histories ({name: {metric: [seeds, epochs]}}, see `jaxreg.history`).

Lines are means over seeds; with more than one seed a band shows the min-max range over
seeds. The *validation data loss* (no penalty) is the solid line; where a variant carries a
penalty, Keras' val_loss (data loss + penalty, what the book plots) is added dashed.
Diverged epochs are left out. Uses matplotlib's object API (no pyplot, no global state).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from jaxreg.history import has_test, is_penalized, task_metric
from jaxreg.selection import masked, variant_best_epoch
from jaxreg.specs import shared_and_own_settings
from jaxreg.summaries import early_stopping

REFERENCE_COLOR = "0.45"
# Matplotlib's tab10, reordered so that neighbours differ in hue and lightness (tab10's purple and
# brown, next to each other, looked alike as l1 and l1_l2); more lines than colours get dashes.
QUALITATIVE = ("C0", "C1", "C2", "C3", "C9", "C4", "C8", "C6", "C5", "C7")
DPI = 110
AXIS_LABELS = {
    "width": "hidden width w of the (w, w) model",
    "l1": "L1 penalty strength",
    "l2": "L2 penalty strength",
    "dropout_rate": "dropout rate",
    "learning_rate": "learning rate",
    "weight_decay": "decoupled weight decay",
    "l1_proximal": "proximal L1 strength",
    "momentum": "SGD momentum",
    "b1": "first-moment decay b1",
    "b2": "second-moment decay b2",
    "eps": "optimizer epsilon",
    "decay_rate": "learning-rate decay rate",
    "decay_steps": "learning-rate decay steps",
    "warmup_steps": "learning-rate warmup steps",
    "alpha": "final learning rate (fraction)",
    "train_size": "training examples n",
    "label_noise": "fraction of training labels randomized",
}  # one per sweep axis (jaxreg.config.AXES)
FIT_AXES = ("width", "label_noise")  # axes along which how far a model fits its training labels is the point
LINEAR_AXES = ("dropout_rate", "label_noise", "momentum", "b1", "b2", "alpha", "decay_rate")
LOG_AXES = tuple(axis for axis in AXIS_LABELS if axis not in LINEAR_AXES)


def loss_name(histories: Mapping) -> str:
    """What the data loss is: the squared error for regression (metric mae), else the cross-entropy."""
    first = next(iter(histories.values()), {})
    return "mean squared error" if first and task_metric(first) == "mae" else "cross-entropy"


def _color(i: int) -> str:
    """The i-th line's colour: no two of the first ten alike."""
    return QUALITATIVE[i % len(QUALITATIVE)]


def _log_scale_if_decades(ax, decades: float = 2.0) -> None:
    """A log y-axis where the plotted lines span more than `decades` powers of ten: a training loss
    that falls to 1e-4 (`bigger`) is a flat line at 0 on a linear axis."""
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines()] or [np.zeros(0)])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if ys.size and ys.max() > ys.min() * 10**decades:
        ax.set_yscale("log")
        ax.set_ylabel(ax.get_ylabel() + ", log scale")


def _training(
    names: Sequence[str], training: Mapping | None, groups: Mapping | None = None
) -> tuple[str, dict[str, str]]:
    """(a subtitle line naming the optimizer and schedule every plotted variant shares, {variant or group: its
    label's addition, what only it has}) from {variant: `specs.describe_training`}; ("", {}) without it."""
    if not training:
        return "", {}
    note, own = shared_and_own_settings({n: training.get(n, ("", "")) for n in names}, groups, brief=True)
    return (f"every variant: {note}" if note else ""), own


def _labelled(name: str, own: Mapping[str, str]) -> str:
    """A legend's label: the name, and the optimizer and schedule settings only it has (`_training`)."""
    return f"{name} ({own[name]})" if own.get(name) and own[name] != name else name


def _titled(title: str, note: str, width: int = 120) -> str:
    """A title with a note (`_training`'s shared settings) under it, wrapped at `width` characters."""
    return f"{title}\n{textwrap.fill(note, width)}" if note else title


def _epochs(h) -> np.ndarray:
    return np.arange(1, h["loss"].shape[1] + 1)


def _line(ax, h, metric: str, label: str, color, style: str = "-", marker: str | None = "o") -> None:
    """Mean over seeds and, for several seeds, a min-max band."""
    values = masked(h, metric)
    x = _epochs(h)
    mean = values.mean(axis=0)
    if h["diverged"].any():
        label += f" (diverged from epoch {int(np.argmax(h['diverged'].any(axis=0))) + 1})"
    ax.plot(x, mean, style, color=color, label=label, marker=marker, markersize=3.5, linewidth=1.6)
    if values.shape[0] > 1:
        ax.fill_between(x, np.min(values, axis=0), np.max(values, axis=0), color=color, alpha=0.18, linewidth=0)


def _seed_note(histories) -> str:
    n = max(h["loss"].shape[0] for h in histories.values())
    return f"mean of {n} seeds, band: min-max over seeds" if n > 1 else "1 seed"


def _epoch_axis(ax, n_epochs: int) -> None:
    ax.set_xlabel("epoch")
    step = max(1, math.ceil(n_epochs / 10))
    ax.xaxis.set_major_locator(FixedLocator(list(range(1, n_epochs + 1, step))))
    ax.grid(alpha=0.3)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_against_reference(
    histories: Mapping, path, reference: str = "original", training: Mapping | None = None
) -> Path:
    """One panel per variant: its validation loss against the reference's, per epoch (the book's comparisons).
    `training`: {variant: `specs.describe_training`}, for the subtitle and legends (`_training`)."""
    others = [n for n in histories if n != reference]
    note, own = _training(list(histories), training)
    ref = histories[reference]
    cols = min(3, len(others))
    rows = math.ceil(len(others) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax, name in zip(axes.flat, others):
        h = histories[name]
        _line(ax, ref, "val_data_loss", f"{reference}: val loss", REFERENCE_COLOR)
        _line(ax, h, "val_data_loss", f"{name}: val data loss" if is_penalized(h) else f"{name}: val loss", "C0")
        if is_penalized(h):
            _line(ax, h, "val_loss", f"{name}: Keras val_loss (+ penalty)", "C3", "--", marker=None)
        # under the title the settings this variant has and not every one (the reference's: in the figure's title)
        ax.set_title(f"{name} vs {reference}" + (f"\n{textwrap.fill(own[name], 48)}" if own.get(name) else ""))
        ax.set_ylabel(f"validation loss ({loss_name(histories)})")
        _epoch_axis(ax, len(_epochs(ref)))
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(others) :]:
        ax.set_visible(False)
    gap = "\n" if cols == 1 else " "  # one panel is too narrow for the title on one line
    width = max(48, 11 * 4 * cols)  # characters a line of the figure's width holds
    title = _titled(f"Validation loss of each variant against {reference}{gap}({_seed_note(histories)})", note, width)
    fig.suptitle(_titled(title, f"{reference}: {own[reference]}" if own.get(reference) else "", width))
    return _save(fig, path)


def plot_train_val(
    histories: Mapping, path, names: Sequence[str] = ("original", "bigger"), training: Mapping | None = None
) -> Path:
    """Validation (left) and training (right) loss of the given models, as the book compares original and bigger."""
    note, own = _training(names, training)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True)
    for i, name in enumerate(names):
        _line(left, histories[name], "val_data_loss", _labelled(name, own), _color(i))
        _line(right, histories[name], "loss", _labelled(name, own), _color(i))
    left.set_title("Validation loss")
    right.set_title("Training loss (Keras: running mean over the epoch)")
    for ax in (left, right):
        ax.set_ylabel(f"loss ({loss_name(histories)})")
        _epoch_axis(ax, len(_epochs(histories[names[0]])))
        _log_scale_if_decades(ax)
        ax.legend()
    fig.suptitle(_titled(f"{' vs '.join(names)}: training and validation loss ({_seed_note(histories)})", note))
    return _save(fig, path)


def plot_curves(
    histories: Mapping,
    path,
    values: Mapping[str, float] | None = None,
    axis: str | None = None,
    training: Mapping | None = None,
) -> Path:
    """Every variant's validation data loss per epoch in one panel; colored by `values` when given."""
    names = list(histories)
    note, own = _training(names, training)
    columns = 2 if len(names) > 16 else 1
    longest = max(
        len(_labelled(n, own)) for n in names
    )  # the legend beside the panel widens the figure, not the legend
    fig = Figure(figsize=(8 + 0.065 * columns * max(0, longest - 12), 5), layout="constrained")
    ax = fig.subplots()
    if values:
        from matplotlib import colormaps

        ranks = np.argsort(np.argsort([values[n] for n in names]))
        colors = [colormaps["viridis"](r / max(1, len(names) - 1)) for r in ranks]
    else:
        colors = [_color(i) for i in range(len(names))]
    for i, (name, color) in enumerate(zip(names, colors)):  # past 10 colors, dashed: no two lines look alike
        style = "-" if values or i < 10 else "--"
        _line(ax, histories[name], "val_data_loss", _labelled(name, own), color, style, marker=None)
    ax.set_ylabel(f"validation data loss ({loss_name(histories)}, no penalty)")
    _epoch_axis(ax, len(_epochs(histories[names[0]])))
    _log_scale_if_decades(ax)
    fig.legend(  # beside the panel: inside, it covered a curve
        *ax.get_legend_handles_labels(),
        loc="outside right upper",
        fontsize="small",
        ncols=columns,
        title=AXIS_LABELS.get(axis) if axis else None,
    )
    # over the panel, not the figure: a title over the figure ran into the legend beside the panel
    ax.set_title(_titled(f"Validation data loss per epoch\n({_seed_note(histories)})", note, 70))
    return _save(fig, path)


def plotted_epoch(h, which: str) -> int | None:
    """The epoch (from 0) a variant's point is drawn at: "best" (`selection.variant_best_epoch`: the lowest
    mean validation data loss; None when every epoch has a diverged seed) or "final" (the last)."""
    return variant_best_epoch(h) if which == "best" else h["loss"].shape[1] - 1


def _at_epoch(histories, names, metric: str, which: str):
    """Per variant: mean, min and max over seeds of `metric` at the `plotted_epoch` (NaN where there is none)."""
    mean, lo, hi = [], [], []
    for n in names:
        h = histories[n]
        epoch = plotted_epoch(h, which)
        per_seed = masked(h, metric)[:, epoch] if epoch is not None else np.full(h[metric].shape[0], np.nan)
        mean.append(per_seed.mean()), lo.append(per_seed.min()), hi.append(per_seed.max())
    return map(np.asarray, (mean, lo, hi))


def plot_against_axis(
    histories: Mapping, values: Mapping[str, float], axis: str, path, training: Mapping | None = None
) -> Path:
    """Best and final validation data loss against the swept value (log x for widths and strengths).

    A second panel shows Keras' val_loss (data loss + penalty) where it differs, so that the
    penalty's scale does not flatten the data-loss panel. Error bars: min-max over seeds. A
    value of 0 (no penalty) has no place on a log axis: it is drawn as a dotted horizontal line.
    """
    names = sorted(histories, key=lambda n: values[n])
    x = np.array([values[n] for n in names], dtype=np.float64)
    log = axis in LOG_AXES
    several_seeds = max(h["loss"].shape[0] for h in histories.values()) > 1
    panels = [
        (
            "Validation data loss (no penalty)",
            [
                ("best epoch (lowest mean val data loss)", "val_data_loss", "best", "C0", "-", "s"),
                ("final epoch", "val_data_loss", "final", "C1", "--", "o"),
            ],
        ),
    ]
    if any(is_penalized(histories[n]) for n in names):
        panels.append(
            (
                "Keras val_loss (data loss + penalty)",
                [
                    ("best epoch (lowest mean val data loss)", "val_loss", "best", "C0", "-", "s"),
                    ("final epoch", "val_loss", "final", "C1", "--", "o"),
                ],
            )
        )
    fig = Figure(figsize=(7 * len(panels), 5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels):
        for label, metric, which, color, style, marker in series:
            mean, lo, hi = _at_epoch(histories, names, metric, which)
            keep = x > 0 if log else np.ones_like(x, dtype=bool)
            yerr = np.array([mean - lo, hi - mean])[:, keep] if several_seeds else None
            ax.errorbar(
                x[keep],
                mean[keep],
                yerr=yerr,
                fmt=style,
                marker=marker,
                color=color,
                label=label,
                capsize=3,
                markersize=5,
            )
            for zero in np.flatnonzero(~keep):
                ax.axhline(mean[zero], color=color, linestyle=":", linewidth=1.2)
        if log and (x <= 0).any():
            ax.plot([], [], ":", color="0.3", label=f"dotted: the same at {axis} = 0 (no place on a log axis)")
        if log:
            ax.set_xscale("log", base=2 if axis == "width" else 10)
            if axis == "width":
                ax.xaxis.set_major_locator(FixedLocator(x[x > 0]))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels([f"{v:g}" for v in x[x > 0]])
        ax.set_title(title)
        ax.set_xlabel(AXIS_LABELS.get(axis, axis) + (" (log scale)" if log else ""))
        ax.set_ylabel(f"validation loss ({loss_name(histories)})")
        ax.grid(alpha=0.3, which="both" if log and axis != "width" else "major")
    # one legend below the panels (their series are the same): inside a panel it covered a curve
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="small")
    note = _seed_note(histories).replace("band", "error bars")
    separator = " " if len(panels) > 1 else "\n"  # one panel is too narrow for the title on one line
    title = f"Best and final validation loss against {AXIS_LABELS.get(axis, axis).split(' w ')[0]}{separator}({note})"
    fig.suptitle(_titled(title, _training(names, training)[0], 80 * len(panels)))
    return _save(fig, path)


def _series(values: Mapping[str, float], series: Mapping[str, str]) -> dict[str, list[str]]:
    """{series label: its variant names sorted by their axis value}, in first-seen order."""
    out: dict[str, list[str]] = {}
    for name in values:
        out.setdefault(series.get(name, name), []).append(name)
    return {label: sorted(names, key=lambda n: values[n]) for label, names in out.items()}


def _set_axis_scale(ax, axis: str, x: np.ndarray) -> None:
    if axis in LOG_AXES:
        ax.set_xscale("log", base=2 if axis == "width" else 10)
        if axis in ("width", "train_size"):
            ax.xaxis.set_major_locator(FixedLocator(x[x > 0]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{v:,.0f}" for v in x[x > 0]])
    ax.set_xlabel(AXIS_LABELS.get(axis, axis) + (" (log scale)" if axis in LOG_AXES else ""))
    ax.grid(alpha=0.3)


def _series_line(ax, histories, names, values, metric: str, which: str, label: str, color, style="-", marker="o"):
    """One series' mean over seeds at the best or final epoch against the axis, with a min-max band over seeds."""
    x = np.array([values[n] for n in names], dtype=np.float64)
    mean, lo, hi = _at_epoch(histories, names, metric, which)
    ax.plot(x, mean, style, color=color, marker=marker, markersize=4, linewidth=1.6, label=label)
    if max(histories[n]["loss"].shape[0] for n in names) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
    return x


def plot_series_against_axis(
    histories: Mapping,
    values: Mapping[str, float],
    series: Mapping[str, str],
    axis: str,
    path,
    training: Mapping | None = None,
) -> Path:
    """Best (left) and final (right) validation data loss against the swept value, one line per
    series (e.g. per model in a learning curve); bands: min-max over seeds."""
    groups = _series(values, series)
    shared, own = _training(list(values), training, groups)
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, which, title in zip(
        axes, ("best", "final"), ("at the best epoch (lowest mean val data loss)", "at the final epoch")
    ):
        every_x = []
        for i, (label, names) in enumerate(groups.items()):
            line = _labelled(label, own)
            every_x.append(_series_line(ax, histories, names, values, "val_data_loss", which, line, _color(i)))
        _set_axis_scale(ax, axis, np.unique(np.concatenate(every_x)))
        ax.set_title(f"Validation data loss {title}")
        ax.set_ylabel(f"validation data loss ({loss_name(histories)})")
        ax.legend(fontsize="small")
    note = _seed_note(histories)
    fig.suptitle(_titled(f"Validation loss against {AXIS_LABELS.get(axis, axis)} ({note})", shared))
    return _save(fig, path)


def plot_fit_against_axis(
    histories: Mapping,
    values: Mapping[str, float],
    series: Mapping[str, str],
    axis: str,
    path,
    training: Mapping | None = None,
) -> Path:
    """Training (solid) and validation (dashed) loss and metric at the final epoch against the
    swept value, one color per series: how far each model fits its (noisy) training labels and
    what that does on the untouched validation labels. Bands: min-max over seeds."""
    groups = _series(values, series)
    shared, own = _training(list(values), training, groups)
    metric = task_metric(next(iter(histories.values())))
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (train_metric, what) in zip(axes, (("loss", "loss"), (metric, metric))):
        every_x = []
        for i, (label, names) in enumerate(groups.items()):
            color, label = _color(i), _labelled(label, own)
            every_x.append(
                _series_line(ax, histories, names, values, train_metric, "final", f"{label}: training", color, "-", "o")
            )
            _series_line(
                ax, histories, names, values, f"val_{train_metric}", "final", f"{label}: validation", color, "--", "s"
            )
        _set_axis_scale(ax, axis, np.unique(np.concatenate(every_x)))
        ax.set_title(
            f"{what} at the final epoch" + (" (training: on the labels it trains on)" if axis in FIT_AXES else "")
        )
        ax.set_ylabel(what if what != "loss" else f"loss ({loss_name(histories)})")
        ax.legend(fontsize="small")
    epochs = next(iter(histories.values()))["loss"].shape[1]
    title = f"Training and validation fit after {epochs} epochs against {AXIS_LABELS.get(axis, axis)}"
    fig.suptitle(_titled(f"{title} ({_seed_note(histories)})", shared))
    return _save(fig, path)


EARLY_STOPPING_FIGURE = "honest_early_stopping.png"


def tested(histories: Mapping) -> bool:
    """Whether the histories have test columns (data with a test split), so `make_figures` draws EARLY_STOPPING_FIGURE."""
    return any(has_test(h) for h in histories.values())


def plot_early_stopping(histories: Mapping, path, training: Mapping | None = None) -> Path:
    """The book's protocol against honest early stopping, per variant (histories with test columns).

    Left: the test data loss at the epoch chosen on the test set (the book: its validation set
    is the test set) and at the epoch chosen on the held-out validation set (honest); right:
    the epochs chosen. Per seed (`summaries.early_stopping`), then the mean over seeds with the
    sample std as error bars. The gap on the left is the book's protocol's optimism.
    """
    names = [n for n in histories if has_test(histories[n])]
    shared, own = _training(names, training)
    per_variant = [early_stopping(histories[n]) for n in names]
    x = np.arange(len(names), dtype=np.float64)
    fig = Figure(figsize=(max(8.0, 0.9 * len(names) + 5), 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3, 2)})
    series = [
        ("book: epoch chosen on the test set", "oracle", "C3", "s", -0.1),
        ("honest: epoch chosen on held-out validation", "chosen", "C0", "o", 0.1),
    ]

    def stats(values):
        finite = [v[np.isfinite(v)] for v in values]
        mean = np.array([f.mean() if f.size else np.nan for f in finite])
        std = np.array([f.std(ddof=1) if f.size > 1 else np.nan for f in finite])
        return mean, std

    for label, which, color, marker, shift in series:
        for ax, column in ((left, f"{which}_test_data_loss"), (right, f"{which}_epoch")):
            mean, std = stats([v[column] for v in per_variant])
            yerr = None if np.isnan(std).all() else np.nan_to_num(std)
            ax.errorbar(x + shift, mean, yerr=yerr, fmt=marker, color=color, label=label, capsize=4, markersize=6)
    optimism, _ = stats([v["optimism"] for v in per_variant])
    for xi, gap in zip(x, optimism):  # the paired difference, which the overlapping error bars hide
        if np.isfinite(gap):
            left.annotate(
                f"+{gap:.4f}" if gap >= 0 else f"{gap:.4f}",
                (xi, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, -4),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize="small",
                color="0.3",
            )
    left.margins(y=0.15)
    for ax in (left, right):
        ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(alpha=0.3, axis="y")
    left.set_ylabel(f"test data loss ({loss_name(histories)}) at the chosen epoch")
    left.set_title("Test loss reported (grey: honest - book, the book's optimism)")
    right.set_ylabel("epoch chosen (from 1)")
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_title("Epoch chosen")
    n = max(h["loss"].shape[0] for h in histories.values())
    note = f"mean of {n} seeds, error bars: sample std over seeds" if n > 1 else "1 seed"
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    title = _titled(f"Early stopping on the test set (the book) against held-out validation (honest)\n({note})", shared)
    # what each variant has and not every one, in the title: too long for a tick label
    each = "; ".join(f"{n}: {own[n]}" for n in names if own.get(n))
    fig.suptitle(_titled(title, each, int(11 * fig.get_figwidth())))
    return _save(fig, path)


def figure_files(names: Sequence[str], axis_name: str | None = None, tested: bool = False) -> list[str]:
    """The file names `make_figures` writes for these variants, in order (so a run folder can record them first).

    `tested`: the histories have test columns (`plots.tested`), which adds EARLY_STOPPING_FIGURE."""
    extra = [EARLY_STOPPING_FIGURE] if tested else []
    if axis_name is not None:
        against = [f"val_loss_vs_{axis_name}.png"] if len(names) > 1 else []
        fit = [f"fit_vs_{axis_name}.png"] if axis_name in FIT_AXES and len(names) > 1 else []
        return ["val_loss_curves.png", *against, *fit, *extra]
    reference = "original" if "original" in names else names[0]
    return [
        "val_loss_curves.png",
        *([f"vs_{reference}.png"] if len(names) > 1 else []),
        *(["original_vs_bigger.png"] if "original" in names and "bigger" in names else []),
        *extra,
    ]


def make_figures(histories: Mapping, folder, axis: tuple | None = None, training: Mapping | None = None) -> list[Path]:
    """The figures that fit these variants (`figure_files`); returns their paths.

    Always val_loss_curves.png. With `axis` (name, {variant: value}[, {variant: series}]):
    val_loss_vs_<axis>.png, one line per series when there are several (and for width and
    label noise fit_vs_<axis>.png: training against validation fit). Without: vs_original.png (each variant
    against "original", else
    the first variant) and, with both "original" and "bigger", original_vs_bigger.png. With
    test columns (data with a test split): honest_early_stopping.png (`plot_early_stopping`).
    `training` ({variant: `specs.describe_training`}, e.g. `specs.training_descriptions(variants)`): every
    figure names the optimizer and schedule, in its subtitle what all share, in its legends what differs.
    """
    folder = Path(folder)
    names = list(histories)
    axis_name, values, series = (tuple(axis) + (None,))[:3] if axis is not None else (None, None, None)
    series = series or {}
    several = len(set(series.get(n, n) for n in names)) > 1 if series else False
    reference = "original" if "original" in histories else names[0]
    against = (
        (lambda path: plot_series_against_axis(histories, values, series, axis_name, path, training))
        if several
        else (lambda path: plot_against_axis(histories, values, axis_name, path, training))
    )
    draw = {
        "val_loss_curves.png": lambda path: plot_curves(
            histories, path, None if several else values, axis_name, training
        ),
        f"val_loss_vs_{axis_name}.png": against,
        f"fit_vs_{axis_name}.png": lambda path: plot_fit_against_axis(
            histories, values, series, axis_name, path, training
        ),
        f"vs_{reference}.png": lambda path: plot_against_reference(histories, path, reference, training),
        "original_vs_bigger.png": lambda path: plot_train_val(histories, path, training=training),
        EARLY_STOPPING_FIGURE: lambda path: plot_early_stopping(histories, path, training),
    }
    return [draw[name](folder / name) for name in figure_files(names, axis_name, tested(histories))]


# --- a metric over a 2-D grid, one heatmap per family (e.g. Adam + L2 against AdamW) ------------

HEATMAP_ROWS = (
    ("val_data_loss", "best", "best validation data loss"),
    ("val_data_loss", "final", "final validation data loss"),
    ("val_error", "best", "validation error at the best epoch"),
    ("val_error", "final", "final validation error"),
)


def grid_cell_value(h, metric: str, which: str) -> float:
    """Mean over seeds of `metric` at the variant's best or final epoch (`plotted_epoch`); "val_error" is
    1 - val_accuracy. NaN where there is no such epoch or a seed has diverged there."""
    epoch = plotted_epoch(h, which)
    if epoch is None:
        return math.nan
    values = 1.0 - masked(h, "val_accuracy") if metric == "val_error" else masked(h, metric)
    return float(values[:, epoch].mean())


def grid_matrices(histories: Mapping, cells: Mapping[str, tuple], metric: str, which: str) -> dict:
    """{family: (x values, y values, matrix[y, x])} of `grid_cell_value`; `cells` maps a variant to
    (family, x, y); a cell no variant fills is NaN. A variant may appear in several families
    (cells' value a list of such triples), e.g. an unregularized reference at strength 0 in both."""
    out: dict = {}
    for name, triples in cells.items():
        for family, x, y in [triples] if isinstance(triples[0], str) else triples:
            out.setdefault(family, {})[(float(x), float(y))] = grid_cell_value(histories[name], metric, which)
    matrices = {}
    for family, points in out.items():
        xs, ys = sorted({x for x, _ in points}), sorted({y for _, y in points})
        grid = np.full((len(ys), len(xs)), np.nan)
        for (x, y), value in points.items():
            grid[ys.index(y), xs.index(x)] = value
        matrices[family] = (xs, ys, grid)
    return matrices


def _heatmap(ax, xs, ys, grid, vmin, vmax, cmap):
    """One panel: cells coloured on a shared scale, each cell's value written in it, and per column (x)
    the row with the lowest value boxed (where the best y lies for each x)."""
    image = ax.imshow(grid, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    middle = (vmin + vmax) / 2
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            color = "black" if value > middle else "white"  # viridis: dark at the low end
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize="small", color=color)
    for j in range(grid.shape[1]):
        column = grid[:, j]
        if np.isfinite(column).any():
            i = int(np.nanargmin(column))
            ax.add_patch(_box(j, i))
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" if y else "0 (none)" for y in ys])
    return image


def _box(j: int, i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="C3", linewidth=2.2)


def plot_grid_heatmaps(
    histories: Mapping,
    cells: Mapping[str, tuple],
    path,
    x_label: str,
    y_labels: Mapping[str, str] | str,
    rows: Sequence[tuple[str, str, str]] = HEATMAP_ROWS,
    title: str | None = None,
    training: Mapping | None = None,
) -> Path:
    """Heatmaps of a metric over a 2-D grid (x, y), one column of panels per family and one row per
    (metric, "best"|"final", label) in `rows` (default: best and final validation data loss and
    validation error); each row shares one colour scale. Red boxes: the lowest value per x.

    `cells`: {variant: (family, x, y)} or a list of such triples (`grid_matrices`). `y_labels`: one
    y-axis label, or one per family (e.g. "L2 penalty c" and "decay per step lam"). `training`:
    {variant: `specs.describe_training`}; the subtitle names what every variant shares.
    """
    per_row = [(grid_matrices(histories, cells, metric, which), label) for metric, which, label in rows]
    families = list(per_row[0][0])
    fig = Figure(figsize=(4.6 * len(families) + 1.2, 3.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(families), squeeze=False)
    for r, (matrices, label) in enumerate(per_row):
        finite = np.concatenate([m[2][np.isfinite(m[2])] for m in matrices.values()] + [np.zeros(0)])
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        for c, family in enumerate(families):
            xs, ys, grid = matrices[family]
            image = _heatmap(axes[r, c], xs, ys, grid, vmin, vmax, "viridis")
            axes[r, c].set_title(f"{family}: {label}", fontsize="medium")
            axes[r, c].set_xlabel(x_label)
            axes[r, c].set_ylabel(y_labels if isinstance(y_labels, str) else y_labels.get(family, ""))
        fig.colorbar(image, ax=list(axes[r]), shrink=0.9, label=label)
    note = _seed_note(histories).split(",")[0]
    shared = _training([n for n in cells if n in histories], training)[0]
    fig.suptitle(_titled(f"{title or 'A metric over the grid'} ({note}; red box: lowest per column)", shared))
    return _save(fig, path)

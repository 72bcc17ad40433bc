"""Figures of a factorial grid width x L2 x dropout with seeds (the `grid` preset), readable in a minute.

From stacked histories and each variant's place on the grid (`grid_factors`), three figures:
  grid_loss_heatmaps.png  L2 x dropout, one panel per width, rows: best and final validation data
                          loss (seed means, one colour scale per row, from the best cell to the
                          median one: `colour_range`); red box: the best cell of the whole grid;
                          dashed box: cells indistinguishable from it (paired over seeds,
                          `summaries.paired_tie`).
  grid_main_effects.png   each factor's main effect: the loss averaged over the other two factors,
                          mean over seeds, band min-max over seeds.
  grid_interactions.png   dropout's benefit (loss without dropout minus with) against width, and L2's
                          benefit (loss without L2 minus with) against dropout, paired by seed, each
                          averaged over the third factor; bars min-max over seeds.
Uses matplotlib's object API (no pyplot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jaxreg.plots import DPI
from jaxreg.specs import shared_and_own_settings
from jaxreg.summaries import TIE_STANDARD_ERRORS, check_same_seeds, seed_values, ties_with_best

FACTORS = ("width", "l2", "dropout_rate")
FACTOR_LABELS = {"width": "hidden width w of the (w, w) model", "l2": "L2 penalty c", "dropout_rate": "dropout rate"}
WHICH = (("best", "best validation data loss"), ("final", "final validation data loss"))
FIGURES = ("grid_loss_heatmaps.png", "grid_main_effects.png", "grid_interactions.png")


def grid_factors(variants: Sequence[Mapping]) -> dict[str, tuple[float, float, float]]:
    """{variant: (width, l2, dropout rate)} from recorded variants (config.json's, or `VariantSpec.to_dict`)."""
    return {
        v["name"]: (float(v["widths"][0]), float(v.get("l2", 0.0)), float(v.get("dropout_rate", 0.0))) for v in variants
    }


def grid_levels(factors: Mapping[str, tuple]) -> tuple[list[float], ...]:
    """The sorted distinct values of each factor (width, l2, dropout rate)."""
    return tuple(sorted({place[i] for place in factors.values()}) for i in range(len(FACTORS)))


def is_grid(factors: Mapping[str, tuple]) -> bool:
    """Whether the variants form a full factorial grid these figures fit: every factor at two values or more,
    every cell filled by exactly one variant (the book's variants vary all three factors too, but one at a time)."""
    levels = grid_levels(factors)
    cells = len(set(factors.values()))
    return (
        bool(factors)
        and all(len(values) > 1 for values in levels)
        and cells == len(factors) == np.prod([len(values) for values in levels])
    )


def seed_cube(histories: Mapping, factors: Mapping[str, tuple], which: str) -> np.ndarray:
    """`summaries.seed_values` on the grid: [width, l2, dropout, seeds], NaN for a cell no variant fills."""
    check_same_seeds(histories)
    levels = grid_levels(factors)
    n_seeds = next(iter(histories.values()))["loss"].shape[0]
    cube = np.full((*map(len, levels), n_seeds), np.nan)
    for name, place in factors.items():
        if name in histories:
            cube[tuple(values.index(x) for values, x in zip(levels, place))] = seed_values(histories[name], which)
    return cube


def cube_ties(cube: np.ndarray) -> tuple[tuple | None, np.ndarray]:
    """(index of the best cell, bool [width, l2, dropout]: cells indistinguishable from it, paired over seeds)."""
    cells = {index: cube[index] for index in np.ndindex(cube.shape[:-1])}
    best, ties = ties_with_best(cells)
    tied = np.zeros(cube.shape[:-1], dtype=bool)
    for index, tie in ties.items():
        tied[index] = tie
    return best, tied


def _tick_label(x: float) -> str:
    return f"{x:g}" if x else "0"


def colour_range(values: np.ndarray) -> tuple[float, float]:
    """(vmin, vmax) of a heatmap row: the best cell to the median one. A few bad cells (a 2-unit model with
    dropout 0.7) would otherwise stretch the scale so that every cell worth comparing has one colour; the
    worse half saturates (the colour bar's arrow) and every cell still shows its value."""
    if not values.size:
        return 0.0, 1.0
    low, median = float(values.min()), float(np.median(values))
    return low, median if median > low else float(values.max())


def _heatmap_panel(ax, grid, tied, best, vmin, vmax):
    """One width's L2 (across) x dropout (up) panel of seed means, values written, best and ties boxed."""
    image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    middle = (vmin + vmax) / 2
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            color = "black" if value > middle else "white"
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize="x-small", color=color)
        if (i, j) == best:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="C3", linewidth=2.4))
        elif tied[i, j]:
            ax.add_patch(
                Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="C1", linewidth=1.8, linestyle="--")
            )
    return image


def plot_loss_heatmaps(
    histories: Mapping, factors: Mapping[str, tuple], path, title: str = "grid", note: str = ""
) -> Path:
    """grid_loss_heatmaps.png (see the module's docstring): one row per WHICH, one panel per width."""
    widths, l2s, rates = grid_levels(factors)
    fig = Figure(figsize=(2.5 * len(widths) + 1.4, 3.2 * len(WHICH) + 0.6), layout="constrained")
    axes = fig.subplots(len(WHICH), len(widths), squeeze=False, sharey=True)
    for r, (which, label) in enumerate(WHICH):
        cube = seed_cube(histories, factors, which)
        best, tied = cube_ties(cube)
        means = np.nanmean(cube, axis=-1) if np.isfinite(cube).any() else np.full(cube.shape[:-1], np.nan)
        finite = means[np.isfinite(means)]
        vmin, vmax = colour_range(finite)
        for c, width in enumerate(widths):
            ax = axes[r, c]
            best_here = (best[2], best[1]) if best is not None and best[0] == c else None  # (dropout, l2)
            image = _heatmap_panel(ax, means[c].T, tied[c].T, best_here, vmin, vmax)
            ax.set_title(f"w = {width:g}: {'best' if which == 'best' else 'final'}", fontsize="medium")
            ax.set_xticks(range(len(l2s)), [_tick_label(x) for x in l2s], rotation=45, fontsize="small")
            ax.set_yticks(range(len(rates)), [_tick_label(y) for y in rates])
            ax.set_xlabel(FACTOR_LABELS["l2"], fontsize="small")
        axes[r, 0].set_ylabel(FACTOR_LABELS["dropout_rate"])
        capped = finite.size and vmax < finite.max()
        fig.colorbar(image, ax=list(axes[r]), shrink=0.9, label=label, extend="max" if capped else "neither")
    n = cube.shape[-1]
    fig.suptitle(
        f"{title}: validation data loss, mean of {n} seed(s); colour capped at each row's median cell\nred: the best "
        f"cell; dashed: within {TIE_STANDARD_ERRORS:g} SE of it (paired over seeds)" + _note_line(note)
    )
    return _save(fig, path)


def _band_line(ax, x, per_seed: np.ndarray, label: str, color, style: str = "-o") -> None:
    """Mean over seeds ([points, seeds]) and, with several seeds, a min-max band."""
    ax.plot(x, np.nanmean(per_seed, axis=-1), style, color=color, label=label, markersize=3.5, linewidth=1.6)
    if per_seed.shape[-1] > 1:
        ax.fill_between(x, np.nanmin(per_seed, axis=-1), np.nanmax(per_seed, axis=-1), color=color, alpha=0.18, lw=0)


def _dodged_line(ax, x, per_seed: np.ndarray, label: str, k: int, count: int) -> None:
    """The k-th of `count` lines on one categorical axis: mean over seeds ([points, seeds]) and, with several
    seeds, min-max bars, shifted sideways so that the bars of neighbouring lines do not hide each other
    (overlapping bands of five lines read as one blur)."""
    shifted = np.asarray(x, dtype=np.float64) + 0.08 * (k - (count - 1) / 2)
    mean = np.nanmean(per_seed, axis=-1)
    bars = None
    if per_seed.shape[-1] > 1:
        bars = np.stack([mean - np.nanmin(per_seed, axis=-1), np.nanmax(per_seed, axis=-1) - mean])
    ax.errorbar(
        shifted, mean, yerr=bars, fmt="-o", color=f"C{k}", label=label, markersize=3.5, linewidth=1.6, capsize=2.5
    )


def _categorical_axis(ax, axis: int, levels: Sequence[float]) -> None:
    ax.set_xticks(range(len(levels)), [_tick_label(x) for x in levels])
    ax.set_xlabel(FACTOR_LABELS[FACTORS[axis]])
    ax.grid(alpha=0.3)


def main_effects(cube: np.ndarray) -> list[np.ndarray]:
    """Per factor, [its levels, seeds]: the cube averaged (per seed) over the other two factors."""
    return [
        np.nanmean(np.moveaxis(cube, axis, 0).reshape(cube.shape[axis], -1, cube.shape[-1]), axis=1)
        for axis in range(3)
    ]


def plot_main_effects(
    histories: Mapping, factors: Mapping[str, tuple], path, title: str = "grid", note: str = ""
) -> Path:
    """grid_main_effects.png: one panel per factor, best and final validation data loss, seed bands."""
    levels = grid_levels(factors)
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for color, style, (which, label) in zip(("C0", "C1"), ("-o", "--s"), WHICH):
        for axis, per_seed in enumerate(main_effects(seed_cube(histories, factors, which))):
            _band_line(axes[axis], np.arange(len(levels[axis])), per_seed, label, color, style)
    for axis, ax in enumerate(axes):
        _categorical_axis(ax, axis, levels[axis])
    axes[0].set_ylabel("validation data loss")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(
        f"{title}: main effects, each averaged over the other two factors (band: min-max over seeds)" + _note_line(note)
    )
    return _save(fig, path)


def interactions(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dropout's benefit [width, rate > 0, seeds]: loss at rate 0 minus at the rate, averaged over L2;
    L2's benefit [c > 0, dropout, seeds]: loss at c 0 minus at c, averaged over width), paired by seed."""
    dropout_benefit = np.nanmean(cube[:, :, :1] - cube[:, :, 1:], axis=1)
    l2_benefit = np.nanmean(cube[:, :1] - cube[:, 1:], axis=0)
    return dropout_benefit, l2_benefit


def plot_interactions(
    histories: Mapping, factors: Mapping[str, tuple], path, title: str = "grid", note: str = ""
) -> Path:
    """grid_interactions.png: rows best and final loss; left dropout's benefit against width (a line per
    rate), right L2's benefit against dropout (a line per c); above 0: the remedy helps."""
    widths, l2s, rates = grid_levels(factors)
    fig = Figure(figsize=(12, 4.0 * len(WHICH) + 0.6), layout="constrained")
    axes = fig.subplots(len(WHICH), 2, squeeze=False)
    for r, (which, label) in enumerate(WHICH):
        dropout_benefit, l2_benefit = interactions(seed_cube(histories, factors, which))
        left, right = axes[r]
        for k, rate in enumerate(rates[1:]):
            _dodged_line(left, np.arange(len(widths)), dropout_benefit[:, k], f"dropout {rate:g}", k, len(rates) - 1)
        for k, c in enumerate(l2s[1:]):
            _dodged_line(right, np.arange(len(rates)), l2_benefit[k], f"L2 {c:g}", k, len(l2s) - 1)
        _categorical_axis(left, 0, widths)
        _categorical_axis(right, 2, rates)
        left.set_ylabel(f"{label}:\nwithout dropout minus with")
        right.set_ylabel(f"{label}:\nwithout L2 minus with")
        for ax in (left, right):
            ax.axhline(0.0, color="0.3", linewidth=1.0)
            ax.legend(fontsize="small")
    axes[0, 0].set_title("dropout's benefit against width (averaged over L2)")
    axes[0, 1].set_title("L2's benefit against dropout (averaged over width)")
    fig.suptitle(
        f"{title}: interactions, paired by seed (above 0: the remedy helps; bars: min-max over seeds)"
        + _note_line(note)
    )
    return _save(fig, path)


def training_line(factors: Mapping[str, tuple], training: Mapping | None) -> str:
    """The line under the figures' titles naming the optimizer and schedule every variant on the grid shares
    ("" without `training`); ValueError where they differ: a cell would mix them, and a factor's effect with them."""
    note, own = shared_and_own_settings({n: training.get(n, ("", "")) for n in factors} if training else {})
    differing = {name: text for name, text in own.items() if text}
    if differing:
        shown = "; ".join(f"{name}: {text}" for name, text in list(differing.items())[:3])
        raise ValueError(
            f"the grid's variants differ in optimizer or schedule ({shown}, ...): its figures vary width, L2 and "
            "dropout only; select variants that share them"
        )
    return f"every variant: {note}" if note else ""


def _note_line(note: str) -> str:
    return f"\n{note}" if note else ""


def make_grid_figures(
    histories: Mapping, factors: Mapping[str, tuple], folder, title: str = "grid", training: Mapping | None = None
) -> list[Path]:
    """The three FIGURES of a width x L2 x dropout grid in `folder`; returns their paths. `training`:
    {variant: `specs.describe_training`}, the optimizer and schedule (`training_line`) under each title."""
    folder = Path(folder)
    note = training_line(factors, training)
    draw = (plot_loss_heatmaps, plot_main_effects, plot_interactions)
    return [plot(histories, factors, folder / name, title, note) for plot, name in zip(draw, FIGURES)]


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path

"""Which figures a run gets, decided once for the sweep, report.py and grid_figures.py alike.

A run whose variants form a full width x L2 x dropout grid (`grid_plots.is_grid`: every cell
once, one optimizer and schedule) gets the three grid figures (`grid_plots.FIGURES`) and no
per-variant ones: with 168 variants a legend of 168 curves, or 24 points per width, reads as
noise, while the heatmaps, main effects and interactions show every variant in a minute. Any
other run gets `plots.figure_files`' figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxreg import grid_plots, plots


def run_grid(variants: Sequence[Mapping], names: Sequence[str], training: Mapping | None = None) -> dict | None:
    """{variant: (width, l2, dropout rate)} when the recorded `variants` (config.json's, `VariantSpec.to_dict`)
    named in `names` form a full grid with one optimizer and schedule (the grid figures fit), else None."""
    names = set(names)
    recorded = [v for v in variants if v["name"] in names]
    if len(recorded) != len(names) or any(len(set(v["widths"])) != 1 or len(v["widths"]) != 2 for v in recorded):
        return None  # a variant without its record, or not a (w, w) model: no width to place it by
    factors = grid_plots.grid_factors(recorded)
    if not grid_plots.is_grid(factors):
        return None
    try:
        grid_plots.training_line(factors, training)
    except ValueError:  # variants that differ in optimizer or schedule: a cell would mix them
        return None
    return factors


def figure_files(
    names: Sequence[str], axis_name: str | None = None, tested: bool = False, grid: Mapping | None = None
) -> list[str]:
    """The file names `make_figures` writes, in order (a run folder records them first); `grid`: `run_grid`'s."""
    return list(grid_plots.FIGURES) if grid else plots.figure_files(names, axis_name, tested)


def make_figures(
    histories: Mapping,
    folder,
    axis: tuple | None = None,
    training: Mapping | None = None,
    grid: Mapping | None = None,
    title: str = "grid",
) -> list[Path]:
    """The figures `figure_files` names, in `folder`; returns their paths. `grid`: `run_grid`'s (then `title`
    heads each figure); else `plots.make_figures` with `axis` (name, {variant: value}[, {variant: series}])."""
    if grid:
        return grid_plots.make_grid_figures(histories, grid, folder, title=title, training=training)
    return plots.make_figures(histories, folder, axis=axis, training=training)

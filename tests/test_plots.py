"""The figures exist, are real PNG images with content, and cope with one seed, zeros on log axes and NaNs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.image import imread
from test_results import ORIGINAL, make_history

from jaxreg import plots
from jaxreg.history import stack

BOOK = {
    "original": ORIGINAL,
    "bigger": [0.40, 0.45, 0.60, 0.70, 0.90, 1.10],
    "l2": [0.5, 0.42, 0.38, 0.37, 0.372, 0.39],
    "dropout": [0.55, 0.45, 0.38, 0.34, 0.33, 0.35],
}


def assert_real_png(path, min_size=(300, 400)):
    """A PNG of at least min_size (h, w) pixels with varied content (not a blank canvas)."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    image = imread(path)
    assert image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1]
    gray = image[..., :3].mean(axis=-1)
    assert gray.std() > 0.05 and (gray < 0.5).mean() > 0.005  # lines and text, not a blank canvas


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_book_figures(tmp_path, seeds):
    histories = stack(make_history(BOOK, seeds=seeds, penalty={"l2": 0.3}))
    paths = plots.make_figures(histories, tmp_path / "figures")
    assert [p.name for p in paths] == ["val_loss_curves.png", "vs_original.png", "original_vs_bigger.png"]
    for p in paths:
        assert_real_png(p)


def test_without_original_the_first_variant_is_the_reference(tmp_path):
    histories = stack(make_history({"smaller": ORIGINAL, "l2": ORIGINAL}))
    paths = plots.make_figures(histories, tmp_path)
    assert [p.name for p in paths] == ["val_loss_curves.png", "vs_smaller.png"]


def test_a_single_variant_gets_one_figure(tmp_path):
    paths = plots.make_figures(stack(make_history({"original": ORIGINAL})), tmp_path)
    assert [p.name for p in paths] == ["val_loss_curves.png"]
    assert_real_png(paths[0])


@pytest.mark.parametrize(
    "axis, values",
    [
        ("width", [1, 2, 4, 8, 16, 1024]),
        ("l2", [0.0, 1e-5, 1e-4, 1e-3, 1e-2]),
        ("dropout_rate", [0.0, 0.2, 0.4, 0.6, 0.8]),
    ],
)
def test_axis_figures(tmp_path, axis, values):
    rng = np.random.default_rng(0)
    curves = {f"v{i}": np.add(ORIGINAL, rng.uniform(0, 0.2)) for i in range(len(values))}
    penalty = {f"v{i}": v for i, v in enumerate(values)} if axis == "l2" else None
    histories = stack(make_history(curves, seeds=(0, 1), penalty=penalty))
    paths = plots.make_figures(histories, tmp_path, axis=(axis, {f"v{i}": v for i, v in enumerate(values)}))
    fit = [f"fit_vs_{axis}.png"] if axis in plots.FIT_AXES else []  # training against validation fit
    assert [p.name for p in paths] == ["val_loss_curves.png", f"val_loss_vs_{axis}.png", *fit]
    for p in paths:
        assert_real_png(p)


def test_diverged_variants_are_drawn_without_crashing(tmp_path):
    history = make_history(BOOK)
    for metric in ("loss", "val_loss", "val_data_loss"):
        history[("bigger", 0)][metric][2:] = [math.nan] * 4
    paths = plots.make_figures(stack(history), tmp_path)
    for p in paths:
        assert_real_png(p)


def test_more_than_ten_variants_without_an_axis_get_distinct_lines(tmp_path, monkeypatch):
    """Colors repeat after ten (matplotlib's cycle), so the next ten are dashed."""
    drawn = []
    real_line = plots._line

    def recording_line(ax, h, metric, label, color, style="-", marker="o"):
        drawn.append((color, style))
        real_line(ax, h, metric, label, color, style, marker)

    monkeypatch.setattr(plots, "_line", recording_line)
    histories = stack(make_history({f"v{i}": ORIGINAL for i in range(12)}))
    assert_real_png(plots.plot_curves(histories, tmp_path / "curves.png"))
    assert len(drawn) == 12 and len(set(drawn)) == 12
    assert [style for _, style in drawn[:10]] == ["-"] * 10


def _capture_figure(monkeypatch):
    """Keep the Figure each plot function saves (plots._save), to look at its axes."""
    saved = []
    real_save = plots._save

    def keep(fig, path):
        saved.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_the_books_lines_get_distinct_colours(tmp_path, monkeypatch):
    """tab10's purple and brown, given to l1 and l1_l2 side by side, looked alike: neither pair is used now."""
    drawn = {}
    real_line = plots._line

    def recording_line(ax, h, metric, label, color, *args, **kwargs):
        drawn[label] = color
        real_line(ax, h, metric, label, color, *args, **kwargs)

    monkeypatch.setattr(plots, "_line", recording_line)
    book = ("original", "smaller", "bigger", "l2", "l1", "l1_l2", "dropout")
    plots.plot_curves(stack(make_history({name: ORIGINAL for name in book})), tmp_path / "curves.png")
    colours = [drawn[name] for name in book]
    assert len(set(colours)) == 7 and not {"C4", "C5"} <= set(colours)
    assert len(set(plots.QUALITATIVE)) == 10


def test_a_training_loss_spanning_decades_gets_a_log_axis(tmp_path, monkeypatch):
    """`bigger`'s training loss falls to 1e-4: on a linear axis a flat line at 0."""
    saved = _capture_figure(monkeypatch)
    history = make_history(BOOK)
    for seed in (0, 1):
        history[("bigger", seed)]["loss"] = [0.5, 0.1, 1e-2, 1e-3, 3e-4, 1e-4]
    plots.plot_train_val(stack(history), tmp_path / "train_val.png")
    validation, training = saved[-1].axes
    assert training.get_yscale() == "log" and "log scale" in training.get_ylabel()
    assert validation.get_yscale() == "linear"  # 0.35-1.1: no decades


@pytest.mark.parametrize("draw", ["against_axis", "curves"])
def test_legends_sit_outside_the_panels(tmp_path, monkeypatch, draw):
    """Inside a panel the legend covered a curve (l2-grid): figure legends beside or below the panels."""
    saved = _capture_figure(monkeypatch)
    values = {"original": 0.0, "l2": 1e-3, "dropout": 1e-2, "bigger": 1e-1}
    histories = stack(make_history(BOOK, penalty={"l2": 0.3}))
    if draw == "against_axis":
        plots.plot_against_axis(histories, values, "l2", tmp_path / "a.png")
    else:
        plots.plot_curves(histories, tmp_path / "c.png", values, "l2")
    fig = saved[-1]
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1


def test_grid_heatmaps_put_each_variant_in_its_cell(tmp_path, monkeypatch):
    """Two families on a learning rate x strength grid (adamw-vs-l2's figure): every cell holds its
    variant's mean best validation data loss, a reference at strength 0 appears in both, the lowest
    cell per column is boxed, and each row of panels shares one colour scale."""
    saved = _capture_figure(monkeypatch)
    rates, strengths = (1e-4, 1e-3, 1e-2), (1e-5, 1e-3)
    curves, cells = {}, {}
    for i, lr in enumerate(rates):
        curves[f"plain_{i}"] = np.add(ORIGINAL, 0.5)
        cells[f"plain_{i}"] = [("L2", lr, 0.0), ("decay", lr, 0.0)]
        for j, c in enumerate(strengths):
            for k, family in enumerate(("L2", "decay")):
                name = f"{family}_{i}_{j}"
                curves[name] = np.add(ORIGINAL, 0.01 * (i + 3 * j + 10 * k))  # the lowest: strength 1e-5
                cells[name] = (family, lr, c)
    histories = stack(make_history(curves, seeds=(0, 1)))
    matrices = plots.grid_matrices(histories, cells, "val_data_loss", "best")
    xs, ys, grid = matrices["decay"]
    assert xs == list(rates) and ys == [0.0, *strengths] and grid.shape == (3, 3)
    best = min(ORIGINAL) + 0.005  # make_history: seed s adds 0.01 s, mean over seeds 0 and 1
    np.testing.assert_allclose(grid[1], best + 0.01 * (np.arange(3) + 10), rtol=1e-6)
    np.testing.assert_allclose(grid[0], best + 0.5, rtol=1e-6)  # the shared reference
    np.testing.assert_allclose(matrices["L2"][2][0], grid[0], rtol=0)
    path = plots.plot_grid_heatmaps(
        histories, cells, tmp_path / "grid.png", "learning rate", {"L2": "c", "decay": "lam"}
    )
    assert_real_png(path)
    fig = saved[-1]
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * len(plots.HEATMAP_ROWS)
    top = [ax.get_images()[0].get_clim() for ax in panels[:2]]
    assert top[0] == top[1]  # one scale per row
    boxes = [(p.get_x() + 0.5, p.get_y() + 0.5) for p in panels[1].patches]
    assert sorted(boxes) == [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]  # strength 1e-5 is best in every column


def test_grid_heatmaps_script_places_the_adamw_vs_l2_preset():
    """experiments/grid_heatmaps.py on adamw-vs-l2's variants: two families of 5 x 5, AdamW's decay shown as the
    paper's per-step lam (weight_decay x learning rate, exactly the preset's DECAY values), plain Adam at 0 in both."""
    import dataclasses
    import importlib.util
    from pathlib import Path

    from experiments.presets import adamw_vs_l2 as preset

    path = Path(__file__).resolve().parents[1] / "experiments" / "grid_heatmaps.py"
    spec = importlib.util.spec_from_file_location("grid_heatmaps", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    recorded = [dataclasses.asdict(v) for v in preset.variants()]
    cells, labels = script.grid_cells(recorded)
    assert list(labels) == ["Adam + L2 penalty", "AdamW + decoupled decay"]
    decayed = {y for name, triples in cells.items() for family, _, y in triples if family.startswith("AdamW")}
    assert decayed == {0.0, *preset.DECAY}  # lam / lr * lr is lam again, one row per lam
    penalized = {y for triples in cells.values() for family, _, y in triples if family.startswith("Adam +")}
    assert penalized == {0.0, *preset.L2}
    plain = [name for name in cells if name.startswith("adam_lr")]
    assert len(plain) == 5 and all(len(cells[n]) == 2 for n in plain)
    with pytest.raises(ValueError, match="one regularizer per variant"):
        script.strength({"name": "both", "l2": 1e-3, "weight_decay": 1.0, "learning_rate": 1e-3})

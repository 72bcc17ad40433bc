"""The factorial grid: the `grid` preset's plan, its figures and its table of the best configurations."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import jax
import numpy as np
import pytest
from test_plots import assert_real_png

from conftest import load_script
from experiments import presets
from jaxreg import fileio, grid_plots, plots, report, run_figures, runfolder, runplan, runs, summaries
from jaxreg.config import SweepConfig
from jaxreg.data import synthetic_dataset
from jaxreg.specs import name_problem, training_descriptions
from jaxreg.sweep import run_sweep
from jaxreg.variants import VariantSpec, plan

ROOT = Path(__file__).resolve().parents[1]


def test_grid_preset_plans_1008_models_in_4_programs():
    """7 widths x 6 L2 x 4 dropout x 6 seeds = 1,008 models. Widths up to 16 train padded to 16 units
    (runplan.PaddingPolicy's floor), so 2, 4, 8 and 16 share one program and 32, 64, 128 get one each:
    4 programs, not 7. The plan and its memory estimate (the plan line's numbers) need no training."""
    config = presets.load("grid")
    assert len(config.variants) == 168 and config.seeds == 6 and config.epochs == 20
    assert all(name_problem(v.name) is None for v in config.variants)
    assert {(v.widths, v.l2, v.dropout_rate) for v in config.variants} == {
        ((w, w), c, r)
        for w in (2, 4, 8, 16, 32, 64, 128)
        for c in (0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
        for r in (0, 0.25, 0.5, 0.7)
    }
    buckets = plan(config.variant_specs())
    assert sum(len(b.configs) * len(b.seeds) for b in buckets) == 1008
    assert sorted((b.widths, len(b.configs)) for b in buckets) == [
        ((16, 16), 96),
        ((32, 32), 24),
        ((64, 64), 24),
        ((128, 128), 24),
    ]
    data = synthetic_dataset(n_train=512, n_validation=128, num_words=1000, seed=0)
    run_plan = runplan.plan_run(buckets, data, config.run_settings(), jax.devices()[:1], estimate_memory=True)
    assert len(run_plan.buckets) == 4 and sum(b.models for b in run_plan.buckets) == 1008
    assert run_plan.memory.total > 0 and run_plan.memory.state > 0


def _stacked(per_seed_best: dict[str, list[float]]) -> dict:
    """Hand-made stacked histories: each variant's validation data loss falls to its per-seed value at epoch 2
    and rises after (so that value is its best epoch's)."""
    out = {}
    for name, best in per_seed_best.items():
        best = np.asarray(best, dtype=np.float64)[:, None]
        val = best + np.array([[0.2, 0.0, 0.1]])
        out[name] = {
            "loss": np.full(val.shape, 0.3),
            "val_data_loss": val,
            "val_accuracy": 1 - val / 2,
            "diverged": np.zeros(val.shape, dtype=bool),
            "seeds": np.arange(val.shape[0]),
        }
    return out


def test_paired_ties_use_the_seed_noise_of_the_difference():
    """B is 0.002 worse than A on average but its per-seed differences scatter more than that: a tie. C is
    only 0.004 worse but by the same amount in every seed: not a tie (pairing removes the shared seed noise).
    D scatters over seeds far more than C differs, yet pairing still tells C apart from A."""
    histories = _stacked(
        {
            "A": [0.30, 0.35, 0.40],
            "B": [0.30 + 0.006, 0.35 - 0.002, 0.40 + 0.002],
            "C": [0.304, 0.354, 0.404],
            "D": [0.40, 0.45, 0.50],
        }
    )
    values = {n: summaries.seed_values(h) for n, h in histories.items()}
    np.testing.assert_allclose(values["A"], [0.30, 0.35, 0.40], rtol=1e-12)
    best, ties = summaries.ties_with_best(values)
    assert best == "A" and ties == {"A": True, "B": True, "C": False, "D": False}
    assert summaries.paired_tie([0.5], [0.4]) is False and summaries.paired_tie([0.4], [0.4]) is True
    assert summaries.paired_tie([np.nan, 0.3], [0.3, 0.3]) is False
    table = summaries.top_configurations_table(histories, "best", n=3).splitlines()
    assert len(table) == 2 + 3 and "D" not in "\n".join(table)
    assert [row.split("|")[2].strip() for row in table[2:]] == ["A", "B", "C"]
    assert [row.split("|")[-2].strip() for row in table[2:]] == ["yes", "yes", "no"]
    assert "0.3500 ± 0.0500" in table[2] and "0.0020 ± 0.0040" in table[3]
    final = summaries.seed_values(histories["A"], "final")
    np.testing.assert_allclose(final, [0.40, 0.45, 0.50], rtol=1e-12)
    with pytest.raises(ValueError, match="same seeds"):
        summaries.top_configurations_table({**histories, "E": {**histories["A"], "seeds": np.array([0, 1, 5])}})


def test_heatmaps_mark_the_best_cell_and_its_ties(tmp_path, monkeypatch):
    """A 2 x 2 x 2 grid by hand: the best cell (width 8, L2 0, dropout 0.5) is boxed red in the width-8 panel,
    the one cell within the seed noise of it dashed, and the cube's main effects and interactions hold the means."""
    saved = []
    real_save = grid_plots._save
    monkeypatch.setattr(grid_plots, "_save", lambda fig, path: saved.append(fig) or real_save(fig, path))
    seeds = np.array([0.0, 0.05, 0.1])
    per_seed, factors = {}, {}
    for w in (2, 8):
        for c in (0.0, 1e-3):
            for r in (0.0, 0.5):
                name = f"w{w}_l2={c:g}_do={r:g}"
                factors[name] = (float(w), c, r)
                per_seed[name] = 0.4 + 0.1 * (w == 2) + 0.05 * (c > 0) - 0.03 * (r > 0) + seeds
    per_seed["w8_l2=0.001_do=0.5"] = per_seed["w8_l2=0_do=0.5"] + np.array([0.004, -0.002, 0.001])  # a tie
    histories = _stacked(per_seed)
    cube = grid_plots.seed_cube(histories, factors, "best")
    assert cube.shape == (2, 2, 2, 3)
    best, tied = grid_plots.cube_ties(cube)
    assert best == (1, 0, 1) and sorted(zip(*np.nonzero(tied))) == [(1, 0, 1), (1, 1, 1)]
    effects = grid_plots.main_effects(cube)
    np.testing.assert_allclose(
        effects[0].mean(axis=1)[0] - effects[0].mean(axis=1)[1], 0.1 + (0.05 - 0.001) / 4, rtol=1e-9
    )
    dropout_benefit, l2_benefit = grid_plots.interactions(cube)
    assert dropout_benefit.shape == (2, 1, 3) and l2_benefit.shape == (1, 2, 3)
    np.testing.assert_allclose(dropout_benefit[0, 0], 0.03, rtol=1e-9)
    assert grid_plots.colour_range(np.array([0.3, 0.9, 0.31, 0.32])) == pytest.approx((0.3, 0.315))  # to the median
    paths = grid_plots.make_grid_figures(histories, factors, tmp_path)
    assert [p.name for p in paths] == list(grid_plots.FIGURES)
    for p in paths:
        assert_real_png(p)
    heatmaps = [ax for ax in saved[0].axes if ax.get_images()]
    assert len(heatmaps) == 2 * 2  # best and final, one panel per width
    w8_best = heatmaps[1]
    assert len(w8_best.patches) == 2 and not heatmaps[0].patches
    boxes = sorted((p.get_linewidth(), p.get_x(), p.get_y()) for p in w8_best.patches)
    np.testing.assert_allclose(boxes, [(1.8, 0.54, 0.54), (2.4, -0.5, 0.5)])  # tie: L2 1, dropout 1; best: L2 0
    assert len([ax for ax in saved[1].axes if ax.get_lines()]) == 3
    assert len([ax for ax in saved[2].axes if ax.get_lines()]) == 4


def _script(name: str):
    return load_script(ROOT / "experiments" / f"{name}.py", name)


SMALL_GRID = tuple(
    VariantSpec(f"w{w}_l2={c:g}_do={r:g}", widths=(w, w), l2=c, dropout_rate=r)
    for w in (2, 4, 8)
    for c in (0.0, 1e-3)
    for r in (0.0, 0.5)
)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """widths {2, 4, 8} x L2 {0, 1e-3} x dropout {0, 0.5} (12 configurations: more than summary.md's ten best)
    x 2 seeds x 2 epochs, swept along width as the preset is, trained in-process (one program: the widths pad
    to 16), with its summary and figures."""
    config = SweepConfig(name="small-grid", variants=SMALL_GRID, synthetic=True, epochs=2, seeds=2, axis="width")
    folder = tmp_path_factory.mktemp("grid") / "run"
    run_sweep(config, folder, progress=False, stream=io.StringIO(), tensorboard=False)
    return folder


def test_a_grid_run_gets_the_grid_figures_and_the_ten_best_configurations(grid_run):
    """Its figures are the three grid figures (no curves of every variant, no points per width), recorded in the
    manifest; summary.md opens with the ten best of its 12 configurations by best and by final validation
    loss, with the paired ties, before the table of all of them."""
    assert sorted(p.name for p in (grid_run / "figures").iterdir()) == sorted(grid_plots.FIGURES)
    for name in grid_plots.FIGURES:
        assert_real_png(grid_run / "figures" / name)
    assert {f"figures/{name}" for name in grid_plots.FIGURES} <= set(runfolder.recorded(grid_run))
    md = (grid_run / fileio.SUMMARY_MD).read_text()
    best = md.index("## The 10 best configurations by best validation data loss")
    final = md.index("## The 10 best configurations by final validation data loss")
    assert md.startswith("# small-grid: 2 epochs x 2 seed(s)\n\n## The 10 best") and best < final
    assert final < md.index("## All 12 variants") < md.index("| variant ")
    for section in (md[best:final], md[final : md.index("## All 12 variants")]):
        rows = [line for line in section.splitlines() if line.startswith("| ") and "rank" not in line]
        assert [row.split("|")[1].strip() for row in rows] == [str(k) for k in range(1, 11)]
        assert rows[0].split("|")[-2].strip() == "yes" and "0.0000 ± 0.0000" in rows[0]
        assert {row.split("|")[-2].strip() for row in rows} <= {"yes", "no"}
        ties = sum(row.split("|")[-2].strip() == "yes" for row in rows)
        assert "of 12 configurations are within 2 SE of the best." in section
        assert int(section.split(" of 12 configurations")[0].rsplit("\n", 1)[-1]) >= ties
    assert "within 2 SE of the best |" in md and "paired difference to the best" in md


def test_report_on_a_grid_run_writes_what_the_sweep_wrote(grid_run, tmp_path):
    """report.py decides the figures and the summary as the sweep does (run_figures, write_summary): the same
    files, the same summary.md and summary.csv."""
    made = report.report(grid_run, tmp_path / "again")
    written = sorted(str(p.relative_to(tmp_path / "again")) for p in made.written)
    assert written == sorted([fileio.SUMMARY_MD, fileio.SUMMARY_CSV, *(f"figures/{n}" for n in grid_plots.FIGURES)])
    for name in (fileio.SUMMARY_MD, fileio.SUMMARY_CSV):
        assert (tmp_path / "again" / name).read_bytes() == (grid_run / name).read_bytes()


def test_only_a_full_grid_of_one_optimizer_gets_the_grid_figures():
    """The book's variants vary width, L2 and dropout too, but one at a time: per-variant figures. So does a
    grid with a cell missing, with a cell twice, with a variant of another optimizer or a (w, 2w) model."""
    records = [v.to_dict() for v in SMALL_GRID]
    names = [v.name for v in SMALL_GRID]
    grid = run_figures.run_grid(records, names, training_descriptions(SMALL_GRID))
    assert grid == {v.name: (float(v.widths[0]), v.l2, v.dropout_rate) for v in SMALL_GRID}
    assert run_figures.figure_files(names, "width", False, grid) == list(grid_plots.FIGURES)
    preset = presets.load("grid")
    assert len(run_figures.run_grid([v.to_dict() for v in preset.variants], [v.name for v in preset.variants])) == 168
    book = presets.load("book")
    book_records, book_names = [v.to_dict() for v in book.variants], [v.name for v in book.variants]
    assert len({r["l2"] for r in book_records}) > 1 and len({r["dropout_rate"] for r in book_records}) > 1
    assert run_figures.run_grid(book_records, book_names) is None
    assert run_figures.figure_files(book_names) == plots.figure_files(book_names)
    assert run_figures.run_grid(records[1:], names[1:]) is None  # a cell missing
    twice = {**records[0], "name": "again", "l1": 1e-4}
    assert run_figures.run_grid([*records, twice], [*names, "again"]) is None  # a cell twice
    other = [dataclasses.replace(SMALL_GRID[0], optimizer="adam"), *SMALL_GRID[1:]]
    assert run_figures.run_grid(records, names, training_descriptions(other)) is None
    assert run_figures.run_grid([{**records[0], "widths": [2, 4]}, *records[1:]], names) is None
    assert run_figures.run_grid(records, [*names, "unrecorded"]) is None


def test_summary_ranks_configurations_with_seeds_and_more_than_ten_of_them():
    """The rule in one place (summaries.ranks_configurations): two seeds or more, the same in every variant,
    and more variants than the ten rows; else summary.md is as before."""
    two_seeds = _stacked({f"v{k}": [0.3 + 0.01 * k, 0.31 + 0.01 * k] for k in range(11)})
    assert summaries.ranks_configurations(two_seeds)
    assert not summaries.ranks_configurations(dict(list(two_seeds.items())[:10]))
    assert not summaries.ranks_configurations(_stacked({f"v{k}": [0.3 + 0.01 * k] for k in range(11)}))
    shifted = {**two_seeds, "v0": {**two_seeds["v0"], "seeds": np.array([5, 6])}}
    assert not summaries.ranks_configurations(shifted)


def test_grid_figures_script_draws_the_runs_grid_figures(grid_run, tmp_path, capsys):
    """experiments/grid_figures.py draws the figures the run has (run_figures) and prints summary.md's tables."""
    assert _script("grid_figures").main([str(grid_run), "--out", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(grid_plots.FIGURES)
    printed = capsys.readouterr().out
    assert summaries.top_configurations_sections(runs.load_run(grid_run).histories) in printed
    assert grid_plots.is_grid(grid_plots.grid_factors(runs.load_run(grid_run).config["variants"]))
    assert not grid_plots.is_grid(grid_plots.grid_factors([v.to_dict() for v in SMALL_GRID[:2]]))


def _load_benchmark(name: str):
    return load_script(ROOT / "benchmarks" / f"{name}.py", name)


def test_keras_sample_is_the_grid_presets_own_configurations():
    """benchmarks/grid_vs_keras.py builds its Keras sample from the preset's names; the names parse back to
    the preset's widths, L2 and dropout (so the timed Keras models are the grid's), and the extrapolation
    is per width: models of that width x (overhead + epochs x median epoch), summed."""
    bench = _load_benchmark("grid_vs_keras")
    config = presets.load("grid")
    by_name = {v.name: v for v in config.variants}
    names = bench.sample_names(1e-3, 0.5)
    assert len(names) == 7 and set(names) <= set(by_name)
    for name in names:
        widths, l1, l2, rate = bench.C.model_settings(name)
        v = by_name[name]
        assert (widths, l1, l2, rate) == (v.widths, v.l1, v.l2, v.dropout_rate)
    with pytest.raises(SystemExit, match="unknown model"):
        bench.C.model_settings("w16_l2=x_do=0.5")
    models = {n: {"overhead_s": 2.0, "median_epoch_s": 0.5 + i} for i, n in enumerate(names)}
    total, rows = bench.keras_grid_seconds(models, epochs=20)
    per_width = 1008 // 7
    assert total == pytest.approx(sum(per_width * (2.0 + 20 * (0.5 + i)) for i in range(7)))
    assert [r[-1] for r in rows] == [per_width] * 7

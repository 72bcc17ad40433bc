"""The factorial grid: the `grid` preset's plan, its figures and its table of the best configurations."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import jax
import numpy as np
import pytest
from test_plots import assert_real_png

from experiments import presets
from jaxreg import grid_plots, runplan, runs, summaries
from jaxreg.config import SweepConfig
from jaxreg.data import synthetic_dataset
from jaxreg.specs import name_problem
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
    paths = grid_plots.make_grid_figures(histories, factors, tmp_path)
    assert [p.name for p in paths] == list(grid_plots.FIGURES)
    for p in paths:
        assert_real_png(p)
    heatmaps = [ax for ax in saved[0].axes if ax.get_images()]
    assert len(heatmaps) == 2 * 2  # best and final, one panel per width
    w8_best = heatmaps[1]
    assert len(w8_best.patches) == 2 and not heatmaps[0].patches
    boxes = sorted((p.get_linewidth(), p.get_x(), p.get_y()) for p in w8_best.patches)
    np.testing.assert_allclose(boxes, [(1.8, 0.58, 0.58), (2.4, -0.5, 0.5)])  # tie: L2 1, dropout 1; best: L2 0
    assert len([ax for ax in saved[1].axes if ax.get_lines()]) == 3
    assert len([ax for ax in saved[2].axes if ax.get_lines()]) == 4


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_figures_script_on_a_small_synthetic_grid(tmp_path, capsys):
    """widths {2, 8} x L2 {0, 1e-3} x dropout {0, 0.5} x 2 seeds x 2 epochs, trained in-process (one program:
    both widths pad to 16), then experiments/grid_figures.py draws its three figures and the top-10 table."""
    variants = tuple(
        VariantSpec(f"w{w}_l2={c:g}_do={r:g}", widths=(w, w), l2=c, dropout_rate=r)
        for w in (2, 8)
        for c in (0.0, 1e-3)
        for r in (0.0, 0.5)
    )
    config = SweepConfig(name="small-grid", variants=variants, synthetic=True, epochs=2, seeds=2, axis="width")
    folder = tmp_path / "run"
    run_sweep(config, folder, progress=False, stream=io.StringIO(), tensorboard=False, figures=False)
    assert _script("grid_figures").main([str(folder)]) == 0
    written = sorted(p.name for p in (folder / "figures").iterdir())
    assert written == sorted([*grid_plots.FIGURES, "grid_top.md"])
    for name in grid_plots.FIGURES:
        assert_real_png(folder / "figures" / name)
    table = (folder / "figures" / "grid_top.md").read_text()
    assert table.count("| 1    |") == 2 and table.count("\n| 8    |") == 2  # 8 configurations, best and final
    assert "within 2 SE of the best" in capsys.readouterr().out
    run = runs.load_run(folder)
    assert grid_plots.is_grid(grid_plots.grid_factors(run.config["variants"]))
    assert not grid_plots.is_grid(grid_plots.grid_factors([v.to_dict() for v in variants[:2]]))


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

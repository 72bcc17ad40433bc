"""Sweeps along a data axis with several series: presets, series labels, figures and tables."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxreg import axis_tables, plots, runs
from jaxreg.config import SweepConfig, SweepError
from jaxreg.sweep import run_sweep
from jaxreg.variants import VariantSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import presets  # noqa: E402


def test_learning_curve_preset_is_every_model_at_every_size():
    config = presets.load("learning-curve")
    series = config.axis_series()
    assert config.axis == "train_size"
    assert sorted(set(series.values())) == ["bigger", "dropout", "l2", "original", "smaller"]
    sizes = sorted({v.train_size for v in config.variants})
    assert sizes[0] == 500 and sizes[-1] == 25_000 and len(sizes) == 6
    ratios = np.diff(np.log(sizes))
    assert np.allclose(ratios, ratios.mean(), rtol=0.05)  # log-spaced


def test_label_noise_and_double_descent_presets():
    noise = presets.load("label-noise")
    assert {v.label_noise for v in noise.variants} == {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}
    assert any(v.widths == (1024, 1024) and v.label_noise == 1.0 for v in noise.variants)
    dd = presets.load("double-descent")
    widths = [v.widths[0] for v in dd.variants]
    assert min(widths) == 1 and max(widths) == 1024 and {v.label_noise for v in dd.variants} == {0.2}
    assert set(dd.axis_series().values()) == {"w"}


def test_series_group_variants_that_differ_only_in_the_axis():
    config = SweepConfig(
        name="s",
        variants=(
            VariantSpec("a_n10", (16, 16), train_size=10),
            VariantSpec("a_n20", (16, 16), train_size=20),
            VariantSpec("b_n10", (16, 16), l2=1e-3, train_size=10),
            VariantSpec("lone", (8, 8), train_size=10),
        ),
        axis="train_size",
    )
    assert config.axis_series() == {"a_n10": "a", "a_n20": "a", "b_n10": "b_n10", "lone": "lone"}
    assert config.axis_values() == {"a_n10": 10.0, "a_n20": 20.0, "b_n10": 10.0, "lone": 10.0}


def test_a_train_size_axis_needs_every_size():
    with pytest.raises(SweepError, match="train_size"):
        SweepConfig(name="s", variants=(VariantSpec("a", train_size=10), VariantSpec("b")), axis="train_size")


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    config = SweepConfig(
        name="noise",
        # both widths pad to 16 units: one bucket, one compiled program
        variants=tuple(
            VariantSpec(f"{m}_noise{p:g}", w, label_noise=p)
            for m, w in (("small", (4, 4)), ("wide", (16, 16)))
            for p in (0, 1)
        ),
        axis="label_noise",
        synthetic=True,
        epochs=3,
        seeds=2,
    )
    folder = tmp_path_factory.mktemp("runs") / "noise"
    run_sweep(config, folder, progress=False, stream=io.StringIO(), tensorboard=False)
    return runs.load_run(folder)


def test_a_noise_sweep_draws_series_figures_and_tables(noise_run):
    figures = sorted(p.name for p in (noise_run.folder / "figures").iterdir())
    assert figures == ["fit_vs_label_noise.png", "val_loss_curves.png", "val_loss_vs_label_noise.png"]
    axis = noise_run.config["axis"]
    assert axis["series"] == {
        "small_noise0": "small",
        "small_noise1": "small",
        "wide_noise0": "wide",
        "wide_noise1": "wide",
    }
    table = axis_tables.axis_table(
        noise_run.histories, axis["values"], axis["series"], "final_train_metric", "label_noise"
    )
    lines = table.splitlines()
    assert lines[0] == "| label_noise | 0 | 1 |" and [line.split(" |")[0] for line in lines[2:]] == [
        "| small",
        "| wide",
    ]
    h = noise_run.histories["wide_noise1"]
    expected = f"{np.mean(h['accuracy'][:, -1]):.4f} ± {np.std(h['accuracy'][:, -1], ddof=1):.4f}"
    assert expected in lines[3]


def test_epochs_to_level_names_the_first_epoch_reaching_it():
    h = {
        "loss": np.zeros((2, 4)),
        "val_data_loss": np.ones((2, 4)),
        "accuracy": np.array([[0.5, 0.9, 0.995, 1.0], [0.5, 0.92, 0.98, 1.0]]),
        "val_accuracy": np.ones((2, 4)),
        "diverged": np.zeros((2, 4), bool),
    }
    assert axis_tables.cell(h, "epochs_to_level", level=0.99) == "4"  # the mean reaches 0.99 at epoch 4, not 3 (0.9875)
    assert axis_tables.cell(h, "epochs_to_level", level=1.01) == ">4"


def test_series_figure_files():
    assert plots.figure_files(["a", "b"], "label_noise") == [
        "val_loss_curves.png",
        "val_loss_vs_label_noise.png",
        "fit_vs_label_noise.png",
    ]
    assert plots.figure_files(["a", "b"], "train_size") == ["val_loss_curves.png", "val_loss_vs_train_size.png"]
    assert plots.figure_files(["a", "b"], "width")[-1] == "fit_vs_width.png"


def test_a_run_recorded_without_series_gets_them_from_its_variants(noise_run):
    from jaxreg.report import run_axis

    recorded = run_axis(noise_run)
    old = dict(noise_run.config, axis={k: v for k, v in noise_run.config["axis"].items() if k != "series"})
    derived = run_axis(runs.Run(noise_run.folder, old, noise_run.status, noise_run.histories, noise_run.summary))
    assert derived == recorded and len(set(recorded[2].values())) == 2

"""Multiclass and regression runs through the variant engine, and the files that report them."""

from __future__ import annotations

import numpy as np
import pytest

import jaxreg
from jaxreg import events, fileio, history, plots
from jaxreg.model import MLP
from jaxreg.summaries import summarize, summary_table

SETTINGS = jaxreg.RunSettings(epochs=6, batch_size=32, eval_batch_size=128)


def blobs(n: int, classes: int, features: int = 12, seed: int = 0):
    """Gaussian blobs: class c centred at 2 * e_c (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, features)).astype(np.float32)
    x[np.arange(n), y] += 2.0
    return x, y


@pytest.fixture(scope="module")
def multiclass():
    x, y = blobs(400, 4)
    data = jaxreg.from_arrays(x, y, holdout=100, seed=0)
    variants = [
        jaxreg.VariantSpec("narrow", (8,), learning_rate=1e-2),
        jaxreg.VariantSpec("wide_dropout", (32,), dropout_rate=0.3, learning_rate=1e-2),
    ]
    return data, jaxreg.run(jaxreg.with_seeds(variants, [0, 1]), data, SETTINGS)


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]) + 0.1 * rng.normal(size=300)).astype(np.float32)
    data = jaxreg.from_arrays(x, y, holdout=0.25, seed=0)
    variants = [
        jaxreg.VariantSpec("plain", (16, 16), learning_rate=1e-2),
        jaxreg.VariantSpec("l2", (16, 16), l2=1e-2, learning_rate=1e-2),
    ]
    return data, jaxreg.run(variants, data, jaxreg.RunSettings(epochs=6, batch_size=16, eval_batch_size=128))


def test_a_multiclass_run_learns_and_reports_accuracy(multiclass):
    data, result = multiclass
    assert (
        data.target == "multiclass" and data.num_classes == 4 and result.task == jaxreg.Task("multiclass", "keras", 4)
    )
    for key, h in result.history.items():
        assert set(h) == set(history.metric_names("accuracy")), key
        assert h["val_accuracy"][-1] > 0.7 and h["loss"][-1] < h["loss"][0], key
    kernel = result.params[("narrow", 0)].final["params"]["output"]["kernel"]
    assert kernel.shape == (8, 4), "the MLP's output layer has one unit per class, at the true width"


def test_a_regression_run_reports_mse_and_mae_that_its_parameters_reproduce(regression):
    data, result = regression
    assert result.task == jaxreg.Task("regression", "mse")
    h = result.history[("plain", 0)]
    assert set(h) == set(history.metric_names("mae"))
    assert h["val_data_loss"][-1] < 0.5 * np.var(data.validation.y)
    params = result.params[("plain", 0)].final
    predictions = np.asarray(MLP((16, 16)).apply(params, data.validation.x))
    errors = predictions - data.validation.y
    np.testing.assert_allclose(np.mean(errors**2), h["val_data_loss"][-1], rtol=1e-5)
    np.testing.assert_allclose(np.mean(np.abs(errors)), h["val_mae"][-1], rtol=1e-5)
    assert np.all(result.history[("l2", 0)]["penalty"] > 0)


def test_history_files_summary_and_tensorboard_name_the_task_metric(regression, tmp_path):
    _, result = regression
    stacked = history.stack(result.history)
    history.write_history(tmp_path, stacked)
    header = (tmp_path / fileio.HISTORY_CSV).read_text().splitlines()[0].split(",")
    assert "val_mae" in header and "val_accuracy" not in header
    back = history.read_history(tmp_path / fileio.HISTORY_JSONL)
    np.testing.assert_array_equal(back["plain"]["val_mae"], stacked["plain"]["val_mae"])
    summaries = summarize(back)
    assert summaries[0].metric == "mae"
    assert "val MAE @ best" in summary_table(summaries) and "best val MSE" in summary_table(summaries)
    best = events.best_metrics(result.history[("plain", 0)], 1e6)
    assert set(best) == {"best/val_data_loss", "best/val_mae", "best/epoch"}
    assert events.hparam_metrics("mae")[1] == "val_mae"
    assert plots.loss_name(stacked) == "mean squared error"
    figures = plots.make_figures(stacked, tmp_path)
    assert figures and all(f.stat().st_size > 10_000 for f in figures)

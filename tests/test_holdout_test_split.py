"""Honest early stopping: a test split evaluated every epoch, reported apart, never used to choose.

Synthetic data only. The runs share a module-scoped fixture, so each compiled program is
compiled once: the same variants with a test split, with its labels flipped, and without it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxreg import data, events, fileio, plots, runfolder, selection
from jaxreg import sweep as sweep_module
from jaxreg import variants as V
from jaxreg.dataset import DataError, Dataset, Split, from_arrays
from jaxreg.history import (
    METRICS,
    csv_lines,
    has_test,
    history_fields,
    metric_names,
    read_history,
    stack,
    write_history,
)
from jaxreg.history import test_names as names_of_test_columns  # a name starting with test_ is collected as a test
from jaxreg.runs import load_run
from jaxreg.summaries import early_stopping, early_stopping_table, read_summary, summarize, write_summary
from jaxreg.sweep import SweepConfig, SweepInterrupted, run_sweep

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
SEEDS = (0, 1)
CONFIGS = (V.VariantSpec("narrow", (4,)), V.VariantSpec("l2", (8,), l2=1e-3))  # one program: both pad to 16 units
VARIANTS = V.with_seeds(CONFIGS, SEEDS)
SETTINGS = V.RunSettings(epochs=EPOCHS, batch_size=64)
OLD_FIELDS = (  # history.jsonl's and history.csv's fields before test splits, in their order
    "variant",
    "seed",
    "epoch",
    "loss",
    "data_loss",
    "penalty",
    "accuracy",
    "val_loss",
    "val_data_loss",
    "val_penalty",
    "val_accuracy",
    "diverged",
)


def _data(n_test: int = 200) -> Dataset:
    return data.synthetic_dataset(
        n_train=300, n_validation=150, num_words=300, n_signal_words=20, label_noise=0.2, seed=2, n_test=n_test
    )


def _flipped(dataset: Dataset) -> Dataset:
    """The same data with every test label flipped: the test loss then grows as the model learns."""
    test = dataset.test
    return dataclasses.replace(dataset, test=Split(test.x, (1 - test.y).astype(np.float32), test.name))


@pytest.fixture(scope="module")
def runs():
    """{"test": RunResult with a test split, "flipped": its test labels flipped, "none": without a test split}."""
    with_test = _data()
    return {
        "test": V.run(VARIANTS, with_test, SETTINGS),
        "flipped": V.run(VARIANTS, _flipped(with_test), SETTINGS),
        "none": V.run(VARIANTS, dataclasses.replace(with_test, test=None), SETTINGS),
    }


# --- data ------------------------------------------------------------------------------


def test_synthetic_test_split_leaves_the_other_splits_and_checksum_as_they_were():
    without, with_test = _data(0), _data(200)
    assert without.test is None and len(with_test.test) == 200 and with_test.test.name == "test"
    for a, b in [(without.train, with_test.train), (without.validation, with_test.validation)]:
        np.testing.assert_array_equal(a.x.indices, b.x.indices)
        np.testing.assert_array_equal(a.y, b.y)
    assert without.checksum != with_test.checksum
    assert (
        without.checksum
        == data.synthetic_dataset(
            n_train=300, n_validation=150, num_words=300, n_signal_words=20, label_noise=0.2, seed=2
        ).checksum
    )
    assert "test 200 reviews (test)" in with_test.describe() and "test" not in without.describe().split("\n")[0][-30:]


def test_from_arrays_takes_a_test_split_and_checks_it_by_name():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    xt, yt = rng.normal(size=(10, 3)), rng.integers(0, 2, 10)
    plain = from_arrays(x, y, holdout=10)
    tested = from_arrays(x, y, holdout=10, test=(xt, yt))
    assert plain.test is None and len(tested.test) == 10 and tested.test.y.dtype == np.float32
    np.testing.assert_array_equal(tested.validation.x, plain.validation.x)  # the holdout is drawn as before
    assert tested.checksum != plain.checksum
    assert plain.checksum == from_arrays(x, y, holdout=10).checksum
    # target "auto" looks at the test labels too: a class 2 in test makes it multiclass with 3 classes
    three = from_arrays(x, y, holdout=10, test=(xt, np.r_[yt[:-1], 2]))
    assert (three.target, three.num_classes) == ("multiclass", 3)
    with pytest.raises(DataError, match=re.escape("test must be an (x_test, y_test) pair or None")):
        from_arrays(x, y, test=xt)
    with pytest.raises(DataError, match=re.escape("x and test[0] have different numbers of columns")):
        from_arrays(x, y, test=(xt[:, :2], yt))
    with pytest.raises(DataError, match=re.escape("test[1] has 9 targets but its x has 10 rows")):
        from_arrays(x, y, test=(xt, yt[:9]))
    with pytest.raises(DataError, match=re.escape("test[1] must be 0 or 1 for target 'binary'")):
        from_arrays(x, y, target="binary", test=(xt, yt + 5))


def test_dataset_checks_its_test_split_like_the_others():
    dataset = _data()
    with pytest.raises(DataError, match=re.escape("test.y must be 0 or 1")):
        dataclasses.replace(dataset, test=Split(dataset.test.x, dataset.test.y + 2, "test"))
    with pytest.raises(DataError, match=re.escape("test.x is a ndarray, train.x a SparseMultiHot")):
        dataclasses.replace(dataset, test=Split(np.zeros((2, 300), np.float32), np.zeros(2, np.float32), "test"))
    with pytest.raises(DataError, match="test must be a Split"):
        dataclasses.replace(dataset, test="not a split")


# --- training: the test columns never choose -------------------------------------------


def test_test_columns_are_the_tasks_and_come_after_validation(runs):
    history = runs["test"].history[("narrow", 0)]
    assert tuple(history) == metric_names("accuracy", test=True)
    assert tuple(history)[-3:] == ("test_loss", "test_data_loss", "test_accuracy")
    assert tuple(runs["none"].history[("narrow", 0)]) == METRICS
    for h in runs["test"].history.values():
        # test_loss = test_data_loss + the penalty of the same parameters as val_penalty
        np.testing.assert_allclose(h["test_loss"], h["test_data_loss"] + h["val_penalty"], rtol=1e-6)
        assert np.all((0 <= h["test_accuracy"]) & (h["test_accuracy"] <= 1))


@pytest.mark.numerics
def test_flipping_the_test_labels_changes_only_the_test_columns(runs):
    """Both runs execute one compiled program on data that differs only in the test labels,
    so everything else must agree exactly (tolerance 0: no float may differ)."""
    a, b = runs["test"], runs["flipped"]
    test_columns = names_of_test_columns("accuracy")
    for key in a.history:
        for m in METRICS:
            np.testing.assert_array_equal(a.history[key][m], b.history[key][m], err_msg=f"{key} {m}")
        for m in test_columns:
            assert not np.array_equal(a.history[key][m], b.history[key][m]), (key, m)
        np.testing.assert_allclose(a.history[key]["test_accuracy"], 1 - b.history[key]["test_accuracy"], atol=1e-6)
        pa, pb = a.params[key], b.params[key]
        assert pa.best_epoch == pb.best_epoch
        for x, y in zip(jax.tree.leaves((pa.final, pa.best)), jax.tree.leaves((pb.final, pb.best))):
            np.testing.assert_array_equal(x, y)
    # the flipped test loss is lowest where the model knows least: the test set would choose another epoch
    stacked = stack(b.history)
    oracle = early_stopping(stacked["l2"])["oracle_epoch"]
    assert not np.array_equal(oracle, [b.params[("l2", s)].best_epoch for s in SEEDS])


@pytest.mark.numerics
def test_the_test_split_does_not_change_training(runs):
    """With and without the test split the programs differ only by the test evaluation; the other
    columns and parameters agree to float32 round-off (rtol 1e-5, atol 1e-6; bit for bit on AVX2)."""
    a, c = runs["test"], runs["none"]
    for key in a.history:
        for m in METRICS:
            np.testing.assert_allclose(a.history[key][m], c.history[key][m], rtol=1e-5, atol=1e-6, err_msg=f"{key} {m}")
        assert a.params[key].best_epoch == c.params[key].best_epoch


def test_best_epoch_and_divergence_ignore_the_test_columns():
    row = {
        "loss": 0.5,
        "data_loss": 0.5,
        "penalty": 0.0,
        "accuracy": 0.8,
        "val_loss": 0.6,
        "val_data_loss": 0.6,
        "val_penalty": 0.0,
        "val_accuracy": 0.7,
        "test_loss": math.nan,
        "test_data_loss": 1e30,
        "test_accuracy": math.nan,
    }
    tracker = V.best_epoch_tracker(threshold=1e6)
    assert tracker(row)
    assert tracker({**row, "val_data_loss": 0.5, "test_loss": math.inf})  # still improving, not diverged
    assert not selection.blown_up(row, 1e6)
    assert selection.blown_up({**row, "val_loss": math.nan}, 1e6)
    h = {m: np.array([[row[m], row[m]]]) for m in row}
    assert not selection.diverged_mask(h).any()


def test_resume_refuses_a_snapshot_with_other_columns(runs):
    snapshots = []
    V.run(
        VARIANTS,
        dataclasses.replace(_data(), test=None),
        dataclasses.replace(SETTINGS, epochs=1),
        on_epoch=lambda e, row, take: snapshots.append(take()),
    )
    with pytest.raises(V.VariantError, match="the snapshot's history has the columns"):
        V.run(VARIANTS, _data(), SETTINGS, resume=snapshots[-1])


# --- summary ---------------------------------------------------------------------------


def _hand_history(val, test, test_acc=None) -> dict:
    """A stacked history of 2 seeds from val and test data-loss curves [seeds, epochs] (other columns constant)."""
    val, test = np.asarray(val, float), np.asarray(test, float)
    h = {m: np.full(val.shape, 0.5) for m in metric_names("accuracy", test=True)}
    h.update(val_data_loss=val, val_loss=val, test_data_loss=test, test_loss=test)
    h["test_accuracy"] = np.asarray(test_acc if test_acc is not None else 1 - test, float)
    h["val_penalty"] = np.zeros(val.shape)
    h["diverged"] = selection.diverged_mask(h)
    h["seeds"] = np.arange(val.shape[0])
    return h


def test_early_stopping_per_seed():
    val = [[0.9, 0.5, 0.6, 0.7], [0.9, 0.8, 0.4, 0.6]]
    test = [[0.55, 0.6, 0.7, 0.9], [0.9, 0.7, 0.5, 0.4]]
    e = early_stopping(_hand_history(val, test))
    np.testing.assert_array_equal(e["chosen_epoch"], [2, 3])
    np.testing.assert_array_equal(e["oracle_epoch"], [1, 4])
    np.testing.assert_allclose(e["chosen_test_data_loss"], [0.6, 0.5])
    np.testing.assert_allclose(e["oracle_test_data_loss"], [0.55, 0.4])
    np.testing.assert_allclose(e["chosen_test_metric"], [0.4, 0.5])
    np.testing.assert_allclose(e["optimism"], [0.05, 0.1])
    s = summarize({"v": _hand_history(val, test)})[0]
    assert s.tested and s.chosen_epoch_mean == 2.5 and s.oracle_epoch_mean == 2.5
    assert s.chosen_test_data_loss_mean == pytest.approx(0.55)
    assert s.chosen_test_data_loss_std == pytest.approx(np.std([0.6, 0.5], ddof=1))
    assert s.optimism_mean == pytest.approx(0.075) and s.optimism_std == pytest.approx(np.std([0.05, 0.1], ddof=1))
    assert s.best_epoch == 3  # the first table's: on the mean curve over seeds, [0.9, 0.65, 0.5, 0.65]


def test_early_stopping_of_a_diverged_seed_uses_its_epochs_before():
    val = [[0.9, 0.5, math.nan, 0.1], [0.9, 0.8, 0.4, 0.6]]
    test = [[0.8, 0.6, 0.1, 0.05], [0.9, 0.7, 0.5, 0.45]]
    e = early_stopping(_hand_history(val, test))
    np.testing.assert_array_equal(e["chosen_epoch"], [2, 3])
    np.testing.assert_array_equal(e["oracle_epoch"], [2, 4])  # seed 0's epochs 3 and 4 are diverged: not candidates
    with pytest.raises(KeyError, match="no test columns"):
        early_stopping({m: np.zeros((1, 2)) for m in METRICS})


def test_summary_files_have_the_second_table_only_with_test_columns(runs, tmp_path):
    with_test = summarize(stack(runs["test"].history))
    without = summarize(stack(runs["none"].history))
    assert all(s.tested for s in with_test) and not any(s.tested for s in without)
    assert all(math.isnan(s.optimism_mean) for s in without)
    assert all(s.optimism_mean >= 0 and 1 <= s.chosen_epoch_mean <= EPOCHS for s in with_test)
    for folder, summaries in (("a", with_test), ("b", without)):
        (tmp_path / folder).mkdir()
        write_summary(tmp_path / folder, summaries)
    md_a, md_b = (tmp_path / "a" / fileio.SUMMARY_MD).read_text(), (tmp_path / "b" / fileio.SUMMARY_MD).read_text()
    assert "Honest early stopping" in md_a and "epoch chosen on test" in md_a
    assert "Honest early stopping" not in md_b and early_stopping_table(without) == ""
    header_b = (tmp_path / "b" / fileio.SUMMARY_CSV).read_text().splitlines()[0].split(",")
    assert header_b[-1] == "metric" and "tested" not in header_b  # summary.csv as before test splits
    rows = read_summary(tmp_path / "a" / fileio.SUMMARY_CSV)
    assert rows[0]["tested"] is True and rows[0]["optimism_mean"] == pytest.approx(with_test[0].optimism_mean)


# --- files -----------------------------------------------------------------------------


def test_history_files_without_a_test_split_are_as_before(runs, tmp_path):
    stacked = stack(runs["none"].history)
    jsonl, csv_path = write_history(tmp_path, stacked)
    lines = jsonl.read_text().splitlines()
    assert tuple(json.loads(lines[0])) == OLD_FIELDS
    assert csv_path.read_text().splitlines()[0] == ",".join(OLD_FIELDS)
    again = tmp_path / "again"
    again.mkdir()
    write_history(again, read_history(jsonl))  # read back and written again: the same bytes
    assert (again / fileio.HISTORY_JSONL).read_bytes() == jsonl.read_bytes()
    assert (again / fileio.HISTORY_CSV).read_bytes() == csv_path.read_bytes()


def test_history_files_with_a_test_split_read_back(runs, tmp_path):
    stacked = stack(runs["test"].history)
    jsonl, csv_path = write_history(tmp_path, stacked)
    fields = history_fields("accuracy", test=True)
    assert tuple(json.loads(jsonl.read_text().splitlines()[0])) == fields
    assert csv_path.read_text().splitlines()[0] == ",".join(fields)
    back = read_history(jsonl)
    for name, h in stacked.items():
        for m in metric_names("accuracy", test=True):
            np.testing.assert_array_equal(back[name][m], h[m])
    assert csv_lines([], header=True, test=True).strip() == ",".join(fields)


def test_early_stopping_figure(runs, tmp_path):
    stacked = stack(runs["test"].history)
    assert plots.figure_files(list(stacked), tested=plots.tested(stacked))[-1] == plots.EARLY_STOPPING_FIGURE
    assert plots.EARLY_STOPPING_FIGURE not in plots.figure_files(list(stacked), tested=False)
    paths = plots.make_figures(stacked, tmp_path)
    assert [p.name for p in paths] == plots.figure_files(list(stacked), tested=True)
    assert (tmp_path / plots.EARLY_STOPPING_FIGURE).stat().st_size > 10_000
    without = plots.make_figures(stack(runs["none"].history), tmp_path / "n")
    assert plots.EARLY_STOPPING_FIGURE not in [p.name for p in without]


# --- the sweep: run folder, resume, report ---------------------------------------------

CONFIG = SweepConfig(
    "honest", CONFIGS, epochs=EPOCHS, seeds=len(SEEDS), batch_size=64, synthetic=True
)  # the runs' program


def _sweep(out, monkeypatch, dataset, **kwargs):
    monkeypatch.setattr(sweep_module, "load_dataset", lambda config, progress=False: dataset)
    return run_sweep(CONFIG, out, progress=False, stream=kwargs.pop("stream", io.StringIO()), **kwargs)


def _interrupt_after(monkeypatch, epochs: int):
    """Ctrl-C right after `epochs` epochs (their checkpoint submitted)."""
    original = sweep_module._Progress.epoch_done

    def epoch_done(self, epoch, row):
        original(self, epoch, row)
        if epoch + 1 == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module._Progress, "epoch_done", epoch_done)
    return original


def test_sweep_writes_reports_and_resumes_test_columns(monkeypatch, tmp_path, capsys):
    dataset = _data()
    stream = io.StringIO()
    reference = _sweep(tmp_path / "ref", monkeypatch, dataset, stream=stream)
    out = reference.folder
    assert "Honest early stopping" in (out / fileio.SUMMARY_MD).read_text()
    assert "epoch chosen on val" in stream.getvalue()
    assert (out / fileio.FIGURES_DIR / plots.EARLY_STOPPING_FIGURE).is_file()
    assert f"{fileio.FIGURES_DIR}/{plots.EARLY_STOPPING_FIGURE}" in runfolder.recorded(out)
    assert fileio.read_json(out / fileio.CONFIG_FILE)["data"]["test_size"] == 200
    assert b"test_loss" in (out / events.event_file("narrow", 0)).read_bytes()
    run = load_run(out)
    assert has_test(run.histories["narrow"]) and run.summary[0]["tested"] is True

    original = _interrupt_after(monkeypatch, 2)
    with pytest.raises(SweepInterrupted):
        _sweep(tmp_path / "cut", monkeypatch, dataset)
    monkeypatch.setattr(sweep_module._Progress, "epoch_done", original)
    resumed = _sweep(tmp_path / "cut", monkeypatch, dataset, resume=True)
    assert resumed.resumed_from == 2
    for name in (fileio.HISTORY_JSONL, fileio.HISTORY_CSV, fileio.SUMMARY_CSV):
        assert (resumed.folder / name).read_text() == (out / name).read_text(), name

    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import report as report_cli  # experiments/report.py
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    capsys.readouterr()
    assert report_cli.main([str(out), "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "epoch chosen on test" in printed and plots.EARLY_STOPPING_FIGURE in printed


def test_a_run_started_without_test_columns_resumes_without_them(monkeypatch, tmp_path):
    """A folder of an older jaxreg (holdout data, no test columns) resumed now that the data has a test split.
    The data's checksum is the same (for IMDB: the archive's), so the run goes on as it began."""
    original = _interrupt_after(monkeypatch, 1)
    with pytest.raises(SweepInterrupted):
        _sweep(tmp_path / "old", monkeypatch, dataclasses.replace(_data(), test=None))
    monkeypatch.setattr(sweep_module._Progress, "epoch_done", original)
    stream = io.StringIO()
    resumed = _sweep(tmp_path / "old", monkeypatch, _data(), resume=True, stream=stream, figures=False)
    assert "resumed without them" in stream.getvalue()
    assert not has_test(resumed.histories["narrow"])
    assert tuple(json.loads((resumed.folder / fileio.HISTORY_JSONL).read_text().splitlines()[0])) == OLD_FIELDS

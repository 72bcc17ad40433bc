"""Histories, summary definitions (best epoch, overfitting onset, divergence), the run-folder round trip,
its manifest and checksums."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from jaxreg import fileio, runfolder, runs, selection
from jaxreg.history import METRICS, stack, write_history
from jaxreg.summaries import summarize, summary_notes, summary_table, write_summary

ORIGINAL = [0.50, 0.40, 0.35, 0.36, 0.45, 0.60]  # bottoms out at epoch 3, then climbs


def make_history(curves: dict, seeds=(0, 1), penalty: dict | None = None) -> dict:
    """{(name, seed): {metric: list}} with val_data_loss = curve + 0.01 * seed and simple other metrics."""
    history = {}
    for name, curve in curves.items():
        pen = (penalty or {}).get(name, 0.0)
        for seed in seeds:
            val = np.asarray(curve, dtype=np.float64) + 0.01 * seed
            train = np.linspace(0.6, 0.1, len(curve)) + 0.01 * seed
            history[(name, seed)] = {
                "loss": list(train + pen),
                "data_loss": list(train),
                "penalty": [pen] * len(curve),
                "accuracy": list(1 - train),
                "val_loss": list(val + pen),
                "val_data_loss": list(val),
                "val_penalty": [pen] * len(curve),
                "val_accuracy": list(1 - val / 2),
            }
    return history


@pytest.mark.parametrize(
    "curve, tolerance, onset",
    [
        (ORIGINAL, 0.01, 4),  # 0.36 is 2.9% above the minimum 0.35
        (ORIGINAL, 0.05, 5),  # 0.36 is within 5%, 0.45 is not
        (ORIGINAL, 0.0, 4),
        ([0.5, 0.4, 0.3, 0.2], 0.01, None),  # still improving
        ([0.5, 0.35, 0.6, 0.352], 0.01, None),  # back within the band at the end
        ([0.5, 0.4, 0.4, 0.5], 0.0, 4),  # after the last minimum
        ([0.5, 0.4, math.nan, math.nan], 0.01, 3),  # diverged epochs count as above the band
        ([math.nan, math.nan], 0.01, None),
    ],
)
def test_overfitting_onset(curve, tolerance, onset):
    assert selection.overfitting_onset(curve, tolerance) == onset


def test_stack_orders_seeds_and_variants():
    history = make_history({"b": ORIGINAL, "a": ORIGINAL}, seeds=(1, 0))
    stacked = stack(history, ["a", "b"])
    assert list(stacked) == ["a", "b"]
    np.testing.assert_array_equal(stacked["a"]["seeds"], [0, 1])
    assert stacked["a"]["val_data_loss"].shape == (2, len(ORIGINAL))
    np.testing.assert_allclose(stacked["a"]["val_data_loss"][1], np.add(ORIGINAL, 0.01))
    assert not stacked["a"]["diverged"].any()


def test_summary_uses_the_data_loss_and_seed_statistics():
    history = make_history({"original": ORIGINAL, "l2": [0.5, 0.42, 0.38, 0.37, 0.372, 0.39]}, penalty={"l2": 0.5})
    summary = {s.name: s for s in summarize(stack(history))}
    original, l2 = summary["original"], summary["l2"]
    assert original.seeds == 2 and original.best_epoch == 3
    assert original.best_val_data_loss_mean == pytest.approx(0.355)
    assert original.best_val_data_loss_std == pytest.approx(np.std([0.35, 0.36], ddof=1))
    assert original.best_val_metric_mean == pytest.approx(1 - 0.355 / 2)
    assert original.final_val_data_loss_mean == pytest.approx(0.605)
    assert original.final_loss_mean == pytest.approx(0.105)
    assert original.overfitting_epoch == 4
    assert not original.penalized and original.diverged == ()
    # The penalty (0.5) would make l2's Keras val_loss look far worse; "best" ignores it.
    assert l2.best_epoch == 4 and l2.best_val_data_loss_mean == pytest.approx(0.375)
    assert l2.best_val_loss_mean == pytest.approx(0.875)
    assert l2.penalized and l2.overfitting_epoch == 6  # epoch 5 (0.377) is within 1% of 0.375


def test_single_seed_has_no_std():
    (s,) = summarize(stack(make_history({"original": ORIGINAL}, seeds=(0,))))
    assert s.best_val_data_loss_mean == pytest.approx(0.35) and math.isnan(s.best_val_data_loss_std)
    assert "±" not in summary_table([s])


def test_divergence_is_sticky_and_excluded_from_the_means():
    history = make_history({"original": ORIGINAL})
    history[("original", 1)]["loss"][3] = math.inf
    history[("original", 1)]["val_loss"][3] = math.nan
    history[("original", 1)]["val_data_loss"][3] = math.nan
    history[("original", 1)]["loss"][4] = 0.3  # finite again: still diverged
    h = stack(history)["original"]
    np.testing.assert_array_equal(h["diverged"][1], [False] * 3 + [True] * 3)
    assert not h["diverged"][0].any()
    (s,) = summarize({"original": h})
    assert s.diverged == ((1, 4),)
    assert s.best_epoch == 3  # only epochs where every seed is alive count
    assert math.isnan(s.final_val_data_loss_mean)
    assert "seed 1 @ 4" in summary_table([s])


def test_everything_diverged():
    history = make_history({"x": [math.nan] * 3}, seeds=(0,))
    (s,) = summarize(stack(history))
    assert s.best_epoch is None and s.overfitting_epoch is None and s.diverged == ((0, 1),)
    assert "| -" in summary_table([s])


def test_summary_table_marks_penalized_keras_losses():
    history = make_history({"original": ORIGINAL, "l2": ORIGINAL}, penalty={"l2": 0.1})
    table = summary_table(summarize(stack(history)))
    lines = table.splitlines()
    assert lines[0].startswith("| variant") and "best val data loss" in lines[0] and "overfitting from" in lines[0]
    assert len(lines) == 4 and "(+penalty)" in lines[3] and "(+penalty)" not in lines[2]


def test_run_folder_round_trip(tmp_path):
    history = make_history({"original": ORIGINAL, "l2": [0.5, 0.42, 0.38, 0.37, 0.372, 0.39]}, penalty={"l2": 0.5})
    history[("l2", 1)]["val_loss"][5] = math.inf
    stacked = stack(history)
    summaries = summarize(stacked)
    fileio.write_json(tmp_path / fileio.CONFIG_FILE, {"variants": [{"name": "original"}, {"name": "l2"}]})
    fileio.write_json(tmp_path / fileio.STATUS_FILE, {"state": "finished"})
    write_history(tmp_path, stacked)
    write_summary(tmp_path, summaries, title="test")

    lines = (tmp_path / fileio.HISTORY_JSONL).read_text().splitlines()
    assert len(lines) == 2 * 2 * len(ORIGINAL)
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) for line in lines]
    assert records[0] == {
        "variant": "original",
        "seed": 0,
        "epoch": 1,
        **{m: history[("original", 0)][m][0] for m in METRICS},
        "diverged": False,
    }
    assert records[-1]["val_loss"] is None and records[-1]["diverged"] is True
    with open(tmp_path / fileio.HISTORY_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(lines) and float(rows[-1]["val_loss"]) == math.inf
    assert float(rows[1]["val_data_loss"]) == history[("original", 0)]["val_data_loss"][1]

    run = runs.load_run(tmp_path)
    assert list(run.histories) == ["original", "l2"] and run.status["state"] == "finished"
    np.testing.assert_array_equal(run.epochs, np.arange(1, len(ORIGINAL) + 1))
    for name, h in stacked.items():
        for metric in (*METRICS, "diverged", "seeds"):
            expected = np.where(np.isfinite(h[metric]), h[metric], np.nan) if metric in METRICS else h[metric]
            np.testing.assert_array_equal(run.histories[name][metric], expected, err_msg=f"{name} {metric}")
    assert [r["name"] for r in run.summary] == ["original", "l2"]
    row = run.summary[1]
    assert row["best_epoch"] == 4 and row["penalized"] is True and row["diverged"] == "1@6"
    assert row["best_val_data_loss_mean"] == pytest.approx(summaries[1].best_val_data_loss_mean)
    md = (tmp_path / fileio.SUMMARY_MD).read_text()
    assert md.startswith("# test") and "overfitting from" in md and "| l2 " in md


def test_load_run_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a jaxreg run folder"):
        runs.load_run(tmp_path)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = fileio.atomic_write(tmp_path / "a.txt", "one")
    fileio.atomic_write(path, b"two")
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_divergence_threshold_flags_a_huge_finite_loss():
    history = make_history({"original": ORIGINAL})
    history[("original", 1)]["loss"][2] = 4.8e31  # the clipped Keras loss stays finite; the penalty blew up
    h = stack(history)["original"]
    np.testing.assert_array_equal(h["diverged"][1], [False] * 2 + [True] * 4)
    assert not h["diverged"][0].any()
    assert summarize({"original": h})[0].diverged == ((1, 3),)
    assert not stack(history, divergence_threshold=1e32)["original"]["diverged"].any()
    (relaxed,) = summarize({"original": h}, divergence_threshold=1e32)  # marked again
    assert relaxed.diverged == () and relaxed.best_epoch == 3


def test_divergence_threshold_ignores_accuracies():
    history = make_history({"original": ORIGINAL})  # losses <= 0.61, accuracies up to 0.9
    assert not stack(history, divergence_threshold=0.7)["original"]["diverged"].any()
    history[("original", 0)]["val_penalty"][4] = 0.71  # every loss counts, penalties too
    np.testing.assert_array_equal(
        stack(history, divergence_threshold=0.7)["original"]["diverged"][0], [False] * 4 + [True] * 2
    )
    assert "a loss above 0.7" in summary_notes(divergence_threshold=0.7)


def test_load_run_reads_the_divergence_threshold(tmp_path):
    write_history(tmp_path, stack(make_history({"original": ORIGINAL})))
    assert runs.load_run(tmp_path).divergence_threshold == math.inf  # an older run: NaN and inf only
    fileio.write_json(tmp_path / fileio.CONFIG_FILE, {"config": {"divergence_threshold": 50.0}, "variants": []})
    assert runs.load_run(tmp_path).divergence_threshold == 50.0


def test_manifest_records_once_and_refuses_paths_outside(tmp_path):
    assert runfolder.recorded(tmp_path) is None
    runfolder.record(tmp_path, "b.txt", tmp_path / "figures" / "a.png")
    runfolder.record(tmp_path, "b.txt")
    assert runfolder.recorded(tmp_path) == ["b.txt", "figures/a.png", "manifest.json"]
    assert fileio.read_json(tmp_path / runfolder.MANIFEST_FILE)["format"] == 1
    for bad in ("../x", "/etc/passwd", "."):
        with pytest.raises(ValueError, match="not a path inside the run folder"):
            runfolder.record(tmp_path, bad)

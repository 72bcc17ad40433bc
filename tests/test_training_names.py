"""Every place that shows a variant names its optimizer and learning-rate schedule, as `specs.describe_training` does.

summary.md (columns where variants differ, else one line above the table), summary.csv, figure legends and
subtitles, axis tables, the grid figures, a report made again from a run folder, and TensorBoard's HParams.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import pytest
from test_plots import BOOK, _capture_figure
from test_results import ORIGINAL, make_history

from jaxreg import axis_tables, events, fileio, grid_plots, optim, plots, report, summaries
from jaxreg.config import SweepConfig
from jaxreg.history import stack, write_history
from jaxreg.specs import (
    DEFAULT_PARTS,
    VariantSpec,
    compact_number,
    describe_training,
    shared_and_own_settings,
    training_descriptions,
)

MIXED = (
    VariantSpec("original"),
    VariantSpec("bigger", optimizer="adam", learning_rate=3e-4, b2=0.95),
    VariantSpec("l2", optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True),
    VariantSpec("dropout", optimizer="adamw", weight_decay=0.1, schedule="cosine", warmup_steps=2, decay_steps=100),
)
SAME = tuple(
    VariantSpec(name, optimizer="adam", schedule="exponential", decay_rate=0.5, decay_steps=50) for name in BOOK
)
# a value other than the default for every number an optimizer or schedule reads
UNUSUAL = {"momentum": 0.5, "b1": 0.8, "b2": 0.95, "eps": 1e-6, "decay_rate": 0.3, "decay_steps": 70.0}
UNUSUAL |= {"warmup_steps": 7.0, "alpha": 0.25, "boundaries": (11, 22), "scales": (0.5, 0.2)}
LABELS = {"learning_rate": "lr", "weight_decay": "wd", "warmup_steps": "warmup"}


def _text(field, value) -> str:
    if isinstance(value, tuple):
        return f"{LABELS.get(field, field)}={','.join(f'{x:g}' for x in value)}"
    return f"{LABELS.get(field, field)}={compact_number(value)}"


@pytest.mark.parametrize("optimizer", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_the_description_names_every_number_the_optimizer_and_schedule_read(optimizer, schedule):
    numbers = (*optim.OPTIMIZER_NUMBERS[optimizer], *optim.SCHEDULE_NUMBERS[schedule])
    settings = {f: UNUSUAL[f] for f in numbers}
    if schedule in ("exponential", "cosine"):
        settings["decay_steps"] = 70.0
    spec = VariantSpec("v", optimizer=optimizer, schedule=schedule, learning_rate=2e-3, **settings)
    described_optimizer, described_schedule = describe_training(spec)
    assert described_optimizer.split()[0] in (optimizer, f"RMSprop({optimizer})")
    assert described_schedule.split()[0] == schedule and "lr=2e-3" in described_optimizer.split()
    parts = described_optimizer.split() + described_schedule.split()
    for field in numbers:
        assert _text(field, settings[field]) in parts, (field, parts)
    assert ("wd=0" in parts) == (optimizer in ("adamw", "sgdw"))  # their decay is their own; others name it where set
    assert describe_training(spec.to_dict()) == (described_optimizer, described_schedule)  # config.json's record


def test_numbers_are_compact_and_defaults_known():
    assert [compact_number(x) for x in (1e-3, 3e-4, 0.999, 100, 1e-7, 0.01, 1e-6 / 1e-4, 0.1, 2.5e-5, 1e5)] == [
        "1e-3",
        "3e-4",
        "0.999",
        "100",
        "1e-7",
        "0.01",
        "0.01",
        "0.1",
        "2.5e-5",
        "1e5",
    ]
    assert {"b1=0.9", "b2=0.999", "eps=1e-7", "alpha=0", "wd=0"} <= DEFAULT_PARTS
    assert describe_training(VariantSpec("v", weight_decay=0.01)) == ("RMSprop(keras2) lr=1e-3 wd=0.01", "constant")


def test_shared_and_own_settings_split_what_all_share_from_what_each_has():
    shared, own = shared_and_own_settings(training_descriptions(MIXED[1:2] + MIXED[3:]))
    assert shared == "b1=0.9 eps=1e-7"  # every other part differs between Adam (b2=0.95, 3e-4) and AdamW
    assert own["bigger"] == "adam lr=3e-4 b2=0.95, constant"
    assert own["dropout"].startswith("adamw lr=1e-3 b2=0.999 wd=0.1, cosine warmup=2")
    _, brief = shared_and_own_settings(training_descriptions(MIXED), brief=True)
    assert brief["dropout"] == "adamw lr=1e-3 wd=0.1, cosine warmup=2 decay_steps=100"  # no b1=0.9 etc.: defaults
    shared, own = shared_and_own_settings(training_descriptions(SAME))
    assert shared == "adam lr=1e-3 b1=0.9 b2=0.999 eps=1e-7; schedule exponential decay_rate=0.5 decay_steps=50"
    assert set(own.values()) == {""}


def _summaries(variants):
    return summaries.summarize(stack(make_history(BOOK)), training=training_descriptions(variants))


def test_summary_names_each_variants_optimizer_and_schedule_where_they_differ(tmp_path):
    made = _summaries(MIXED)
    table = summaries.summary_table(made)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["variant", "optimizer", "schedule"] and header[3:] == list(summaries.summary_columns()[1:])
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    for v in MIXED:
        optimizer, schedule = describe_training(v)
        assert f"| {optimizer} " in rows[v.name] and f"| {schedule} " in rows[v.name]
    assert "sgd lr=0.1 momentum=0.9 nesterov" in rows["l2"] and "adam lr=3e-4" in rows["bigger"]
    summaries.write_summary(tmp_path, made)
    read = summaries.read_summary(tmp_path / fileio.SUMMARY_CSV)
    assert [(r["name"], r["optimizer"], r["schedule"]) for r in read] == [
        (v.name, *describe_training(v)) for v in MIXED
    ]


def test_a_shared_optimizer_is_one_line_above_the_unchanged_table(tmp_path):
    made = _summaries(SAME)
    plain = summaries.summary_table(summaries.summarize(stack(make_history(BOOK))))
    line = "Every variant: optimizer adam lr=1e-3 b1=0.9 b2=0.999 eps=1e-7; schedule exponential decay_rate=0.5 "
    line += "decay_steps=50."
    assert summaries.summary_table(made) == f"{line}\n\n{plain}"  # the table itself as before, plus one line
    summaries.write_summary(tmp_path, made, title="t")
    assert (tmp_path / fileio.SUMMARY_MD).read_text().startswith(f"# t\n\n{line}\n\n| variant ")
    with open(tmp_path / fileio.SUMMARY_CSV, newline="") as f:
        assert {row["optimizer"] for row in csv.DictReader(f)} == {describe_training(SAME[0])[0]}


def test_a_report_made_again_names_them_from_config_json(tmp_path):
    stacked = stack(make_history(BOOK))
    fileio.write_json(tmp_path / fileio.CONFIG_FILE, {"variants": [v.to_dict() for v in MIXED]})
    fileio.write_json(tmp_path / fileio.STATUS_FILE, {"state": "finished"})
    write_history(tmp_path, stacked)
    made = report.report(tmp_path, tmp_path / "again", figures=False)
    assert [(s.optimizer, s.schedule) for s in made.summaries] == [describe_training(v) for v in MIXED]
    rows = summaries.read_summary(tmp_path / "again" / fileio.SUMMARY_CSV)
    assert [r["optimizer"] for r in rows] == [describe_training(v)[0] for v in MIXED]


def _legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_figures_name_the_optimizers_that_differ_and_the_settings_all_share(tmp_path, monkeypatch):
    saved = _capture_figure(monkeypatch)
    histories = stack(make_history(BOOK))
    training = training_descriptions(MIXED)
    plots.make_figures(histories, tmp_path, training=training)
    curves, against, train_val = saved
    labels = _legend_texts(curves)
    assert "bigger (adam lr=3e-4 b2=0.95, constant)" in labels
    assert "l2 (sgd lr=0.1 momentum=0.9 nesterov, constant)" in labels
    assert "original (RMSprop(keras2) lr=1e-3, constant)" in labels and len(set(labels)) == len(labels)
    titles = [ax.get_title() for ax in against.axes if ax.get_visible()]
    assert "l2 vs original\nsgd lr=0.1 momentum=0.9 nesterov, constant" in titles
    assert "original: RMSprop(keras2) lr=1e-3, constant" in against.get_suptitle()
    # what the two plotted share (their schedule) is in the title, not the legend
    assert set(_legend_texts(train_val)) == {"original (RMSprop(keras2) lr=1e-3)", "bigger (adam lr=3e-4 b2=0.95)"}
    assert "every variant: b1=0.9 eps=1e-7" not in train_val.get_suptitle()  # original reads no b1
    assert "every variant: schedule constant" in train_val.get_suptitle()

    saved.clear()
    plots.make_figures(histories, tmp_path, training=training_descriptions(SAME))
    shared = "every variant: adam lr=1e-3 b1=0.9 b2=0.999 eps=1e-7; schedule exponential decay_rate=0.5"
    assert shared in saved[0].axes[0].get_title().replace("\n", " ")
    assert set(_legend_texts(saved[0])) == set(BOOK)  # nothing differs: the legends are the names


def test_series_and_axis_tables_name_each_series_optimizer(tmp_path, monkeypatch):
    saved = _capture_figure(monkeypatch)
    rates = (1e-3, 1e-2)
    variants = [VariantSpec(f"adam_lr{r:g}", optimizer="adam", learning_rate=r) for r in rates]
    variants += [VariantSpec(f"sgd_lr{r:g}", optimizer="sgd", learning_rate=r, momentum=0.9) for r in rates]
    histories = stack(make_history({v.name: ORIGINAL for v in variants}))
    values = {v.name: v.learning_rate for v in variants}
    series = SweepConfig("s", tuple(variants), axis="learning_rate").axis_series()
    training = training_descriptions(variants)
    plots.make_figures(histories, tmp_path, axis=("learning_rate", values, series), training=training)
    against = saved[1]
    assert set(_legend_texts(against)) == {"adam", "sgd (sgd momentum=0.9)"}  # lr is the axis: not a label
    assert "every variant: schedule constant" in against.get_suptitle()
    table = axis_tables.axis_table(histories, values, series, "best", "learning_rate", training)
    assert "| sgd (sgd momentum=0.9) |" in table and "| adam |" in table


def test_grid_figures_name_the_shared_optimizer_and_refuse_mixed_ones(tmp_path):
    variants = [
        VariantSpec(f"w{w}_c{c:g}_d{d:g}", (w, w), l2=c, dropout_rate=d)
        for w in (4, 8)
        for c in (0, 1e-3)
        for d in (0, 0.5)
    ]
    factors = grid_plots.grid_factors([v.to_dict() for v in variants])
    assert grid_plots.training_line(factors, training_descriptions(variants)).startswith(
        "every variant: RMSprop(keras2)"
    )
    mixed = training_descriptions([dataclasses.replace(variants[0], optimizer="adam"), *variants[1:]])
    with pytest.raises(ValueError, match="differ in optimizer or schedule"):
        grid_plots.training_line(factors, mixed)


def test_tensorboard_hparams_hold_every_optimizer_and_schedule_setting():
    read = {"learning_rate", "weight_decay", "optimizer", "schedule", "nesterov"}
    read |= {f for fields in (*optim.OPTIMIZER_NUMBERS.values(), *optim.SCHEDULE_NUMBERS.values()) for f in fields}
    assert read <= set(events.HPARAM_FIELDS) | set(events.OPTIMIZER_HPARAM_FIELDS)
    spec = VariantSpec(
        "v", optimizer="adamw", weight_decay=0.1, schedule="cosine", warmup_steps=2, decay_steps=9, alpha=0.1
    )
    h = events.hparams_of(spec.to_dict(), 0)
    assert {
        k: h[k] for k in ("optimizer", "weight_decay", "b2", "schedule", "warmup_steps", "decay_steps", "alpha")
    } == {
        "optimizer": "adamw",
        "weight_decay": 0.1,
        "b2": 0.999,
        "schedule": "cosine",
        "warmup_steps": 2.0,
        "decay_steps": 9.0,
        "alpha": 0.1,
    }


def test_a_sweep_writes_them_into_summary_and_figures(tmp_path, monkeypatch):
    """The whole path in one process: SweepConfig -> run_sweep -> summary.md, summary.csv, figure legends."""
    from jaxreg.sweep import run_sweep

    saved = _capture_figure(monkeypatch)
    config = SweepConfig(
        "mixed",
        (VariantSpec("original", (4,)), VariantSpec("adam", (4,), optimizer="adam", learning_rate=1e-2)),
        epochs=1,
        batch_size=256,
        synthetic=True,
    )
    run_sweep(config, tmp_path / "run", progress=False, stream=io.StringIO())
    md = (tmp_path / "run" / fileio.SUMMARY_MD).read_text()
    assert "| optimizer " in md and "| adam lr=0.01 b1=0.9 b2=0.999 eps=1e-7 |" in md
    assert "Every variant: schedule constant." in md
    rows = summaries.read_summary(tmp_path / "run" / fileio.SUMMARY_CSV)
    assert [r["optimizer"] for r in rows] == [describe_training(v)[0] for v in config.variants]
    assert "adam (adam lr=0.01)" in _legend_texts(saved[0])


def test_the_early_stopping_figure_names_each_variants_settings_in_its_title(tmp_path, monkeypatch):
    saved = _capture_figure(monkeypatch)
    history = make_history(BOOK)
    for columns in history.values():
        for metric in ("loss", "data_loss", "accuracy", "penalty"):
            columns[f"test_{metric}"] = columns[f"val_{metric}"]
    plots.plot_early_stopping(stack(history), tmp_path / "e.png", training_descriptions(MIXED))
    title = saved[-1].get_suptitle().replace("\n", " ")
    assert "l2: sgd lr=0.1 momentum=0.9 nesterov, constant;" in title and "bigger: adam lr=3e-4 b2=0.95" in title
    assert [t.get_text() for t in saved[-1].axes[0].get_xticklabels()] == list(BOOK)  # ticks stay the names

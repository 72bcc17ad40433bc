"""One module chooses (jaxreg.selection): every consumer of the best epoch and of divergence agrees.

A finite curve that crosses the divergence threshold (0.5, 0.4, 2e6, 0.3 with threshold 1e6)
must not have its later 0.3 chosen by anyone: not the summary, not TensorBoard's HParams, not
the axis tables, not the figures, not the progress bar, not the best-epoch parameters kept
during training. A variant with a NaN seed has no best epoch over seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxreg import axis_tables, events, plots, selection, variants
from jaxreg.config import SweepConfig
from jaxreg.history import metric_names, stack
from jaxreg.summaries import early_stopping, summarize
from jaxreg.sweep import _Progress

THRESHOLD = 1e6
NAN = math.nan
# {variant: {seed: validation data loss per epoch}}
VAL = {
    "crossing": {0: [0.5, 0.4, 2e6, 0.3], 1: [0.52, 0.41, 0.35, 0.3]},  # seed 0 blows up, finitely, at epoch 3
    "nan": {0: [0.6, NAN, 0.2, 0.1], 1: [NAN, NAN, NAN, NAN]},  # seed 0 from epoch 2, seed 1 from epoch 1
    "ties": {0: [0.45, 0.42, 0.42, 0.43], 1: [0.45, 0.42, 0.42, 0.43]},  # the first of equal values is the best
}
TEST = {  # test data loss: never decides divergence (the 5e6 is ignored), chooses only the book's epoch
    "crossing": {0: [0.6, 0.5, 0.2, 0.1], 1: [0.6, 0.5, 0.45, 0.46]},
    "nan": {0: [0.7, 0.6, 0.5, 0.4], 1: [0.7, 0.6, 0.5, 0.4]},
    "ties": {0: [0.5, 5e6, 0.44, 0.45], 1: [0.5, 0.47, 0.47, 0.48]},
}
# what the rule gives, worked out by hand (epochs from 1; None: no epoch counts)
PER_SEED_BEST = {
    ("crossing", 0): 2,
    ("crossing", 1): 4,
    ("nan", 0): 1,
    ("nan", 1): None,
    ("ties", 0): 2,
    ("ties", 1): 2,
}
VARIANT_BEST = {"crossing": 2, "nan": None, "ties": 2}
ORACLE = {("crossing", 0): 2, ("crossing", 1): 3, ("nan", 0): 1, ("nan", 1): None, ("ties", 0): 3, ("ties", 1): 2}


def _history() -> dict:
    out = {}
    for name, seeds in VAL.items():
        for seed, val in seeds.items():
            val, test = np.array(val), np.array(TEST[name][seed])
            columns = dict(
                loss=np.full(4, 0.3), data_loss=np.full(4, 0.3), penalty=np.zeros(4), accuracy=np.full(4, 0.8)
            )
            columns.update(val_loss=val, val_data_loss=val, val_penalty=np.zeros(4), val_accuracy=np.full(4, 0.7))
            columns.update(test_loss=test, test_data_loss=test, test_accuracy=np.full(4, 0.6))
            assert tuple(columns) == metric_names("accuracy", test=True)
            out[(name, seed)] = {m: [float(x) for x in v] for m, v in columns.items()}
    return out


def _epoch(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


@pytest.fixture(scope="module")
def stacked():
    return stack(_history(), divergence_threshold=THRESHOLD)


def test_the_rule_by_hand(stacked):
    assert selection.best_epoch([NAN, 0.3, 0.2, 0.2, NAN]) == 2 and selection.best_epoch([NAN, NAN]) is None
    assert selection.is_improvement(0.1, 0.2) and not selection.is_improvement(0.2, 0.2)
    assert stacked["crossing"]["diverged"][0].tolist() == [False, False, True, True]
    assert not stacked["ties"]["diverged"].any()  # test_data_loss 5e6 is not a divergence
    for key, best in PER_SEED_BEST.items():
        got = selection.seed_best_epoch(_history()[key], THRESHOLD)
        assert (None if got is None else got + 1) == best, key


def test_summary_axis_tables_and_figures_agree(stacked):
    summaries = {s.name: s for s in summarize(stacked)}
    for name, best in VARIANT_BEST.items():
        assert summaries[name].best_epoch == best, name
        assert axis_tables.cell(stacked[name], "best_epoch") == ("-" if best is None else str(best)), name
        drawn = plots.plotted_epoch(stacked[name], "best")
        assert (None if drawn is None else drawn + 1) == best, name
    assert summaries["crossing"].best_val_data_loss_mean == pytest.approx(0.405)
    assert summaries["ties"].overfitting_epoch == 4


def test_early_stopping_chooses_per_seed_as_training_keeps_the_best(stacked):
    for name in VAL:
        chosen = early_stopping(stacked[name])
        for i, seed in enumerate(stacked[name]["seeds"]):
            assert _epoch(chosen["chosen_epoch"][i]) == PER_SEED_BEST[(name, int(seed))], (name, seed)
            assert _epoch(chosen["oracle_epoch"][i]) == ORACLE[(name, int(seed))], (name, seed)


def test_tensorboard_and_the_online_tracker_agree_per_seed():
    assert variants.best_epoch_tracker is selection.best_epoch_tracker  # training keeps the best with this rule
    for key, metrics in _history().items():
        hparams = events.best_metrics(metrics, THRESHOLD)
        assert hparams.get("best/epoch") == PER_SEED_BEST[key], key
        improved = selection.best_epoch_tracker(THRESHOLD)
        kept = None
        for e in range(4):
            if improved({m: v[e] for m, v in metrics.items()}):
                kept = e + 1
        assert kept == PER_SEED_BEST[key], key
    assert events.best_metrics(_history()[("crossing", 0)], 1e7)["best/epoch"] == 4  # the run's threshold decides


def test_the_progress_bar_shows_the_summarys_best(stacked):
    config = SweepConfig(
        "agree",
        (variants.VariantSpec("crossing"), variants.VariantSpec("nan"), variants.VariantSpec("ties")),
        epochs=4,
        seeds=2,
        divergence_threshold=THRESHOLD,
    )
    progress = _Progress(config, 0, {}, enabled=False)
    history = _history()
    for e in range(4):
        progress.epoch_done(e, {key: {m: v[e] for m, v in h.items()} for key, h in history.items()})
    progress.bar.close()
    best = min((s for s in summarize(stacked) if s.best_epoch is not None), key=lambda s: s.best_val_data_loss_mean)
    value, name, epoch = progress.best
    assert (name, epoch) == (best.name, best.best_epoch) == ("crossing", 2)
    assert value == pytest.approx(best.best_val_data_loss_mean)

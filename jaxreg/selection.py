"""Which epochs count and which one is chosen: divergence, the best epoch, overfitting onset, early stopping.

The one home of these decisions. The summary, TensorBoard's HParams, the figures, the axis
tables, the progress bar and the training loop's best-epoch parameters all call this module,
so they cannot disagree. Pure NumPy; no other jaxreg module below it.

  * blown up: an epoch of a (variant, seed) where any metric is NaN or infinite, or any loss
    (every metric but the accuracies) exceeds the divergence threshold in size
    (DIVERGENCE_THRESHOLD = 1e6 unless the sweep sets another). The test split's columns
    (test_*) are left out: they never decide anything. The threshold catches blow-ups that
    Keras' clipped loss keeps finite: its per-example data loss is at most ~16.1, so a loss of
    1e6 comes from exploding weights (through the penalty) or an exploding logit loss.
  * diverged: from the first blown-up epoch to the end (`diverged_mask`). Only the epochs
    before it *count* (`counts`); `masked` sets the others to NaN, so a mean over seeds is
    missing wherever any seed has diverged.
  * best epoch of a curve: the first epoch of its lowest value among the epochs that count
    (`best_epoch`). Training keeps the best parameters epoch by epoch with the same rule
    (`best_epoch_tracker`: an epoch that counts and `is_improvement` over the best so far,
    strictly lower, so the first of equal values stays). The curve is the validation *data*
    loss (CHOICE; Keras' val_loss of a penalized model includes the penalty, which is not
    comparable across variants): per seed for the saved parameters, TensorBoard and early
    stopping; its mean over seeds (`choice_curve`) for the summary, figures, tables and the
    progress bar.
  * overfitting onset (`overfitting_onset`): the first epoch after the best one from which the
    curve stays above (1 + tolerance) x its minimum until the last epoch.
  * early stopping (`early_stopping_epochs`): per seed, the epoch chosen on validation
    (honest) and the one chosen on the test split's data loss (the book's protocol, ORACLE).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

DIVERGENCE_THRESHOLD = 1e6
OVERFITTING_TOLERANCE = 0.01
CHOICE = "val_data_loss"  # the column every epoch is chosen on
ORACLE = "test_data_loss"  # the column the book's protocol chooses on (reported apart, never used in a run)
TEST_PREFIX = "test_"  # the test split's columns: never used to mark divergence or to choose
NOT_METRICS = ("diverged", "seeds")  # entries of a stacked history that are not metrics


def blown_up(values: Mapping[str, np.ndarray], threshold: float = DIVERGENCE_THRESHOLD) -> np.ndarray:
    """bool, elementwise: any metric non-finite, or any loss (a metric but an accuracy) above `threshold` in size.

    The test split's columns (test_*) are left out: they never decide anything."""
    bad = np.zeros(np.shape(values[next(iter(values))]), dtype=bool)
    for name, v in values.items():
        if name in NOT_METRICS or name.startswith(TEST_PREFIX):
            continue
        v = np.asarray(v, dtype=np.float64)
        bad |= ~np.isfinite(v)
        if not name.endswith("accuracy"):
            bad |= np.abs(v) > threshold
    return bad


def diverged_mask(values: Mapping[str, np.ndarray], threshold: float = DIVERGENCE_THRESHOLD) -> np.ndarray:
    """bool [..., epochs]: True from the first epoch that is `blown_up`, to the end."""
    return np.logical_or.accumulate(blown_up(values, threshold), axis=-1)


def counts(values: Mapping[str, np.ndarray], threshold: float = DIVERGENCE_THRESHOLD) -> np.ndarray:
    """bool [..., epochs]: the epochs that count, those before the first blown-up one."""
    return ~diverged_mask(values, threshold)


def masked(h: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """A stacked variant's metric [seeds, epochs] with the epochs that do not count (h["diverged"]) set to NaN."""
    return np.where(h["diverged"], np.nan, h[metric])


def seed_mean(h: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """Mean over seeds per epoch of a stacked variant's metric; NaN where any seed has diverged."""
    return masked(h, metric).mean(axis=0)


def choice_curve(h: Mapping[str, np.ndarray]) -> np.ndarray:
    """The curve a stacked variant's best epoch is chosen on: the mean over seeds of its validation data loss."""
    return seed_mean(h, CHOICE)


def is_improvement(value: float, best: float) -> bool:
    """Whether an epoch that counts beats the best so far: strictly lower, so the first of equal values stays."""
    return bool(value < best)


def best_epoch(curve: Sequence[float]) -> int | None:
    """The best epoch (from 0) of a curve: the first of its lowest finite value; None if no value is finite.

    A NaN (an epoch that does not count, see `masked`) is never chosen. Decided epoch by epoch
    with `is_improvement`, as training keeps the best parameters (`best_epoch_tracker`)."""
    best, chosen = math.inf, None
    for epoch, value in enumerate(np.asarray(curve, dtype=np.float64)):
        if math.isfinite(value) and is_improvement(value, best):
            best, chosen = value, epoch
    return chosen


def best_epochs(curves: np.ndarray) -> list[int | None]:
    """`best_epoch` of each row of [seeds, epochs]."""
    return [best_epoch(row) for row in np.asarray(curves, dtype=np.float64)]


def variant_best_epoch(h: Mapping[str, np.ndarray]) -> int | None:
    """The best epoch (from 0) of a stacked variant: of its `choice_curve`; None when every epoch has a diverged seed."""
    return best_epoch(choice_curve(h))


def seed_best_epoch(history: Mapping[str, Sequence[float]], threshold: float = DIVERGENCE_THRESHOLD) -> int | None:
    """The best epoch (from 0) of one seed's history {metric: [epochs]}, its divergence marked with `threshold`."""
    values = {m: np.asarray(v, dtype=np.float64) for m, v in history.items() if m not in NOT_METRICS}
    return best_epoch(np.where(counts(values, threshold), values[CHOICE], np.nan))


def best_epoch_tracker(threshold: float = DIVERGENCE_THRESHOLD) -> Callable[[Mapping[str, float]], bool]:
    """A function metrics -> whether this epoch is the best so far, for one variant and seed, epoch by epoch.

    The same rule as `seed_best_epoch` on the whole history, one epoch at a time: an epoch
    counts until the first `blown_up` one (with `threshold`), and is the new best when it
    counts and `is_improvement` over the best so far. Training keeps these parameters as
    .best (`jaxreg.params`)."""
    best, diverged = math.inf, False

    def improved(metrics: Mapping[str, float]) -> bool:
        nonlocal best, diverged
        diverged = diverged or bool(blown_up({k: np.asarray(v) for k, v in metrics.items()}, threshold))
        if diverged or not is_improvement(metrics[CHOICE], best):
            return False
        best = metrics[CHOICE]
        return True

    return improved


def overfitting_onset(curve: Sequence[float], tolerance: float = OVERFITTING_TOLERANCE) -> int | None:
    """First epoch (from 1) after the minimum from which `curve` stays above (1 + tolerance) x minimum.

    NaN entries (diverged) count as above the band. None if the curve has no finite value or
    its last epoch is within the band. With tolerance 0 this is simply the epoch after the
    last minimum, unless the minimum is the last epoch.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if not np.isfinite(curve).any():
        return None
    threshold = np.nanmin(curve) * (1 + tolerance)
    within = np.flatnonzero(np.isfinite(curve) & (curve <= threshold))
    last = int(within[-1])
    return None if last == curve.size - 1 else last + 2


def early_stopping_epochs(h: Mapping[str, np.ndarray]) -> tuple[list[int | None], list[int | None]]:
    """Per seed of a stacked variant with test columns: (the epoch honest early stopping chooses, the
    one the book's protocol chooses), from 0; None for a seed diverged from epoch 1.

    Honest: the best epoch of the seed's validation data loss (what training keeps as .best);
    the book's: the best epoch of its test data loss (its validation set is the test set).
    Both among the epochs before the seed diverged (divergence never looks at test columns)."""
    return best_epochs(masked(h, CHOICE)), best_epochs(masked(h, ORACLE))

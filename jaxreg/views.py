"""A variant's view of the training split: how many examples it trains on and how noisy their labels are.

Two axes of the over/underfitting study that are about the data, not the model:

- train_size n: the variant trains on the first n examples of its seed's fixed permutation of
  the training split (`subset_rows`), with the batches and steps that a separate run on those
  n examples would have (epoch order `batches.epoch_order(seed, epoch, n)` over them).
- label_noise p: round(p * n) of those examples, chosen by the seed, get a label drawn
  uniformly at random from all classes (Zhang et al. 2017, "Understanding deep learning
  requires rethinking generalization"), so p = 1 means labels that carry no information; for
  binary labels about half of the replaced labels change (`changed_fraction` says how many).

Validation (and test) labels are never touched. Both come from NumPy generators seeded with
(seed, a tag of their own), so a view depends on the variant's seed alone and a run on the
subset as its own data set (`view_split`) sees exactly the same examples and labels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxreg.checks import is_int, is_number

# The second word of each generator's seed: any fixed number other than an epoch index would
# do; these are kept apart from `batches.epoch_order`'s [seed, epoch] by having three words.
_SUBSET_TAG = (0x5B5E7, 1)
_NOISE_TAG = (0x5B5E7, 2)


@dataclasses.dataclass(frozen=True, order=True)
class View:
    """train_size: None for the whole training split; label_noise: fraction in [0, 1]."""

    train_size: int | None = None
    label_noise: float = 0.0

    def __post_init__(self):
        if self.train_size is not None and (not is_int(self.train_size) or self.train_size < 1):
            raise ValueError(f"train_size={self.train_size!r} must be None (all examples) or an integer >= 1")
        if not is_number(self.label_noise) or not 0 <= self.label_noise <= 1:
            raise ValueError(f"label_noise={self.label_noise!r} must be a number from 0 to 1")

    @property
    def is_whole(self) -> bool:
        """Whether this view is the training split as it is."""
        return self.train_size is None and self.label_noise == 0

    def sort_key(self) -> tuple:
        return (-1 if self.train_size is None else self.train_size, self.label_noise)


FIELDS = tuple(f.name for f in dataclasses.fields(View))  # VariantSpec's data-view fields, also sweep axes


def subset_rows(seed: int, n_train: int, train_size: int | None) -> np.ndarray:
    """The rows of a view's examples: the first train_size of the seed's permutation of range(n_train)."""
    if train_size is None:
        return np.arange(n_train)
    if train_size > n_train:
        raise ValueError(f"train_size={train_size} is more than the {n_train:,} examples of the training split")
    return np.random.default_rng([seed, *_SUBSET_TAG]).permutation(n_train)[:train_size]


def noisy_labels(y: np.ndarray, seed: int, fraction: float, num_classes: int) -> np.ndarray:
    """y with round(fraction * len(y)) labels, chosen by the seed, replaced by uniformly random classes 0..num_classes-1."""
    y = np.array(y, copy=True)
    k = int(round(fraction * len(y)))
    if k == 0:
        return y
    rng = np.random.default_rng([seed, *_NOISE_TAG])
    rows = rng.permutation(len(y))[:k]
    y[rows] = rng.integers(0, num_classes, size=k).astype(y.dtype)
    return y


def view_split(split, seed: int, view: View, num_classes: int | None):
    """The training split a variant with this view and seed trains on (a `dataset.Split`).

    num_classes: 2 for binary labels, the class count for multiclass; label noise on
    regression targets (None) is an error.
    """
    rows = subset_rows(seed, len(split), view.train_size)
    part = split if view.train_size is None else split.take(rows, f"{split.name}[:{view.train_size}]")
    if view.label_noise == 0:
        return part
    if num_classes is None:
        raise ValueError(f"label_noise={view.label_noise} needs class labels; this data has regression targets")
    return dataclasses.replace(part, y=noisy_labels(part.y, seed, view.label_noise, num_classes))


def changed_fraction(split, seed: int, view: View, num_classes: int | None) -> float:
    """The fraction of a view's training labels that differ from the true ones."""
    rows = subset_rows(seed, len(split), view.train_size)
    return float(np.mean(view_split(split, seed, view, num_classes).y != split.y[rows])) if len(rows) else 0.0

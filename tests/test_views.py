"""Data views: training-set size and label noise per variant, inside one program (jaxreg.views)."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxreg import data, views
from jaxreg import dataset as ds_mod
from jaxreg import variants as V
from jaxreg.batches import make_batches
from jaxreg.train import Hyperparameters, StepConfig, evaluate

SETTINGS = V.RunSettings(epochs=3, batch_size=256)
RTOL = 1e-5  # vmapped and lone programs may round float32 sums differently (~1e-7)


@pytest.fixture(scope="module")
def synthetic():
    return data.synthetic_dataset(n_train=1500, n_validation=400, num_words=500, seed=3)


@pytest.fixture(scope="module")
def mixed_run(synthetic):
    """One program: whole split, two training-set sizes, label noise, for two seeds."""
    specs = [
        V.VariantSpec("whole", (16, 16)),
        V.VariantSpec("n300", (16, 16), train_size=300),
        V.VariantSpec("n1000_l2", (16, 16), train_size=1000, l2=1e-3),
        V.VariantSpec("noisy", (16, 16), label_noise=1.0, dropout_rate=0.3),
    ]
    return V.run(V.with_seeds(specs, [0, 1]), synthetic, SETTINGS)


def _close(a, b):
    for metric in a:
        np.testing.assert_allclose(a[metric], b[metric], rtol=RTOL, atol=1e-6, err_msg=metric)


def test_views_share_one_program(mixed_run):
    assert len(mixed_run.buckets) == 1
    assert mixed_run.buckets[0]["variants"] == ["whole", "n300", "n1000_l2", "noisy"]


@pytest.mark.numerics
@pytest.mark.parametrize("name, size, l2", [("n300", 300, 0.0), ("n1000_l2", 1000, 1e-3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_train_size_equals_a_separate_run_on_the_subset(synthetic, mixed_run, name, size, l2, seed):
    rows = views.subset_rows(seed, len(synthetic.train), size)
    subset = dataclasses.replace(synthetic, train=synthetic.train.take(rows, "subset"))
    alone = V.run([V.VariantSpec(name, (16, 16), l2=l2, seed=seed)], subset, SETTINGS)
    _close(mixed_run.history[(name, seed)], alone.history[(name, seed)])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6),
        mixed_run.params[(name, seed)].final,
        alone.params[(name, seed)].final,
    )


@pytest.mark.numerics
def test_the_whole_view_next_to_smaller_ones_trains_as_usual(synthetic, mixed_run):
    alone = V.run([V.VariantSpec("whole", (16, 16), seed=1)], synthetic, SETTINGS)
    _close(mixed_run.history[("whole", 1)], alone.history[("whole", 1)])


@pytest.mark.numerics
def test_label_noise_leaves_validation_labels_alone(synthetic, mixed_run):
    """The reported validation loss of a variant trained on fully random labels is its loss on the true labels."""
    params = mixed_run.params[("noisy", 0)].final
    val = synthetic.validation
    batches = jax.tree.map(np.asarray, make_batches(val.x, val.y, np.arange(len(val)), 400, 400 * 500))
    config = StepConfig(widths=(16, 16), product="dense")
    metrics = evaluate(params, batches, Hyperparameters.create(), config=config)
    np.testing.assert_allclose(float(metrics["loss"]), mixed_run.history[("noisy", 0)]["val_loss"][-1], rtol=RTOL)
    # fully random training labels: training accuracy near chance, unlike the clean variant's
    assert abs(mixed_run.history[("noisy", 0)]["accuracy"][0] - 0.5) < 0.1


def test_subset_rows_are_a_prefix_of_the_seeds_permutation():
    a, b = views.subset_rows(4, 100, 10), views.subset_rows(4, 100, 30)
    np.testing.assert_array_equal(a, b[:10])
    assert len(set(b)) == 30 and b.max() < 100
    assert not np.array_equal(views.subset_rows(5, 100, 30), b)
    np.testing.assert_array_equal(views.subset_rows(4, 100, None), np.arange(100))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_noisy_labels_resample_exactly_the_fraction(fraction):
    y = np.zeros(1001, np.float32)
    noisy = views.noisy_labels(y, seed=7, fraction=fraction, num_classes=2)
    assert noisy.dtype == y.dtype and set(np.unique(noisy)) <= {0.0, 1.0}
    changed = int((noisy != y).sum())
    k = round(fraction * len(y))
    # resampled labels are a fair coin: about half of the k change, none outside them
    assert changed <= k
    if k:
        assert abs(changed / k - 0.5) < 0.1
    np.testing.assert_array_equal(noisy, views.noisy_labels(y, seed=7, fraction=fraction, num_classes=2))
    assert y.sum() == 0  # the input is not modified


def test_noisy_multiclass_labels_stay_in_range():
    y = np.arange(1000, dtype=np.int32) % 5
    noisy = views.noisy_labels(y, seed=1, fraction=1.0, num_classes=5)
    assert noisy.min() >= 0 and noisy.max() <= 4
    assert abs(np.mean(noisy != y) - 0.8) < 0.06


def test_changed_fraction_counts_flipped_labels(synthetic):
    view = views.View(train_size=800, label_noise=0.4)
    changed = views.changed_fraction(synthetic.train, 0, view, 2)
    assert 0.12 < changed < 0.28
    assert views.changed_fraction(synthetic.train, 0, views.View(800), 2) == 0.0


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(train_size=0), "train_size=0"),
        (dict(train_size=2.5), "train_size=2.5"),
        (dict(label_noise=1.5), "label_noise=1.5"),
        (dict(label_noise=-0.1), "label_noise=-0.1"),
        (dict(label_noise="0.2"), "label_noise='0.2'"),
    ],
)
def test_bad_views_are_refused_naming_the_field(fields, message):
    with pytest.raises(V.VariantError, match=f"variant 'v'.*{message}"):
        V.VariantSpec("v", (16, 16), **fields)


def test_a_view_larger_than_the_training_split_is_refused(synthetic):
    with pytest.raises(V.VariantError, match="variant 'big'.*train_size=5000 is more than the 1,500"):
        V.run([V.VariantSpec("big", (16, 16), train_size=5000)], synthetic, SETTINGS)


def test_label_noise_needs_class_labels():
    rng = np.random.default_rng(0)
    regression = ds_mod.from_arrays(
        rng.normal(size=(200, 5)).astype(np.float32), rng.normal(size=200), holdout=50, seed=0
    )
    with pytest.raises(V.VariantError, match="variant 'r'.*label_noise=0.2 needs class labels"):
        V.run([V.VariantSpec("r", (8,), label_noise=0.2)], regression, SETTINGS)

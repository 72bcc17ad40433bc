"""Early stopping with patience (variants.RunSettings.patience, --patience): when a run ends, and what it keeps."""

import io
import json

import jax
import numpy as np
import pytest

from jaxreg import data
from jaxreg import variants as V
from jaxreg.config import SweepConfig, SweepError
from jaxreg.sweep import run_sweep

EPOCHS = 15


@pytest.fixture(scope="module")
def synthetic():
    return data.synthetic_dataset(n_train=600, n_validation=300, num_words=300, seed=5)


@pytest.fixture(scope="module")
def specs():
    # two models that overfit within a few epochs, at different epochs
    return V.with_seeds(
        [V.VariantSpec("wide", (64, 64), learning_rate=3e-3), V.VariantSpec("narrow", (8, 8), learning_rate=1e-2)],
        [0, 1],
    )


@pytest.fixture(scope="module")
def full_and_stopped(synthetic, specs):
    full = V.run(specs, synthetic, V.RunSettings(epochs=EPOCHS, batch_size=128))
    stopped = V.run(specs, synthetic, V.RunSettings(epochs=EPOCHS, batch_size=128, patience=2))
    return full, stopped


def test_the_run_ends_once_every_variant_has_stopped(full_and_stopped):
    full, stopped = full_and_stopped
    ran = len(stopped.history[("wide", 0)]["loss"])
    assert ran < EPOCHS, "a variant still improved at the end: the test data no longer overfits"
    best = {k: p.best_epoch for k, p in stopped.params.items()}
    assert all(V.stopped(b, ran, 2) for b in best.values())
    assert not all(V.stopped(b, ran - 1, 2) for b in best.values())  # not one epoch earlier
    # the epochs trained are the full run's first epochs (training does not depend on patience)
    for key, h in stopped.history.items():
        for metric, values in h.items():
            np.testing.assert_array_equal(values, full.history[key][metric][:ran], err_msg=f"{key} {metric}")


def test_each_variant_keeps_its_best_epoch(full_and_stopped):
    full, stopped = full_and_stopped
    for key, params in stopped.params.items():
        assert params.best_epoch == full.params[key].best_epoch, key  # the best came before the stop
        jax.tree.map(np.testing.assert_array_equal, params.best, full.params[key].best)


def test_stopped_counts_epochs_without_a_new_best():
    assert not V.stopped(3, 4, 2) and V.stopped(3, 5, 2)
    assert V.stopped(None, 2, 2) and not V.stopped(None, 1, 2)
    assert not V.stopped(1, 100, None)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_bad_patience_is_refused(bad):
    with pytest.raises(ValueError, match="RunSettings.patience"):
        V.RunSettings(patience=bad)
    with pytest.raises(SweepError, match="patience"):
        SweepConfig(name="x", variants=(V.VariantSpec("a"),), patience=bad)


def test_a_sweep_with_patience_says_where_it_stopped(tmp_path):
    config = SweepConfig(
        name="early",
        variants=(V.VariantSpec("wide", (32, 32), learning_rate=1e-2),),
        synthetic=True,
        epochs=15,
        patience=2,
    )
    stream = io.StringIO()
    result = run_sweep(config, tmp_path / "run", progress=False, stream=stream, tensorboard=False)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    ran = result.histories["wide"]["loss"].shape[1]
    assert status["state"] == "finished" and status["epochs_done"] == ran < 15
    assert f"the run ended after epoch {ran} of 15" in stream.getvalue()
    assert f"early: {ran} epochs (early stopping: {ran} of 15)" in (tmp_path / "run" / "summary.md").read_text()

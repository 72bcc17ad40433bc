"""Tasks: the multiclass and regression losses and metrics, Keras' clipped forms, and the checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import history, losses
from jaxreg.tasks import Task, task_for

pytestmark = pytest.mark.numerics


def test_keras_sparse_categorical_cross_entropy_matches_keras():
    keras = pytest.importorskip("keras")  # in the dev extra
    logits = jax.random.normal(jax.random.key(0), (64, 5)) * 6.0
    labels = jax.random.randint(jax.random.key(1), (64,), 0, 5)
    probs = np.asarray(jax.nn.softmax(logits))
    theirs = np.asarray(keras.losses.sparse_categorical_crossentropy(np.asarray(labels), probs))
    ours = np.asarray(losses.softmax_cross_entropy(logits, labels, "keras"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_keras_clip_caps_the_multiclass_loss_and_logits_mode_does_not():
    logits = jnp.array([[50.0, -50.0, 0.0]])
    wrong = jnp.array([1])
    capped = float(losses.softmax_cross_entropy(logits, wrong, "keras")[0])
    assert capped == pytest.approx(-np.log(1e-7), rel=1e-6)
    assert float(losses.softmax_cross_entropy(logits, wrong, "logits")[0]) == pytest.approx(100.0, rel=1e-6)


def test_modes_agree_where_nothing_is_clipped():
    logits = jax.random.normal(jax.random.key(2), (32, 4))
    labels = jax.random.randint(jax.random.key(3), (32,), 0, 4)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, "keras"),
        losses.softmax_cross_entropy(logits, labels, "logits"),
        rtol=1e-5,
    )


def test_metrics_per_task():
    multiclass = Task("multiclass", num_classes=3)
    logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(multiclass.metric_per_example(logits, jnp.array([1, 2])), [1.0, 0.0])
    regression = Task("regression", "mse")
    out = jnp.array([[1.0], [4.0]])  # a model's [batch, 1] output is squeezed
    np.testing.assert_allclose(regression.loss_per_example(out, jnp.array([2.0, 1.0])), [1.0, 9.0])
    np.testing.assert_allclose(regression.metric_per_example(out, jnp.array([2.0, 1.0])), [1.0, 3.0])
    binary = Task()
    np.testing.assert_array_equal(binary.metric_per_example(jnp.array([0.5, -0.5]), jnp.array([1.0, 1.0])), [1.0, 0.0])
    assert (multiclass.outputs, regression.outputs, binary.outputs) == (3, 1, 1)
    assert (
        history.metric_names(regression.metric)[3] == "mae"
        and history.metric_names(binary.metric)[-1] == "val_accuracy"
    )


def test_contradictory_task_settings_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="Task.num_classes must be an integer >= 2"):
        Task("multiclass")
    with pytest.raises(ValueError, match="Task.loss must be one of \\('mse',\\) for a regression task"):
        Task("regression", "keras")
    with pytest.raises(ValueError, match="Task.loss must be one of .* for a binary task, got 'mse'"):
        Task("binary", "mse")
    with pytest.raises(ValueError, match="num_classes is for multiclass tasks only"):
        Task("binary", num_classes=3)
    assert task_for("regression") == Task("regression", "mse")
    assert task_for("multiclass", num_classes=10) == Task("multiclass", "keras", 10)


def test_defaults_agree_across_modules():
    """One default loss: losses' functions, Task and the study's StepConfig all use the Keras-clipped form."""
    import inspect

    from jaxreg.train import StepConfig

    for fn in (losses.binary_cross_entropy, losses.softmax_cross_entropy):
        assert inspect.signature(fn).parameters["mode"].default == losses.DEFAULT_MODE == "keras"
    assert Task().loss == StepConfig().task.loss == losses.DEFAULT_MODE

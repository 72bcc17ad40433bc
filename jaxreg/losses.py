"""Per-example losses and metrics on a model's outputs: binary, multiclass and regression.

Classification has two modes. "logits" is the numerically stable loss on logits; "keras"
reproduces Keras, which turns logits into probabilities (sigmoid, softmax), clips them to
[eps, 1 - eps] (eps = 1e-7) and takes the log. The clip caps each example's loss at about
16.1 and zeroes its gradient once the model is that confident, which visibly changes how
the `bigger` model's validation loss explodes; the study therefore uses "keras", and it is
the default everywhere (`DEFAULT_MODE`). Regression uses the squared error ("mse").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KERAS_EPSILON = 1e-7
LOSS_MODES = ("keras", "logits")
DEFAULT_MODE = "keras"  # the one default of every classification loss in jaxreg


def _check_mode(mode: str) -> None:
    if mode not in LOSS_MODES:
        raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}")


def binary_cross_entropy(logits: jax.Array, labels: jax.Array, mode: str = DEFAULT_MODE) -> jax.Array:
    """Per-example binary cross-entropy of `labels` (0/1) given `logits`."""
    _check_mode(mode)
    if mode == "logits":
        return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    probs = jnp.clip(jax.nn.sigmoid(logits), KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -(labels * jnp.log(probs) + (1.0 - labels) * jnp.log(1.0 - probs))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mode: str = DEFAULT_MODE) -> jax.Array:
    """Per-example cross-entropy of integer class `labels` given `logits` [..., classes].

    "keras" is Keras' sparse_categorical_crossentropy on softmax outputs (probabilities
    clipped to [eps, 1 - eps] before the log); "logits" is optax's stable form.
    """
    _check_mode(mode)
    labels = labels.astype(jnp.int32)
    if mode == "logits":
        log_probs = jax.nn.log_softmax(logits)
    else:
        log_probs = jnp.log(jnp.clip(jax.nn.softmax(logits), KERAS_EPSILON, 1.0 - KERAS_EPSILON))
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example (prediction - target)^2: its mean is the MSE."""
    return jnp.square(predictions - targets)


def absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example |prediction - target|: its mean is the MAE."""
    return jnp.abs(predictions - targets)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the prediction (probability > 0.5, i.e. logit > 0) matches the 0/1 label."""
    return ((logits > 0).astype(labels.dtype) == labels).astype(jnp.float32)


def correct_class(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the highest logit's class is the integer label (ties: the first such class)."""
    return (jnp.argmax(logits, axis=-1) == labels.astype(jnp.int32)).astype(jnp.float32)

"""Binary cross-entropy and accuracy on logits.

Two modes: "logits" is the numerically stable loss on logits; "keras" reproduces Keras'
`binary_crossentropy` on sigmoid outputs, which clips probabilities to [eps, 1 - eps]
(eps = 1e-7) before the log. The clip caps each example's loss at about 16.1 and zeroes its
gradient once the model is that confident, which visibly changes how the `bigger` model's
validation loss explodes; the study's preset therefore uses "keras".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KERAS_EPSILON = 1e-7
LOSS_MODES = ("keras", "logits")


def binary_cross_entropy(logits: jax.Array, labels: jax.Array, mode: str = "logits") -> jax.Array:
    """Per-example binary cross-entropy of `labels` (0/1) given `logits`."""
    if mode == "logits":
        return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    if mode == "keras":
        probs = jnp.clip(jax.nn.sigmoid(logits), KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        return -(labels * jnp.log(probs) + (1.0 - labels) * jnp.log(1.0 - probs))
    raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}")


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the prediction (probability > 0.5, i.e. logit > 0) matches the label."""
    return ((logits > 0).astype(labels.dtype) == labels).astype(jnp.float32)

"""Binary cross-entropy ("logits" stable, "keras" clipped) and accuracy against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import losses

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set


@pytest.fixture(autouse=True, scope="module")
def _no_implicit_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@jax.jit
def _value_and_grad(logits, labels):
    """Per-example loss and its gradient with respect to the logit, for both modes."""
    out = {}
    for mode in losses.LOSS_MODES:
        fn = lambda z, y, mode=mode: losses.binary_cross_entropy(z, y, mode)  # noqa: E731
        out[mode] = (fn(logits, labels), jax.vmap(jax.grad(fn))(logits, labels))
    return out


def _numpy_bce(logits, labels):
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)


def _numpy_keras_bce(logits, labels, eps=1e-7):
    """Keras' binary_crossentropy on sigmoid outputs: clip p to [eps, 1 - eps], then the log loss (float64)."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    p = np.clip(1 / (1 + np.exp(-z)), eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


LOGITS = np.array([-20.0, -5.0, -1.0, -1e-3, 0.0, 0.3, 2.0, 8.0, 15.0, 20.0] * 2, np.float32)
LABELS = np.repeat(np.array([0.0, 1.0], np.float32), 10)


def test_logits_mode_matches_float64_numpy():
    loss, grad = (np.asarray(a) for a in _value_and_grad(LOGITS, LABELS)["logits"])
    np.testing.assert_allclose(loss, _numpy_bce(LOGITS, LABELS), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad, 1 / (1 + np.exp(-LOGITS.astype(np.float64))) - LABELS, rtol=1e-6, atol=1e-9)


def test_logits_mode_is_stable_at_large_logits():
    z = np.array([-100.0, -100.0, 100.0, 100.0], np.float32)
    y = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    loss, grad = (np.asarray(a) for a in _value_and_grad(z, y)["logits"])
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, [0.0, 100.0, 100.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(grad, [0.0, -1.0, 1.0, 0.0], atol=1e-6)


def test_keras_mode_matches_the_clipped_formula():
    loss = np.asarray(_value_and_grad(LOGITS, LABELS)["keras"][0])
    ref = _numpy_keras_bce(LOGITS, LABELS)
    # The float32 sigmoid rounds p near 1 to a multiple of 2^-24, so a wrong confident
    # prediction's log(1 - p) is only good to ~1e-7 / (1 - p) relative: 2.5e-5 at |logit| 8
    # and worse beyond (at logit 15, 1 - p is 3.6e-7 against 3.1e-7). Tight where that is small:
    moderate = np.abs(LOGITS) <= 8
    np.testing.assert_allclose(loss[moderate], ref[moderate], rtol=1e-4, atol=1e-7)
    assert np.all(loss <= -np.log(np.float32(1e-7)) + 1e-5)
    # both clip bounds are reached at |logit| = 20 (float32 sigmoid(20) is exactly 1); in
    # float32 1 - 1e-7 is 1 - 2^-23, hence 1.19e-7 rather than 1e-7 for a right prediction
    at_20 = np.abs(LOGITS) == 20  # (z, y) = (-20, 0), (20, 0), (-20, 1), (20, 1)
    np.testing.assert_allclose(loss[at_20], [1.1920929e-7, 15.942385, 16.118096, 1.1920929e-7], rtol=1e-5)


def test_keras_mode_is_capped_with_zero_gradient_when_saturated():
    z = np.array([-50.0, 50.0, -100.0, 100.0], np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.0], np.float32)  # confidently wrong
    loss, grad = (np.asarray(a) for a in _value_and_grad(z, y)["keras"])
    # The cap is -log(eps) = 16.118 for a wrong 0 prediction. For a wrong 1 prediction it is
    # -log(1 - float32(1 - 1e-7)) = -log(1.19e-7) = 15.942: in float32, 1 - 1e-7 rounds to
    # 1 - 2^-23, so the clip is not symmetric (Keras computes the same in float32).
    np.testing.assert_allclose(loss, [16.118096, 15.942385, 16.118096, 15.942385], rtol=1e-6)
    np.testing.assert_array_equal(grad, np.zeros(4, np.float32))
    # the stable loss keeps growing and keeps its gradient
    logits_loss, logits_grad = (np.asarray(a) for a in _value_and_grad(z, y)["logits"])
    np.testing.assert_allclose(logits_loss, [50.0, 50.0, 100.0, 100.0], rtol=1e-6)
    np.testing.assert_allclose(np.abs(logits_grad), 1.0, rtol=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="loss mode"):
        losses.binary_cross_entropy(jnp.zeros(2), jnp.zeros(2), "bce")


def test_correct_thresholds_at_logit_zero():
    z = np.array([-3.0, -1e-6, 0.0, 1e-6, 3.0, -3.0, 0.0, 1e-6, 3.0], np.float32)
    y = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], np.float32)
    # predicted 1 iff logit > 0 (probability > 0.5, as Keras' binary_accuracy with threshold 0.5)
    expected = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1], np.float32)
    np.testing.assert_array_equal(jax.jit(losses.correct)(z, y), expected)

"""RMSprop (Keras 2.3 and Keras 3 eps placement), decoupled weight decay and proximal L1 against NumPy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import optim, penalties
from jaxreg.train import Hyperparameters

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set

RHO, EPS = 0.9, 1e-7


@pytest.fixture(autouse=True, scope="module")
def _no_implicit_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@jax.jit
def _run(params, grads_seq, learning_rate, keras3):
    """Apply keras_rmsprop to a sequence of gradients (leading axis: steps); returns (weights, updates) per step."""

    def trajectory(mode):
        opt = optim.keras_rmsprop(learning_rate, mode)

        def body(carry, g):
            p, s = carry
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), (p, u)

        return jax.lax.scan(body, (params, opt.init(params)), grads_seq)[1]

    return jax.lax.cond(keras3, lambda: trajectory("keras3"), lambda: trajectory("keras2"))


def _numpy_rmsprop(w0, grads_seq, lr, mode):
    """The Keras update, restated in float64: a = rho a + (1 - rho) g^2 from a = 0, then
    keras2 (Keras 2.3): w -= lr g / (sqrt(a) + eps);  keras3 (Keras 3): w -= lr g / sqrt(a + eps).
    Returns (weights, steps) per step."""
    w, a, weights, steps = np.array(w0, np.float64), np.zeros_like(w0, np.float64), [], []
    for g in np.asarray(grads_seq, np.float64):
        a = RHO * a + (1 - RHO) * g * g
        step = lr * g / ((np.sqrt(a) + EPS) if mode == "keras2" else np.sqrt(a + EPS))
        w = w - step
        weights.append(w)
        steps.append(step)
    return np.stack(weights), np.stack(steps)


# Coordinates from large to tiny gradients: where g^2 is far below eps (1e-6, 1e-9) the eps
# placement decides the step size; an exactly zero gradient must not move the weight.
G0 = np.array([1.0, -0.5, 1e-3, 1e-6, -1e-9, 0.0])
STEP_FACTORS = np.array([1.0, 0.5, -2.0, 1.5, 1.0, -0.3])
GRADS = (STEP_FACTORS[:, None, None] * np.stack([G0, 3 * G0])[None]).astype(np.float32)  # [steps, 2, 6]
W0 = np.linspace(-1.0, 1.0, 12).reshape(2, 6).astype(np.float32)


@pytest.mark.parametrize("mode", optim.RMSPROP_MODES)
def test_keras_rmsprop_matches_numpy_restatement(mode):
    lr = 1e-3
    weights, updates = (np.asarray(a) for a in _run(W0, GRADS, jnp.float32(lr), mode == "keras3"))
    ref_weights, ref_steps = _numpy_rmsprop(W0, GRADS, lr, mode)
    # Each step against float64: float32 arithmetic gives about 1e-6 relative; 1e-5 leaves room.
    np.testing.assert_allclose(updates, -ref_steps, rtol=1e-5, atol=0)
    # The weights (of order 1) carry float32 rounding of w + u: a few ulps of 1.
    np.testing.assert_allclose(weights, ref_weights, rtol=0, atol=5e-7)
    assert np.all(weights[:, :, -1] == W0[:, -1])  # zero gradient: not moved at all


def test_eps_placement_matters_only_for_tiny_gradients():
    lr = 1e-3
    step2 = -np.asarray(_run(W0, GRADS, jnp.float32(lr), False)[1][0])
    step3 = -np.asarray(_run(W0, GRADS, jnp.float32(lr), True)[1][0])
    # First step, a = 0.1 g^2: keras2 moves lr * g / (0.316 |g| + 1e-7), keras3 lr * g / sqrt(0.1 g^2 + 1e-7).
    big, tiny = slice(0, 2), slice(3, 5)  # |g| >= 0.5 and |g| <= 3e-6
    np.testing.assert_allclose(step2[:, big], step3[:, big], rtol=1e-5)
    ratio = step2[:, tiny] / step3[:, tiny]
    assert np.all(ratio > 100), ratio  # g = 1e-6: 2.4e-3 vs 3.2e-6 (x760); g = 1e-9: 1e-5 vs 3.2e-9
    np.testing.assert_allclose(step2[0, 3], lr * 1e-6 / (np.sqrt(0.1) * 1e-6 + EPS), rtol=1e-5)
    np.testing.assert_allclose(step3[0, 3], lr * 1e-6 / np.sqrt(0.1 * 1e-12 + EPS), rtol=1e-5)


def _model_tree():
    rng = np.random.default_rng(0)
    f = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)  # noqa: E731
    return {
        "params": {
            "hidden_0": {"kernel": f(5, 3), "bias": f(3)},
            "hidden_1": {"kernel": f(3, 3), "bias": f(3)},
            "output": {"kernel": f(3, 1), "bias": f(1)},
        }
    }


def _opt_steps(params, grads, hp, mode, n_steps, **flags):
    opt = optim.make_optimizer(hp, penalties.hidden_kernel_mask(params), mode, **flags)

    @jax.jit
    def steps(params):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, u), s), p

        (p, _), history = jax.lax.scan(body, (params, opt.init(params)), None, length=n_steps)
        return p, history

    return steps(params)


@pytest.mark.parametrize("mode", optim.RMSPROP_MODES)
def test_decoupled_weight_decay_shrinks_kernels_only(mode):
    lr, wd, n = 0.01, 0.1, 3
    params = _model_tree()
    zero = jax.tree.map(np.zeros_like, params)
    hp = Hyperparameters.create(learning_rate=lr, weight_decay=wd)
    final, history = _opt_steps(params, zero, hp, mode, n, l1_proximal=False)
    p0, p1, pn = params["params"], jax.tree.map(lambda h: h[1], history)["params"], final["params"]
    for layer in ("hidden_0", "hidden_1"):
        k = p0[layer]["kernel"]
        # each step: w <- w - lr * wd * w (the RMSprop part of a zero gradient is exactly 0)
        np.testing.assert_allclose(p1[layer]["kernel"], k - lr * wd * k, rtol=1e-6)
        np.testing.assert_allclose(pn[layer]["kernel"], k * (1 - lr * wd) ** n, rtol=1e-6)
        assert np.all(np.abs(pn[layer]["kernel"]) < np.abs(k))
        chex.assert_trees_all_equal(pn[layer]["bias"], p0[layer]["bias"])
    chex.assert_trees_all_equal(pn["output"], p0["output"])


def test_decay_sits_before_the_learning_rate_sign_flip():
    lr, wd = 0.01, 0.1
    params = {"hidden_0": {"kernel": np.array([[0.5, -2.0]], np.float32)}}
    zero = jax.tree.map(np.zeros_like, params)
    hp = Hyperparameters.create(learning_rate=lr, weight_decay=wd)
    shrunk, _ = _opt_steps(params, zero, hp, "keras2", 1, l1_proximal=False)
    np.testing.assert_allclose(shrunk["hidden_0"]["kernel"], [[0.5 * 0.999, -2.0 * 0.999]], rtol=1e-6)
    # The same stages in the wrong order (decay after the sign flip) make the weights grow:
    wrong = optax.chain(optim.scale_by_keras_rms(), optax.scale_by_learning_rate(lr), optax.add_decayed_weights(wd))
    u, _ = wrong.update(zero, wrong.init(params), params)
    grown = optax.apply_updates(params, u)
    assert np.all(np.abs(grown["hidden_0"]["kernel"]) > np.abs(params["hidden_0"]["kernel"]))


def test_proximal_l1_is_the_soft_threshold_with_exact_zeros():
    lr, c = 0.01, 5.0  # threshold lr * c = 0.05
    params = jax.tree.map(lambda w: w / 10, _model_tree())  # |w| < 0.1: steps of 0.032 put some within the threshold
    params["params"]["output"]["kernel"] = np.array([[0.01], [-0.02], [0.03]], np.float32)  # below the threshold
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda w: rng.normal(size=w.shape).astype(np.float32), params)
    grads["params"]["output"] = jax.tree.map(np.zeros_like, params["params"]["output"])
    hp = Hyperparameters.create(learning_rate=lr, l1_proximal=c)
    final, _ = _opt_steps(params, grads, hp, "keras2", 1, weight_decay=False)
    thr = lr * c
    n_zeros = 0
    for layer in ("hidden_0", "hidden_1"):
        w, g = (np.asarray(t["params"][layer]["kernel"], np.float64) for t in (params, grads))
        moved = w - lr * g / (np.sqrt(0.1 * g * g) + EPS)  # first RMSprop step, a = 0.1 g^2
        expected = np.sign(moved) * np.maximum(np.abs(moved) - thr, 0.0)
        got = np.asarray(final["params"][layer]["kernel"])
        np.testing.assert_array_equal(got == 0, expected == 0)  # exact zeros, exactly where expected
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        n_zeros += int((got == 0).sum())
    assert 0 < n_zeros < 24
    # biases and the output layer are not thresholded: the output kernel (zero gradient) keeps its small values
    chex.assert_trees_all_equal(final["params"]["output"], params["params"]["output"])
    for layer in ("hidden_0", "hidden_1"):
        w, g = params["params"][layer]["bias"], grads["params"][layer]["bias"]
        np.testing.assert_allclose(final["params"][layer]["bias"], w - lr * g / (np.sqrt(0.1 * g * g) + EPS), rtol=1e-5)

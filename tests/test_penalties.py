"""Keras-exact L1/L2 penalties: values, gradients, the hidden-kernel mask, traced coefficients."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxreg import penalties

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set


@pytest.fixture(autouse=True, scope="module")
def _no_implicit_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


def _params():
    """A model-shaped tree with known, nonzero values everywhere (biases and output included)."""
    f = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return {
        "params": {
            "hidden_0": {"kernel": f([[1.0, -2.0], [0.5, -0.25], [3.0, 0.125]]), "bias": f([3.0, -1.0])},
            "hidden_1": {"kernel": f([[-1.5, 2.5], [0.75, -4.0]]), "bias": f([0.5, 0.5])},
            "output": {"kernel": f([[7.0], [-8.0]]), "bias": f([9.0])},
        }
    }


def _hidden_kernels(params):
    p = params["params"]
    return [np.asarray(p["hidden_0"]["kernel"], np.float64), np.asarray(p["hidden_1"]["kernel"], np.float64)]


def test_default_mask_selects_only_hidden_kernels():
    mask = penalties.hidden_kernel_mask(_params())
    assert mask == {
        "params": {
            "hidden_0": {"kernel": True, "bias": False},
            "hidden_1": {"kernel": True, "bias": False},
            "output": {"kernel": False, "bias": False},
        }
    }
    with_output = penalties.hidden_kernel_mask(_params(), include_output=True)
    assert with_output["params"]["output"] == {"kernel": True, "bias": False}


def test_exact_values():
    params, mask = _params(), penalties.hidden_kernel_mask(_params())
    # Worked out by hand from _params (dyadic values, so exact in float32 whatever the order):
    l1_sum = 15.625  # 1+2+.5+.25+3+.125 + 1.5+2.5+.75+4
    l2_sum = 39.390625  # 1+4+.25+.0625+9+.015625 + 2.25+6.25+.5625+16
    values = jax.jit(
        lambda p: (
            penalties.l1_penalty(p, 0.01, mask),
            penalties.l2_penalty(p, 0.001, mask),
            penalties.weight_penalty(p, 0.01, 0.001, mask),
            penalties.weight_penalty(p, 0.0, 0.0, mask),
        )
    )(params)
    l1, l2, both, none = (float(v) for v in values)
    np.testing.assert_allclose(l1, 0.01 * l1_sum, rtol=1e-6)
    np.testing.assert_allclose(l2, 0.001 * l2_sum, rtol=1e-6)  # no factor 1/2, as keras.regularizers.l2
    np.testing.assert_allclose(both, 0.01 * l1_sum + 0.001 * l2_sum, rtol=1e-6)
    assert none == 0.0


def test_exact_gradients_and_untouched_biases_and_output():
    params, mask = _params(), penalties.hidden_kernel_mask(_params())
    l1, l2 = 0.01, 0.001
    grads = jax.jit(jax.grad(lambda p: penalties.weight_penalty(p, l1, l2, mask)))(params)["params"]
    for name, k in zip(("hidden_0", "hidden_1"), _hidden_kernels(params)):
        np.testing.assert_allclose(grads[name]["kernel"], l1 * np.sign(k) + 2 * l2 * k, rtol=1e-6)
    zeros = jax.tree.map(np.zeros_like, params["params"])
    for leaf in (("hidden_0", "bias"), ("hidden_1", "bias"), ("output", "kernel"), ("output", "bias")):
        chex.assert_trees_all_equal(grads[leaf[0]][leaf[1]], zeros[leaf[0]][leaf[1]])


def test_traced_coefficients_under_vmap():
    params, mask = _params(), penalties.hidden_kernel_mask(_params())
    l1s = np.array([0.0, 1e-4, 0.0, 1e-4], np.float32)
    l2s = np.array([0.0, 0.0, 1e-3, 1e-4], np.float32)
    value_and_grad = jax.jit(
        jax.vmap(jax.value_and_grad(lambda p, a, b: penalties.weight_penalty(p, a, b, mask)), in_axes=(None, 0, 0))
    )
    values, grads = value_and_grad(params, l1s, l2s)
    chex.assert_shape(values, (4,))
    ks = _hidden_kernels(params)
    for i, (a, b) in enumerate(zip(np.asarray(l1s, np.float64), np.asarray(l2s, np.float64))):
        expected = sum(a * np.abs(k).sum() + b * np.square(k).sum() for k in ks)
        np.testing.assert_allclose(values[i], expected, rtol=1e-6, atol=1e-12)
        for name, k in zip(("hidden_0", "hidden_1"), ks):
            expected_grad = a * np.sign(k) + 2 * b * k
            np.testing.assert_allclose(grads["params"][name]["kernel"][i], expected_grad, rtol=1e-6, atol=1e-12)
        assert not np.any(grads["params"]["output"]["kernel"][i])

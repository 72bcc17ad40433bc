"""Inverted dropout: expected value, drop fraction, eval identity, traced rates, the prefix property.

Checks run in NumPy on the outputs of jitted calls: eager jnp ops compile one by one.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.dropout import dropout

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set


@pytest.fixture(autouse=True, scope="module")
def _no_implicit_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


drop = jax.jit(dropout)
vdrop = jax.jit(jax.vmap(dropout, in_axes=(None, 0, 0)))  # one rate and key per variant


def _positive(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype(np.float32)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_mean_over_many_keys_equals_input(rate):
    x = _positive((8, 16))
    n = 10_000
    keys = jax.random.split(jax.random.key(1), n)
    mean = np.asarray(jax.jit(jax.vmap(dropout, in_axes=(None, None, 0)))(x, rate, keys)).mean(axis=0, dtype=np.float64)
    # One draw is x / (1 - rate) with probability 1 - rate, else 0: its mean is x and its
    # variance x^2 * rate / (1 - rate). The mean of n draws has standard deviation
    # |x| * sqrt(rate / ((1 - rate) * n)) (0.005 |x| to 0.01 |x| here): allow 5 of them per entry.
    sigma = np.abs(x) * np.sqrt(rate / ((1 - rate) * n))
    assert np.all(np.abs(mean - x) <= 5 * sigma)
    # The average of mean / x over all 128 entries is sqrt(128) times tighter.
    assert abs(np.mean(mean / x) - 1.0) <= 5 * np.sqrt(rate / ((1 - rate) * n * x.size))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_fraction_zeroed_matches_rate_and_survivors_are_scaled(rate):
    x = _positive((128, 64))
    out = np.asarray(drop(x, rate, jax.random.key(2)))
    dropped = out == 0
    # The number dropped is Binomial(n, rate): the fraction has standard deviation
    # sqrt(rate (1 - rate) / n), 0.0033 to 0.0055 here; allow 5 of them.
    assert abs(dropped.mean() - rate) <= 5 * np.sqrt(rate * (1 - rate) / x.size)
    np.testing.assert_allclose(out[~dropped], (x / np.float32(1 - rate))[~dropped], rtol=1e-6)


def test_key_none_is_identity():
    x = _positive((128, 64))
    assert dropout(x, 0.5, None) is x
    chex.assert_trees_all_equal(drop(x, 0.9, None), x)


def test_rate_zero_is_exact_identity():
    x = np.random.default_rng(3).normal(size=(128, 64)).astype(np.float32)
    chex.assert_trees_all_equal(drop(x, 0.0, jax.random.key(4)), x)  # traced rate 0
    chex.assert_trees_all_equal(dropout(jnp.asarray(x), 0.0, jax.random.key(4)), x)  # eager


def test_traced_per_variant_rate_under_vmap():
    rates = np.array([0.0, 0.25, 0.5], np.float32)
    keys = jax.random.split(jax.random.key(5), 3)
    x = _positive((128, 64))
    out = np.asarray(vdrop(x, rates, keys))
    chex.assert_shape(out, (3, 128, 64))
    chex.assert_trees_all_equal(out[0], x)
    for i, rate in enumerate(rates):
        frac = (out[i] == 0).mean()
        assert abs(frac - rate) <= 5 * np.sqrt(rate * (1 - rate) / x.size), (rate, frac)
        # each variant gets exactly what it would get alone
        chex.assert_trees_all_close(out[i], drop(x, rate, keys[i]), rtol=1e-6)


def test_prefix_property_first_units_share_the_mask():
    rates = np.array([0.25, 0.5, 0.75], np.float32)
    keys = jax.random.split(jax.random.key(6), 3)
    wide = _positive((128, 64))
    narrow = wide[:, :20]
    out_wide, out_narrow = np.asarray(vdrop(wide, rates, keys)), np.asarray(vdrop(narrow, rates, keys))
    chex.assert_trees_all_equal(out_wide[:, :, :20], out_narrow)
    assert (out_narrow == 0).any() and (out_narrow != 0).any()

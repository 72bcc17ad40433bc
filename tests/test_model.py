"""The MLP: Keras initialization, parameter names, sparse = dense first layer, exact padding, sizes."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import batches, losses, model
from jaxreg.data import densify, synthetic_dataset

pytestmark = pytest.mark.numerics  # rerun by .ci/run with XLA held to a second instruction set

NUM_WORDS = 200
BATCH = 16

_init = jax.jit(model.init_params, static_argnums=(1, 2, 3))


@pytest.fixture(autouse=True, scope="module")
def _no_implicit_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(scope="module")
def data():
    """40 reviews in batches of 16: two full batches and one of 8 (padded with weight-0 rows)."""
    ds = synthetic_dataset(n_train=40, n_validation=8, num_words=NUM_WORDS, seed=0)
    order = batches.epoch_order(0, 0, len(ds.train))
    cap = batches.capacity(ds.train.x.lengths, [order], BATCH)
    return ds, order, batches.make_batches(ds.train.x, ds.train.y, order, BATCH, cap)


def _batch(stacked, i):
    return jax.tree.map(lambda a: a[i], stacked)


def test_glorot_uniform_kernels_zero_biases_and_names():
    params, unit_mask = _init(jax.random.key(0), (16, 16), 10_000, None)
    assert unit_mask is None
    p = jax.tree.map(np.asarray, params["params"])
    assert set(p) == {"hidden_0", "hidden_1", "output"}
    kernels = [p[name]["kernel"] for name in ("hidden_0", "hidden_1", "output")]
    chex.assert_shape(kernels, [(10_000, 16), (16, 16), (16, 1)])
    for layer in p.values():
        assert set(layer) == {"kernel", "bias"}
        chex.assert_trees_all_equal(layer["bias"], np.zeros_like(layer["bias"]))
        fan_in, fan_out = layer["kernel"].shape
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(layer["kernel"]).max() <= limit
    k = p["hidden_0"]["kernel"].astype(np.float64)
    limit = np.sqrt(6 / (10_000 + 16))
    assert np.abs(k).max() > 0.999 * limit  # uniform up to the limit, not a narrower (e.g. lecun) range
    # U(-L, L) has variance L^2 / 3 = 2 / (fan_in + fan_out). With n = 160,000 samples the sample
    # variance has relative standard deviation sqrt(4/5 / n) = 0.22% (Var(w^2) = 4 L^4 / 45): allow 5 of them.
    expected_var = 2 / (10_000 + 16)
    assert abs(k.var() / expected_var - 1) < 5 * np.sqrt(0.8 / k.size)
    assert abs(k.mean()) < 5 * np.sqrt(expected_var / k.size)


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_grads(widths, params, batch):
    """Logits and loss gradients (mean over the real rows) for the three ways of feeding the first layer."""
    dense_x = batch.x.dense()
    feeds = {
        "sparse": (model.MLP(widths, "sparse"), batch.x),
        "dense_product": (model.MLP(widths, "dense"), batch.x),
        "dense_input": (model.MLP(widths), dense_x),
    }
    out = {}
    for name, (mlp, x) in feeds.items():

        def loss(p, mlp=mlp, x=x):
            per_example = losses.binary_cross_entropy(mlp.apply(p, x), batch.y, "keras")
            return jnp.sum(per_example * batch.weight) / jnp.sum(batch.weight)

        out[name] = (mlp.apply(params, x), jax.grad(loss)(params))
    return out, dense_x


def test_sparse_and_dense_inputs_give_equal_logits_and_gradients(data):
    ds, order, stacked = data
    params, _ = _init(jax.random.key(1), (8, 4), NUM_WORDS, None)
    reference = densify(ds.train.x.take(order))
    for i in range(stacked.y.shape[0]):
        out, dense_x = _logits_and_grads((8, 4), params, _batch(stacked, i))
        # the batch holds exactly the rows of `order`, padding rows all zero
        expected_x = np.zeros((BATCH, NUM_WORDS), np.float32)
        rows = reference[i * BATCH : (i + 1) * BATCH]
        expected_x[: len(rows)] = rows
        chex.assert_trees_all_equal(np.asarray(dense_x), expected_x)
        ref_logits, ref_grads = out["dense_input"]
        for name in ("sparse", "dense_product"):
            logits, grads = out[name]
            chex.assert_trees_all_close(logits, ref_logits, rtol=1e-5, atol=1e-6)  # summation order only
            chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    assert stacked.y.shape[0] == 3 and float(np.asarray(stacked.weight[-1]).sum()) == 8


def test_padded_init_is_the_true_init_plus_zeros():
    key = jax.random.key(2)
    true, none = _init(key, (3, 5), NUM_WORDS, None)
    padded, mask = _init(key, (3, 5), NUM_WORDS, (8, 8))
    assert none is None
    shapes = {"hidden_0": [(NUM_WORDS, 8), (8,)], "hidden_1": [(8, 8), (8,)], "output": [(8, 1), (1,)]}
    for name, (kernel_shape, bias_shape) in shapes.items():
        layer = padded["params"][name]
        chex.assert_shape([layer["kernel"], layer["bias"]], [kernel_shape, bias_shape])

    def true_part(padded_leaf, true_leaf):
        return padded_leaf[tuple(slice(0, s) for s in true_leaf.shape)]

    # The same draws at the true widths; two compiled programs (with and without the padding), so to
    # float32 round-off of the glorot scaling (rtol 1e-7, about one ulp; measured: bit for bit)
    chex.assert_trees_all_close(jax.tree.map(true_part, padded, true), true, rtol=1e-7, atol=0)
    for p_leaf, m_leaf, t_leaf in zip(*(jax.tree.leaves(t) for t in (padded, mask, true))):
        p_leaf, m_leaf = np.asarray(p_leaf), np.asarray(m_leaf)
        expected_mask = np.zeros(p_leaf.shape, np.float32)
        expected_mask[tuple(slice(0, s) for s in t_leaf.shape)] = 1
        chex.assert_trees_all_equal(m_leaf, expected_mask)
        assert np.all(p_leaf[m_leaf == 0] == 0)
    # the true hidden_0 kernel keeps the true glorot limit sqrt(6 / (num_words + 3))
    assert np.abs(np.asarray(true["params"]["hidden_0"]["kernel"])).max() <= np.sqrt(6 / (NUM_WORDS + 3))


def test_padding_to_a_narrower_width_is_refused():
    with pytest.raises(ValueError, match="cannot pad"):
        _init(jax.random.key(0), (8, 8), NUM_WORDS, (4, 8))  # refused while tracing: nothing is computed


@pytest.mark.parametrize(
    "widths, expected",
    [
        ((16, 16), 10_000 * 16 + 16 + 16 * 16 + 16 + 16 + 1),  # 160,305: the study's original, l1, l2, dropout
        ((6, 6), 10_000 * 6 + 6 + 6 * 6 + 6 + 6 + 1),  # 60,055: smaller
        ((1024, 1024), 10_000 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 + 1),  # 11,291,649: bigger
    ],
)
def test_count_params(widths, expected):
    assert model.count_params(widths, 10_000) == expected
    shapes = jax.eval_shape(lambda: model.init_params(jax.random.key(0), widths, 10_000)[0])
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == expected

"""Tests of jaxreg.batches for dense inputs and typed labels: dense batches are the rows in order,
padding rows are zero with weight 0, labels keep the split's dtype; run_capacity and eval_capacity
are the sparse capacities and None for dense x."""

from __future__ import annotations

import numpy as np
import pytest

from jaxreg import batches
from jaxreg.dataset import densify, from_arrays


@pytest.fixture
def dense_multiclass():
    rng = np.random.default_rng(0)
    return from_arrays(rng.normal(size=(70, 5)), rng.integers(0, 4, 70), holdout=20, seed=1)


@pytest.mark.parametrize("batch_size", [16, 50, 64])
def test_dense_batches_are_the_rows_in_order(dense_multiclass, batch_size):
    split = dense_multiclass.train
    order = batches.epoch_order(3, 0, len(split))
    out = batches.make_batches(split.x, split.y, order, batch_size, None)
    n, n_batches = len(order), -(-len(order) // batch_size)
    assert out.x.shape == (n_batches, batch_size, 5) and out.x.dtype == np.float32
    assert out.y.shape == out.weight.shape == (n_batches, batch_size)
    flat_x, flat_y, flat_w = out.x.reshape(-1, 5), out.y.reshape(-1), out.weight.reshape(-1)
    np.testing.assert_array_equal(flat_x[:n], split.x[order])
    np.testing.assert_array_equal(flat_y[:n], split.y[order])
    assert (flat_w[:n] == 1).all()
    assert (flat_x[n:] == 0).all() and (flat_y[n:] == 0).all() and (flat_w[n:] == 0).all()
    assert flat_w.sum() == n


def test_labels_keep_the_split_dtype(dense_multiclass):
    split = dense_multiclass.validation
    assert split.y.dtype == np.int32
    out = batches.make_batches(split.x, split.y, np.arange(len(split)), 16, None)
    assert out.y.dtype == np.int32
    rng = np.random.default_rng(1)
    rows = [list(rng.choice(30, size=rng.integers(0, 6), replace=False)) for _ in range(40)]
    sparse = from_arrays(rows, rng.integers(0, 5, 40), validation=(rows, rng.integers(0, 5, 40)), num_words=30)
    order = batches.epoch_order(0, 0, 40)
    cap = batches.eval_capacity(sparse.train.x, 16)
    out = batches.make_batches(sparse.train.x, sparse.train.y, order, 16, cap)
    assert out.y.dtype == np.int32 and out.y.shape == (3, 16)
    np.testing.assert_array_equal(out.y.reshape(-1)[:40], sparse.train.y[order])
    assert (out.y.reshape(-1)[40:] == 0).all()
    np.testing.assert_array_equal(np.asarray(out.x.dense()).reshape(-1, 30)[:40], densify(sparse.train.x)[order])
    regression = from_arrays(np.ones((5, 2)), [0.5, 1.5, 2.5, 3.5, 4.5], holdout=1)
    out = batches.make_batches(regression.train.x, regression.train.y, np.arange(4), 3, None)
    assert out.y.dtype == np.float32 and out.y.reshape(-1).tolist() == regression.train.y.tolist() + [0, 0]


def test_capacities_are_the_sparse_ones_and_none_for_dense(synthetic, dense_multiclass):
    x = synthetic.train.x
    assert batches.run_capacity(x, (0, 1), 3, 64) == batches.train_capacity(x.lengths, (0, 1), 3, 64)
    v = synthetic.validation.x
    assert batches.eval_capacity(v, 32) == batches.capacity(v.lengths, [np.arange(len(v))], 32)
    assert batches.run_capacity(dense_multiclass.train.x, (0,), 3, 16) is None
    assert batches.eval_capacity(dense_multiclass.validation.x, 16) is None

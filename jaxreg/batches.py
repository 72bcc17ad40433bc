"""Host-side epoch order and fixed-shape sparse batches for the device.

A batch's multi-hot rows travel as flat (row, column) pairs padded to a fixed capacity, so
one compiled step serves every batch of a run however many words its reviews hold; dense
inputs travel as [batch_size, d] float32 blocks and need no capacity. The
last partial batch (Keras keeps it: 25,000 = 48 x 512 + 424) is padded with rows of weight
0, which makes its mean loss and gradient exactly those of the 424 real rows.

The shuffling order comes from NumPy's PCG64 seeded with (seed, epoch): it depends on the
variant's seed alone, so variants that share a seed see the same batches (a paired
comparison), and the host knows every batch's size before compiling.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

CAPACITY_MULTIPLE = 1024


@struct.dataclass
class SparseBatch:
    """Multi-hot rows as flat (row, column) pairs; padding pairs point at the dummy row `num_rows`."""

    rows: jax.Array
    cols: jax.Array
    num_rows: int = struct.field(pytree_node=False)
    num_words: int = struct.field(pytree_node=False)

    def dense(self, dtype=jnp.float32) -> jax.Array:
        """The [num_rows, num_words] multi-hot matrix (padding pairs land in the dropped dummy row)."""
        out = jnp.zeros(self.rows.shape[:-1] + (self.num_rows + 1, self.num_words), dtype)
        if self.rows.ndim == 1:
            return out.at[self.rows, self.cols].set(1)[:-1]
        return jax.vmap(lambda r, c: SparseBatch(r, c, self.num_rows, self.num_words).dense(dtype))(
            self.rows, self.cols
        )


@struct.dataclass
class Batch:
    """Inputs (sparse multi-hot pairs or dense rows), targets (the split's dtype) and per-row weights (0 for padding rows)."""

    x: SparseBatch | jax.Array
    y: jax.Array
    weight: jax.Array


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of n examples for (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_nnz(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
    """Number of active (row, column) pairs in each batch of `order`."""
    per_row = np.asarray(lengths, np.int64)[order]
    if not len(per_row):
        return np.zeros(0, np.int64)
    return np.add.reduceat(per_row, np.arange(0, len(per_row), batch_size))  # no batch_size-long padding


def capacity(lengths: np.ndarray, orders, batch_size: int, multiple: int = CAPACITY_MULTIPLE) -> int:
    """Smallest multiple of `multiple` that holds the largest batch of any of `orders`.

    `orders` may be any iterable, a generator included: one order is held at a time.
    """
    largest = max(int(batch_nnz(lengths, o, batch_size).max()) for o in orders)
    return max(multiple, math.ceil(largest / multiple) * multiple)


def capacity_bound(lengths: np.ndarray, batch_size: int, multiple: int = CAPACITY_MULTIPLE) -> int:
    """A capacity that holds any batch of any order: the `batch_size` longest rows together, rounded up."""
    longest = np.sort(np.asarray(lengths, np.int64))[-batch_size:]
    return max(multiple, math.ceil(int(longest.sum()) / multiple) * multiple)


# Above this many (seed, epoch) orders a run's capacity is `capacity_bound` instead of the exact
# maximum over every order: computing the exact one costs ~1 ms per order of 25,000 reviews
# (20 epochs x 16 seeds = 320 orders, 0.3 s), so 10^9 epochs would spend weeks before epoch 1.
# The capacity only sets how much inert padding a batch carries; results are bit-identical.
MAX_EXACT_CAPACITY_ORDERS = 4096


def train_capacity(lengths: np.ndarray, seeds, epochs: int, batch_size: int, multiple: int = CAPACITY_MULTIPLE) -> int:
    """The batch capacity of a run over `epochs` epochs of every seed, in constant memory.

    Exact (the largest batch of any (seed, epoch) order, streamed one order at a time) for up
    to MAX_EXACT_CAPACITY_ORDERS orders, else `capacity_bound`; both hold every batch.
    """
    seeds = tuple(seeds)
    if len(seeds) * epochs > MAX_EXACT_CAPACITY_ORDERS:
        return capacity_bound(lengths, batch_size, multiple)
    orders = (epoch_order(s, e, len(lengths)) for s in seeds for e in range(epochs))
    return capacity(lengths, orders, batch_size, multiple)


def views_capacity(lengths_per_view, epochs: int, batch_size: int, multiple: int = CAPACITY_MULTIPLE) -> int:
    """`train_capacity` over several (seed, lengths) training sets: the largest batch of any of their orders.

    lengths_per_view: (seed, lengths of that view's rows) pairs, e.g. one per data view and seed.
    """
    lengths_per_view = list(lengths_per_view)
    if len(lengths_per_view) * epochs > MAX_EXACT_CAPACITY_ORDERS:
        return max(capacity_bound(lengths, batch_size, multiple) for _, lengths in lengths_per_view)
    return max(train_capacity(lengths, [seed], epochs, batch_size, multiple) for seed, lengths in lengths_per_view)


def pad_batches(batch: Batch, n_batches: int) -> Batch:
    """`batch` (host arrays, leading batch axis) with batches of no real rows appended up to n_batches.

    A padding batch has weight 0 everywhere, labels 0 and, for sparse inputs, only pairs that
    point at the dummy row; `train.train_epoch` skips such steps when it runs data views.
    """
    extra = n_batches - batch.y.shape[0]
    if extra < 0:
        raise ValueError(f"pad_batches: the batch stack already has {batch.y.shape[0]} batches, more than {n_batches}")

    def grown(a, fill):
        return np.concatenate([a, np.full((extra,) + a.shape[1:], fill, a.dtype)])

    x = batch.x
    if isinstance(x, SparseBatch):
        x = SparseBatch(grown(x.rows, x.num_rows), grown(x.cols, 0), x.num_rows, x.num_words)
    else:
        x = grown(x, 0)
    return Batch(x, grown(batch.y, 0), grown(batch.weight, 0))


def run_capacity(x, seeds, epochs: int, batch_size: int, multiple: int = CAPACITY_MULTIPLE) -> int | None:
    """The training batch capacity of a run (`train_capacity`) for multi-hot x; None for dense x (no pairs)."""
    if isinstance(x, np.ndarray):
        return None
    return train_capacity(x.lengths, seeds, epochs, batch_size, multiple)


def eval_capacity(x, batch_size: int, multiple: int = CAPACITY_MULTIPLE) -> int | None:
    """The capacity of x's batches in row order (evaluation) for multi-hot x; None for dense x."""
    if isinstance(x, np.ndarray):
        return None
    return capacity(x.lengths, [np.arange(len(x))], batch_size, multiple)


def make_batches(x, y: np.ndarray, order: np.ndarray, batch_size: int, cap: int | None) -> Batch:
    """Stack the batches of `order` into a Batch of NumPy arrays with a leading batch axis.

    `x` is a `dataset.SparseMultiHot` or a dense float32 [n, d] array. Sparse: the (row,
    column) pairs of all examples in `order` form one stream; batch b is a contiguous piece
    of it, copied into row b of the output (`cap` pairs per batch). Dense: x is float32
    [n_batches, batch_size, d], padding rows zero (`cap` is not used). Labels keep y's dtype
    (int32 class ids stay int32), padding labels 0.
    """
    n = len(order)
    n_batches = math.ceil(n / batch_size)
    shape = (n_batches, batch_size)
    labels = np.zeros(n_batches * batch_size, y.dtype)
    labels[:n] = y[order]
    weight = np.zeros(n_batches * batch_size, np.float32)
    weight[:n] = 1.0
    if isinstance(x, np.ndarray):
        rows = np.zeros((n_batches * batch_size, x.shape[1]), np.float32)
        rows[:n] = x[order]
        return Batch(rows.reshape(*shape, x.shape[1]), labels.reshape(shape), weight.reshape(shape))
    lengths = x.lengths[order]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    src = np.repeat(x.indptr[order] - starts, lengths) + np.arange(ends[-1] if n else 0)
    cols_stream = x.indices[src]
    rows_stream = np.repeat(np.arange(n) % batch_size, lengths)
    bounds = np.concatenate([[0], ends[batch_size - 1 :: batch_size], [ends[-1] if n else 0]])[: n_batches + 1]
    index_dtype = np.int16 if max(x.num_words, batch_size + 1) <= np.iinfo(np.int16).max else np.int32
    rows = np.full((n_batches, cap), batch_size, index_dtype)
    cols = np.zeros((n_batches, cap), index_dtype)
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi - lo > cap:
            raise ValueError(f"a batch holds {hi - lo} active words, more than the capacity {cap}")
        rows[b, : hi - lo] = rows_stream[lo:hi]
        cols[b, : hi - lo] = cols_stream[lo:hi]
    return Batch(SparseBatch(rows, cols, batch_size, x.num_words), labels.reshape(shape), weight.reshape(shape))

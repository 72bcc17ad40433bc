"""The study's model: a Keras-initialized Flax MLP whose first layer consumes sparse multi-hot batches.

Kernels are glorot-uniform and biases zero, as Keras' Dense (Flax's default is
lecun_normal). The first layer is an "embedding bag": the sum of the kernel rows at a
review's active words, which equals the dense product multi_hot @ kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxreg.batches import SparseBatch
from jaxreg.dropout import dropout
from jaxreg.embedding_bag import embedding_bag

PRODUCTS = ("sparse", "dense")
glorot_uniform = nn.initializers.glorot_uniform()


def multi_hot_matmul(x: SparseBatch | jax.Array, kernel: jax.Array, product: str = "sparse") -> jax.Array:
    """multi_hot(x) @ kernel, as an embedding bag ("sparse") or by densifying the batch ("dense").

    Dense arrays are multiplied directly. The sparse path moves a few thousand kernel rows
    per batch (see `embedding_bag`); the dense path does a full matmul.
    """
    if not isinstance(x, SparseBatch):
        return x @ kernel
    if product == "dense":
        return x.dense(kernel.dtype) @ kernel
    if product != "sparse":
        raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
    return embedding_bag(kernel, x.rows, x.cols, x.num_rows)


class MultiHotDense(nn.Module):
    """Dense layer over multi-hot input, sparse or dense."""

    features: int
    product: str = "sparse"

    @nn.compact
    def __call__(self, x, product=None):
        """x @ kernel + bias; a given `product` (x @ kernel, computed by the caller) is used as is."""
        num_words = x.num_words if isinstance(x, SparseBatch) else x.shape[-1]
        kernel = self.param("kernel", glorot_uniform, (num_words, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        out = multi_hot_matmul(x, kernel, self.product) if product is None else product
        return out + jnp.reshape(bias, (1,) * (out.ndim - 1) + (-1,))


class MLP(nn.Module):
    """ReLU hidden layers of the given widths, inverted dropout after each, then `outputs` units.

    With one output (binary classification, regression) it returns [...] rather than [..., 1].

    `first_product` (optional): multi_hot(x) @ first kernel, computed by the caller, who then
    owns that kernel's gradient (train_step's fused_update takes it from this product's).
    """

    widths: Sequence[int]
    product: str = "sparse"
    outputs: int = 1

    @nn.compact
    def __call__(self, x, dropout_rate=0.0, dropout_key=None, first_product=None):
        h = x
        for i, width in enumerate(self.widths):
            if i == 0:
                h = MultiHotDense(width, self.product, name="hidden_0")(h, first_product)
            else:
                h = nn.Dense(width, kernel_init=glorot_uniform, name=f"hidden_{i}")(h)
            h = nn.relu(h)
            h = dropout(h, dropout_rate, None if dropout_key is None else jax.random.fold_in(dropout_key, i))
        out = nn.Dense(self.outputs, kernel_init=glorot_uniform, name="output")(h)
        return out[..., 0] if self.outputs == 1 else out


def init_params(
    key: jax.Array, widths: Sequence[int], num_words: int, padded_widths: Sequence[int] | None = None, outputs: int = 1
):
    """Parameters initialized at the true `widths`, zero-padded to `padded_widths`.

    Returns (params, unit_mask): unit_mask is a pytree of 0/1 marking the real entries,
    or None without padding. The glorot limit depends on the true fan-in and fan-out, so
    a padded model starts exactly where it would start alone.
    """
    widths = tuple(int(w) for w in widths)
    params = MLP(widths, outputs=outputs).init({"params": key}, jnp.zeros((1, num_words), jnp.float32))
    if padded_widths is None or tuple(padded_widths) == widths:
        return params, None
    if len(padded_widths) != len(widths) or any(p < w for p, w in zip(padded_widths, widths)):
        raise ValueError(f"cannot pad widths {widths} to {tuple(padded_widths)}")
    target = jax.eval_shape(
        lambda: MLP(tuple(padded_widths), outputs=outputs).init({"params": key}, jnp.zeros((1, num_words)))
    )

    def pad(leaf, shape):
        return jnp.pad(leaf, [(0, t - s) for s, t in zip(leaf.shape, shape.shape)])

    padded = jax.tree.map(pad, params, target)
    mask = jax.tree.map(lambda leaf, shape: pad(jnp.ones_like(leaf), shape), params, target)
    return padded, mask


def unpadded(params, widths: Sequence[int]):
    """The parameters of a zero-padded model cut back to its true `widths` (the inverse of init_params' padding).

    Every leaf is sliced to the shape `MLP(widths, outputs=...)` gives it, so its `apply` takes
    the result; the cut-off entries are the padded units, which training keeps at exactly
    zero. Works on NumPy or JAX leaves; the number of words and of outputs are read from the
    first and the output kernel.
    """
    num_words = params["params"]["hidden_0"]["kernel"].shape[0]
    outputs = params["params"]["output"]["kernel"].shape[-1]
    target = jax.eval_shape(
        lambda: MLP(tuple(widths), outputs=outputs).init({"params": jax.random.key(0)}, jnp.zeros((1, num_words)))
    )

    def cut(leaf, shape):
        if leaf.ndim != len(shape.shape) or any(t > s for s, t in zip(leaf.shape, shape.shape)):
            raise ValueError(f"cannot cut a parameter of shape {leaf.shape} to widths {tuple(widths)} ({shape.shape})")
        return leaf[tuple(slice(0, t) for t in shape.shape)]

    return jax.tree.map(cut, params, target)


def count_params(widths: Sequence[int], num_words: int, outputs: int = 1) -> int:
    """Number of trainable parameters of `MLP(widths, outputs=outputs)` on num_words inputs: the one
    count of the study's MLP (the run plan's, placement's and the memory estimate's, via `runplan.parameter_count`)."""
    sizes = (num_words, *widths, outputs)
    return int(sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])))

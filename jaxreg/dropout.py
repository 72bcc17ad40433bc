"""Inverted dropout driven by an explicit PRNG key.

Flax's `nn.Dropout` branches on `rate == 0` in Python, so it cannot take a traced rate;
this function can, which lets every variant in a vmapped group carry its own rate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array | None) -> jax.Array:
    """Zero each entry with probability `rate`, scale survivors by 1/(1-rate); identity if key is None.

    The uniform draws have the transposed shape (units first), so the first k units of a
    wider layer get the same mask as a k-unit layer from the same key: a model padded to a
    wider bucket sees exactly the masks it would see alone. `rate` = 0 keeps everything.
    """
    if key is None:
        return x
    rate = jnp.asarray(rate, x.dtype)
    keep = jax.random.uniform(key, x.shape[::-1], x.dtype).T >= rate
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))

"""Keras-exact weight penalties: L1 = c * sum|w|, L2 = c * sum(w^2) (no 1/2).

A boolean mask pytree selects the leaves that carry a penalty. `kernel_mask` builds it from
a rule on each leaf's path (`networks.default_penalized` by default: every "kernel" outside
a submodule named "output", which for the study's MLP is its hidden layers' kernels, as Keras'
kernel_regularizer there; never biases).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxreg.networks import default_penalized


def kernel_mask(params, penalize=default_penalized):
    """True at the leaves whose path (tuple of keys) `penalize` accepts, False elsewhere."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: bool(penalize(path)) for path in flat})


def hidden_kernel_mask(params, include_output: bool = False):
    """The study's rule for its MLP: the kernels of layers named hidden_* (and output if asked)."""
    return kernel_mask(
        params,
        lambda path: (
            path[-1] == "kernel" and (path[-2].startswith("hidden_") or (include_output and path[-2] == "output"))
        ),
    )


def _masked_sum(fn, params, mask) -> jax.Array:
    leaves = [jnp.sum(fn(p)) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
    return sum(leaves, jnp.zeros((), jnp.float32))


def l1_penalty(params, coeff, mask) -> jax.Array:
    """coeff * sum of |w| over the masked leaves."""
    return coeff * _masked_sum(jnp.abs, params, mask)


def l2_penalty(params, coeff, mask) -> jax.Array:
    """coeff * sum of w^2 over the masked leaves (Keras' regularizers.l2, no factor 1/2)."""
    return coeff * _masked_sum(jnp.square, params, mask)


def weight_penalty(params, l1, l2, mask) -> jax.Array:
    """Keras' l1_l2 regularizer summed over the masked leaves: l1 * sum|w| + l2 * sum(w^2)."""
    return l1_penalty(params, l1, mask) + l2_penalty(params, l2, mask)

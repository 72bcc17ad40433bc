"""The first layer's sparse product, multi_hot(rows, cols) @ table, as an embedding bag.

On CPU it runs as two XLA FFI custom calls (forward gather-sum, backward scatter-add; C++
source in jaxreg/csrc/embedding_bag.cc, built by `jaxreg.cpu_kernels`); XLA:CPU's own gather
and scatter run element by element at ~1.5 GB/s, and a 16-unit model's epoch is almost all
of this work. Elsewhere (GPU, TPU), or where the kernels cannot be built, it is XLA's
gather + segment_sum. Both sum the pairs in the same order.

Set JAXREG_CPU_KERNELS=0 to use the XLA path on CPU too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxreg.cpu_kernels import cpu_kernels_available

FORWARD_TARGET, BACKWARD_TARGET = "jaxreg_bag_forward", "jaxreg_bag_backward"


def _xla_bag(table, rows, cols, num_rows):
    gathered = jnp.take(table, cols, axis=0)
    return jax.ops.segment_sum(gathered, rows, num_segments=num_rows + 1, indices_are_sorted=True)[:-1]


def _ffi(target, values, rows, cols, out_rows):
    out = jax.ShapeDtypeStruct((out_rows, values.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="expand_dims")(values, rows, cols)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _kernel_bag(table, rows, cols, num_rows):
    return _ffi(FORWARD_TARGET, table, rows, cols, num_rows)


def _kernel_bag_fwd(table, rows, cols, num_rows):
    return _ffi(FORWARD_TARGET, table, rows, cols, num_rows), (rows, cols, table.shape[0])


def _kernel_bag_bwd(num_rows, residuals, d_out):
    rows, cols, num_words = residuals
    return _ffi(BACKWARD_TARGET, d_out, rows, cols, num_words), None, None


_kernel_bag.defvjp(_kernel_bag_fwd, _kernel_bag_bwd)


def embedding_bag(table: jax.Array, rows: jax.Array, cols: jax.Array, num_rows: int) -> jax.Array:
    """out[r] = sum of table[c] over the pairs (r, c); pairs with r >= num_rows are padding.

    `rows` must be sorted (padding last), as `batches.make_batches` writes them. float32
    tables use the CPU kernels where available; other dtypes and platforms use XLA.
    """
    if table.dtype != jnp.float32 or not cpu_kernels_available():
        return _xla_bag(table, rows, cols, num_rows)
    return jax.lax.platform_dependent(
        table,
        rows,
        cols,
        cpu=lambda t, r, c: _kernel_bag(t, r, c, num_rows),
        default=lambda t, r, c: _xla_bag(t, r, c, num_rows),
    )

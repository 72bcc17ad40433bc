"""The CPU embedding-bag kernels equal XLA's gather + segment_sum (measured: bit for bit; asserted
to BAG_RTOL / BAG_ATOL, since a C++ kernel and XLA's program are two compiled programs: see
docs/reproducibility.md).

Covers: forward and gradient, int16 and int32 indices, padding pairs and out-of-range
columns, rows not sorted, empty rows and columns, vmap with shared and per-variant indices
(nested too), many variants sharing a large batch (the forward by table rows, the split
sort), -0.0 cotangents, widths with and without a compile-time specialization, and
the fallbacks (JAXREG_CPU_KERNELS=0, no compiler).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import cpu_kernels
from jaxreg import embedding_bag as eb

pytestmark = pytest.mark.skipif(
    not eb.cpu_kernels_available(), reason="no C++ compiler on this machine: the CPU kernels cannot be built"
)
# The tests that compare the kernels with XLA's gather carry this mark (rerun by .ci/run with XLA
# held to a second instruction set); building, caching and the fallbacks compute no XLA numbers.
numerics = pytest.mark.numerics


def pairs(rng, num_rows, num_words, n, dtype=np.int16, sort=True, padding=10):
    rows = rng.integers(0, num_rows, n)
    rows = np.sort(rows) if sort else rows
    cols = np.minimum(rng.zipf(1.5, n), num_words) - 1  # heavy-tailed like word counts
    rows = np.concatenate([rows, np.full(padding, num_rows)])  # padding pairs point past the last row
    cols = np.concatenate([cols, np.zeros(padding, int)])
    return jnp.asarray(rows.astype(dtype)), jnp.asarray(cols.astype(dtype))


def both(fn):
    """fn evaluated (jitted) with the kernels and with XLA's gather."""
    return jax.jit(fn(eb._kernel_bag)), jax.jit(fn(eb._xla_bag))


# The kernels add the same float32 values in XLA's order, so they agree bit for bit wherever measured
# (AVX2, AVX-512, XLA held to AVX or SSE4.2); but the kernel and XLA's gather are two compiled programs
# (and the sin/cos around them are XLA's, fused differently in each), so the assertion allows about
# one ulp of the sums. Another order of additions over these 20-1000-term sums moves them further.
BAG_RTOL, BAG_ATOL = 1e-6, 1e-7


def assert_equal_to_xla(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=BAG_RTOL, atol=BAG_ATOL)
    zeros = (a == 0) & (b == 0)  # a zero's sign follows IEEE's rules, not rounding: -0.0 + 0.0 is +0.0 in both
    assert np.array_equal(np.signbit(a[zeros]), np.signbit(b[zeros])), "a -0.0 where the other has +0.0"


@numerics
@pytest.mark.parametrize("width", [1, 16, 48, 64, 300])
@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_forward_and_gradient_equal_xla(width, dtype):
    rng = np.random.default_rng(width)
    num_rows, num_words = 37, 200
    rows, cols = pairs(rng, num_rows, num_words, 900, dtype)
    table = jnp.asarray(rng.standard_normal((num_words, width)), jnp.float32)
    d_out = jnp.asarray(rng.standard_normal((num_rows, width)), jnp.float32)
    d_out = d_out.at[0].set(-0.0)  # a sum from 0 turns -0.0 into +0.0: the kernel must too
    fwd_k, fwd_x = both(lambda bag: lambda t, r, c: bag(t, r, c, num_rows))
    assert_equal_to_xla(fwd_k(table, rows, cols), fwd_x(table, rows, cols))
    grad_k, grad_x = both(lambda bag: lambda t, r, c, g: jax.vjp(lambda t: bag(t, r, c, num_rows), t)[1](g)[0])
    assert_equal_to_xla(grad_k(table, rows, cols, d_out), grad_x(table, rows, cols, d_out))


@numerics
@pytest.mark.parametrize("sort", [True, False])
def test_out_of_range_columns_empty_rows_and_unsorted_rows(sort):
    rng = np.random.default_rng(0)
    num_rows, num_words, width = 50, 30, 16
    rows, cols = pairs(rng, 40, num_words, 400, np.int32, sort=sort, padding=0)  # rows 40..49 stay empty
    cols = cols.at[5].set(num_words + 3).at[6].set(-1)  # skipped (XLA's gather would clamp instead)
    table = jnp.asarray(rng.standard_normal((num_words, width)), jnp.float32)
    out = np.asarray(jax.jit(lambda t, r, c: eb._kernel_bag(t, r, c, num_rows))(table, rows, cols))
    expected = np.zeros((num_rows + 1, width), np.float32)
    keep = (np.asarray(cols) >= 0) & (np.asarray(cols) < num_words)
    np.add.at(expected, np.asarray(rows)[keep], np.asarray(table)[np.asarray(cols)[keep]])
    np.testing.assert_allclose(out, expected[:-1], rtol=1e-6, atol=1e-6)
    assert np.all(out[40:] == 0)


@numerics
def test_vmap_shared_and_per_variant_indices():
    rng = np.random.default_rng(1)
    num_rows, num_words, width, variants = 20, 100, 16, 3
    tables = jnp.asarray(rng.standard_normal((variants, num_words, width)), jnp.float32)
    shared = pairs(rng, num_rows, num_words, 300)
    own = [pairs(rng, num_rows, num_words, 300) for _ in range(variants)]
    rows, cols = (jnp.stack(x) for x in zip(*own))

    def loss(bag):
        return lambda t, r, c: jnp.sum(jnp.sin(bag(t, r, c, num_rows)))

    for in_axes, args in [
        ((0, None, None), (tables, *shared)),
        ((0, 0, 0), (tables, rows, cols)),
        ((0, 0, None), (tables, rows, shared[1])),
    ]:
        k, x = both(lambda bag: jax.vmap(jax.value_and_grad(loss(bag)), in_axes=in_axes))
        for a, b in zip(jax.tree.leaves(k(*args)), jax.tree.leaves(x(*args))):
            assert_equal_to_xla(a, b)
    # nested: seeds (own indices) x configs (shared within a seed)
    grid = jnp.asarray(rng.standard_normal((variants, 2, num_words, width)), jnp.float32)
    k, x = both(lambda bag: jax.vmap(jax.vmap(jax.grad(loss(bag)), in_axes=(0, None, None)), in_axes=(0, 0, 0)))
    assert_equal_to_xla(k(grid, rows, cols), x(grid, rows, cols))


def reviews(rng, num_rows, num_words, per_row, padding=100, shuffle_within_rows=False):
    """Pairs as make_batches writes them: row by row, each row's columns sorted and distinct."""
    rows, cols = [], []
    for r in range(num_rows):
        words = np.sort(rng.choice(num_words, rng.integers(1, 2 * per_row), replace=False))
        rows.append(np.full(len(words), r))
        cols.append(rng.permutation(words) if shuffle_within_rows else words)
    rows = np.concatenate([*rows, np.full(padding, num_rows)])
    cols = np.concatenate([*cols, np.zeros(padding, int)])
    return jnp.asarray(rows.astype(np.int16)), jnp.asarray(cols.astype(np.int16))


@numerics
@pytest.mark.parametrize("shuffle_within_rows", [False, True])
def test_many_variants_sharing_a_batch_equal_xla(shuffle_within_rows):
    """Nine variants sharing one batch of ~64k pairs: the forward visits each table row by row
    (sorted reviews) or keeps the row-by-row gather (shuffled ones), and the single grouping's
    sort is split over threads; all of it equal to XLA's (BAG_RTOL, BAG_ATOL)."""
    rng = np.random.default_rng(3)
    num_rows, num_words, width, variants = 512, 3000, 16, 9
    rows, cols = reviews(rng, num_rows, num_words, 125, shuffle_within_rows=shuffle_within_rows)
    assert rows.shape[0] > 1 << 15
    tables = jnp.asarray(rng.standard_normal((variants, num_words, width)), jnp.float32)

    def loss(bag):
        return lambda t, r, c: jnp.sum(jnp.sin(bag(t, r, c, num_rows)))

    k, x = both(lambda bag: jax.vmap(jax.value_and_grad(loss(bag)), in_axes=(0, None, None)))
    for a, b in zip(jax.tree.leaves(k(tables, rows, cols)), jax.tree.leaves(x(tables, rows, cols))):
        assert_equal_to_xla(a, b)
    fwd_k, fwd_x = both(lambda bag: jax.vmap(lambda t: bag(t, rows, cols, num_rows)))
    assert_equal_to_xla(fwd_k(tables), fwd_x(tables))


@numerics
def test_public_entry_point_uses_the_kernel_on_cpu():
    rng = np.random.default_rng(2)
    rows, cols = pairs(rng, 8, 50, 60)
    table = jnp.asarray(rng.standard_normal((50, 4)), jnp.float32)
    text = jax.jit(lambda t: eb.embedding_bag(t, rows, cols, 8)).lower(table).as_text()
    assert eb.FORWARD_TARGET in text
    assert_equal_to_xla(eb.embedding_bag(table, rows, cols, 8), eb._xla_bag(table, rows, cols, 8))
    # other dtypes take XLA's path
    half = eb.embedding_bag(table.astype(jnp.bfloat16), rows, cols, 8)
    assert half.dtype == jnp.bfloat16


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


@pytest.mark.process
def test_fallbacks_to_xla_when_disabled_or_no_compiler(tmp_path):
    code = "from jaxreg import embedding_bag as eb; print(eb.cpu_kernels_available())"
    disabled = run_python(code, JAXREG_CPU_KERNELS="0")
    assert disabled.stdout.strip() == "False", disabled.stderr
    broken = run_python(code, CXX="/bin/false", XDG_CACHE_HOME=str(tmp_path))
    assert broken.stdout.strip() == "False", broken.stderr
    assert "CPU kernels unavailable" in broken.stderr


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    """With a stand-in compiler that only writes its -o file (the real build runs once per session, in
    cpu_kernels_available, and again whenever the sources change: they are in the library's name)."""
    fake = tmp_path / "fake-c++"
    fake.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && echo built > "$2"; shift; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    folder = tmp_path / "kernels"
    first = cpu_kernels.build_cpu_kernels(folder)
    assert first.read_text() == "built\n" and first.parent == folder
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels.build_cpu_kernels(folder) == first and first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.iterdir()) == [first.name, first.name + ".sha256"]  # no partial files left

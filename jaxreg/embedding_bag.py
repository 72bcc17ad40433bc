"""The first layer's sparse product, multi_hot(rows, cols) @ table, as an embedding bag.

On CPU it runs as two XLA FFI custom calls (forward gather-sum, backward scatter-add; C++
source in jaxreg/csrc), compiled on first use with the installed jaxlib's headers and
cached; XLA:CPU's own gather and scatter run element by element at ~1.5 GB/s, and a
16-unit model's epoch is almost all of this work. Elsewhere (GPU, TPU), or where no C++
compiler is found, it is XLA's gather + segment_sum. Both sum the pairs in the same order.

Set JAXREG_CPU_KERNELS=0 to use the XLA path on CPU too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

SOURCE = Path(__file__).parent / "csrc" / "embedding_bag.cc"
FORWARD_TARGET, BACKWARD_TARGET = "jaxreg_bag_forward", "jaxreg_bag_backward"


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "jaxreg" / "kernels"


def _machine_key() -> bytes:
    """What a -march=native build depends on: the architecture and, on Linux, the CPU's feature flags
    (so a cache shared by several machines never hands one a library with instructions it lacks)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        pass
    return f"{os.uname().machine}|{flags}".encode()


def build_cpu_kernels(cache_dir: Path | None = None) -> Path:
    """Compile the CPU kernels (once per source, jaxlib version and machine) and return the library path.

    Raises RuntimeError with the compiler's message when no compiler is found or it fails.
    """
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    include = jax.ffi.include_dir()
    flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
    versions = f"{jax.__version__}|{jaxlib.__version__}".encode()
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), versions, " ".join(flags).encode(), _machine_key()])).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir is not None else _cache_dir()
    library = cache_dir / f"embedding_bag-{key}.so"
    if library.exists():
        return library
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:  # atomic: concurrent builds never see half a file
        partial = Path(tmp) / library.name
        result = subprocess.run(
            [compiler, *flags, "-isystem", include, str(SOURCE), "-o", str(partial)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr[-2000:]}")
        os.replace(partial, library)
    return library


@functools.cache
def cpu_kernels_available() -> bool:
    """Whether the CPU kernels are built and registered with XLA (builds them on first call)."""
    if os.environ.get("JAXREG_CPU_KERNELS", "1") == "0":
        return False
    import ctypes

    try:  # any failure (no compiler, no jax.ffi in an old jax, a library that does not load) falls back
        library = ctypes.cdll.LoadLibrary(str(build_cpu_kernels()))
        jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(library.JaxregBagForward), platform="cpu")
        jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(library.JaxregBagBackward), platform="cpu")
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"jaxreg: CPU embedding-bag kernels unavailable, using XLA's gather ({error})", stacklevel=2)
        return False
    return True


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
        table, rows, cols,
        cpu=lambda t, r, c: _kernel_bag(t, r, c, num_rows),
        default=lambda t, r, c: _xla_bag(t, r, c, num_rows),
    )

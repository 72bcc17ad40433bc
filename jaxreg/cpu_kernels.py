"""jaxreg's C++ kernels for XLA:CPU (jaxreg/csrc), built on first use and registered with XLA.

Two ideas XLA:CPU runs far below the machine's memory speed, both in a 16-unit model's
epoch: the sparse first layer (`embedding_bag`: XLA's gather and scatter move one element at
a time, ~1.5 GB/s) and the first layer's gradient and optimizer step
(`optim.fused_table_step`, RMSprop or Adam: XLA writes a gradient table and splits the step
into ~14 passes over the array, where one pass does). They are compiled once per
source, jax/jaxlib version, compiler flags and CPU with the system's C++ compiler against
the installed jaxlib's FFI headers, and cached (`jaxreg.cache.cache_dir("kernels")`:
~/.cache/jaxreg/kernels, or $XDG_CACHE_HOME/jaxreg/kernels) with a `.sha256` beside each library
(sha256sum format), checked before the library is loaded: a damaged one (a truncated file, which
would crash the process with a bus error on loading) is rebuilt with one warning. Any failure (no compiler,
an old jax) warns once and jaxreg
uses XLA's own operations instead; JAXREG_CPU_KERNELS=0 forces that.
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
import jaxlib

from jaxreg import cache, machine

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("embedding_bag.cc", "rmsprop.cc", "adam.cc")
HEADERS = ("common.h", "bag.h", "fused_step.h")
# XLA FFI target name -> the library's handler symbol
TARGETS = {
    "jaxreg_bag_forward": "JaxregBagForward",
    "jaxreg_bag_backward": "JaxregBagBackward",
    "jaxreg_rmsprop_step": "JaxregRmspropStep",
    "jaxreg_adam_step": "JaxregAdamStep",
}
# -ffp-contract=off: fused multiply-adds only where the source asks (where XLA makes them),
# so results equal XLA's bit for bit; -fno-math-errno lets sqrt vectorize.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", "-ffp-contract=off", "-fno-math-errno")


def _machine_key() -> bytes:
    """What a -march=native build depends on: the architecture and, on Linux, the CPU's feature flags
    (so a cache shared by several machines never hands one a library with instructions it lacks)."""
    flags = " ".join(sorted(machine.cpu_info().get("flags", ())))
    return f"{os.uname().machine}|{flags}".encode()


def build_cpu_kernels(cache_dir: Path | None = None) -> Path:
    """Compile the kernels (once per sources, jaxlib version and machine) and return the library path.

    Raises RuntimeError with the compiler's message when no compiler is found or it fails.
    """
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    include = jax.ffi.include_dir()
    versions = f"{jax.__version__}|{jaxlib.__version__}".encode()
    texts = [(CSRC / name).read_bytes() for name in SOURCES + HEADERS]
    key = hashlib.sha256(b"\0".join([*texts, versions, " ".join(FLAGS).encode(), _machine_key()])).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.cache_dir("kernels")
    library = cache_dir / f"jaxreg_kernels-{key}.so"
    if library.exists():
        intact = _intact(library)
        if intact:
            return library
        if intact is not None:  # None: cached before the checksums, rebuilt once without a word
            warnings.warn(
                f"jaxreg: the cached CPU kernel library {library} is damaged (checksum mismatch); rebuilding it",
                stacklevel=2,
            )
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Atomic like fileio.atomic_write, which writes bytes it is given: here the compiler writes the
    # file, so it builds into a temporary folder and the finished library is renamed into place.
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        partial = Path(tmp) / library.name
        command = [compiler, *FLAGS, "-isystem", include, *(str(CSRC / s) for s in SOURCES), "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {', '.join(SOURCES)} failed:\n{result.stderr[-2000:]}")
        digest = hashlib.sha256(partial.read_bytes()).hexdigest()
        sidecar = Path(tmp) / (library.name + ".sha256")
        sidecar.write_text(f"{digest}  {library.name}\n", encoding="ascii")
        os.replace(sidecar, _checksum_file(library))  # first: a library in place always has its checksum
        os.replace(partial, library)
    return library


def _checksum_file(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _intact(library: Path) -> bool | None:
    """Whether the library's bytes match its `.sha256`; None without one (a library cached before the checksums)."""
    checksum = _checksum_file(library)
    if not checksum.exists():
        return None
    try:
        expected = checksum.read_text(encoding="ascii").split()[0]
        return hashlib.sha256(library.read_bytes()).hexdigest() == expected
    except (OSError, ValueError, IndexError):
        return False


@functools.cache
def cpu_kernels_available() -> bool:
    """Whether the kernels are built and registered with XLA (builds them on first call)."""
    if os.environ.get("JAXREG_CPU_KERNELS", "1") == "0":
        return False
    import ctypes

    try:  # any failure (no compiler, no jax.ffi in an old jax, a library that does not load) falls back
        library = ctypes.cdll.LoadLibrary(str(build_cpu_kernels()))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"jaxreg: CPU kernels unavailable, using XLA's operations ({error})", stacklevel=2)
        return False
    return True

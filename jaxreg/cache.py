"""jaxreg's cache folders under one root, and JAX's persistent compilation cache in it.

The root is ``$XDG_CACHE_HOME/jaxreg``, else ``~/.cache/jaxreg``. Under it:

  imdb-*.npz   the encoded IMDB data (`jaxreg.data`; env ``JAXREG_CACHE`` moves it), checked as it is read
  kernels/     the CPU kernels built for this machine (`jaxreg.cpu_kernels`), each with a ``.sha256``
               checked before it is loaded
  xla/         XLA programs compiled by JAX (`enable_compilation_cache`), checked when it is turned on

Everything there can be deleted at any time; it is rebuilt on next use. A damaged data file,
kernel library or compiled program (a truncated file) is rebuilt with one warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

COMPILE_CACHE_ENV = "JAXREG_COMPILE_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache root (``$XDG_CACHE_HOME/jaxreg`` or ``~/.cache/jaxreg``), or a folder under it; not created."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root, "jaxreg", *parts)


def enable_compilation_cache(path=None) -> Path | None:
    """Turn on JAX's persistent compilation cache in `path` (default: ``cache_dir("xla")``); returns the folder.

    A later process then loads the programs this one compiled instead of compiling them again
    (jaxreg's CPU kernels included: XLA refers to them by name). Every program is cached,
    however fast it compiled: a run compiles dozens of small ones, and they add up. Returns
    None, changing nothing, when env ``JAXREG_COMPILE_CACHE=0``; a folder already given to JAX
    (``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir``) is kept. Works even after
    something was compiled (the cache is reset); call it before the programs to cache compile.
    """
    if os.environ.get(COMPILE_CACHE_ENV, "1") == "0":
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    folder = jax.config.jax_compilation_cache_dir
    if folder is None or path is not None:
        folder = str(Path(path) if path is not None else cache_dir("xla"))
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    removed = remove_damaged_programs(Path(folder))
    if removed:
        warnings.warn(
            f"jaxreg: removed {removed} damaged compiled program(s) from {folder}; they are compiled again",
            stacklevel=2,
        )
    compilation_cache.reset_cache()  # JAX decides once per process whether a cache is in use
    return Path(folder)


def remove_damaged_programs(folder: Path) -> int:
    """Delete the entries of JAX's compilation cache in `folder` that no longer decompress; their count.

    JAX writes an entry in place and never replaces one, so an entry cut short (a killed process,
    a full disk) would stay: JAX would warn about it in every later run and never cache it again.
    Deleted, it is compiled and cached anew. Reads every entry once (a few MB for a study)."""
    try:
        from jax._src.compilation_cache import decompress_executable
    except ImportError:  # another jax: its entries are left to it
        return 0
    removed = 0
    for entry in sorted(folder.glob("*-cache")) if folder.is_dir() else ():
        try:
            data = entry.read_bytes()
        except OSError:
            continue
        try:
            decompress_executable(data)
        except Exception:  # noqa: BLE001 -- zlib.error, zstd's errors: damaged either way
            entry.unlink(missing_ok=True)
            removed += 1
    return removed

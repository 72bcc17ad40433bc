"""jaxreg's cache folders under one root, and JAX's persistent compilation cache in it.

The root is ``$XDG_CACHE_HOME/jaxreg``, else ``~/.cache/jaxreg``. Under it:

  imdb-*.npz   the encoded IMDB data (`jaxreg.data`; env ``JAXREG_CACHE`` moves it), checked as it is read
  kernels/     the CPU kernels built for this machine (`jaxreg.cpu_kernels`), each with a ``.sha256``
               checked before it is loaded
  xla/         XLA programs compiled by JAX (`enable_compilation_cache`)

Everything there can be deleted at any time; it is rebuilt on next use. A damaged data file or
kernel library (a truncated file) is rebuilt with one warning.
"""

from __future__ import annotations

import os
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
    compilation_cache.reset_cache()  # JAX decides once per process whether a cache is in use
    return Path(folder)

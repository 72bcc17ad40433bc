"""Named sweep presets, one small config file each; `load(name_or_path)` returns its SweepConfig.

A preset file defines `get_config() -> jaxreg.sweep.SweepConfig`; the first line of its
docstring is the command that runs it. `--preset` also accepts the path of such a file.
PRESETS is the one list of preset names (experiments/sweep.py's --help shows it).
"""

from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path

from jaxreg.config import SweepConfig, SweepError
from jaxreg.variants import VariantError

PRESETS = {
    "book": "book.py",
    "capacity": "capacity.py",
    "l2-grid": "l2_grid.py",
    "dropout-grid": "dropout_grid.py",
    "decay-vs-l2": "decay_vs_l2.py",
    "learning-curve": "learning_curve.py",
    "label-noise": "label_noise.py",
    "double-descent": "double_descent.py",
    "adamw-vs-l2": "adamw_vs_l2.py",
    "sgdw-vs-l2": "sgdw_vs_l2.py",
    "grid": "grid.py",
}


def load(name_or_path: str) -> SweepConfig:
    """The SweepConfig of a preset name (see PRESETS) or of a config file path ending in .py."""
    if name_or_path in PRESETS:
        path = Path(__file__).parent / PRESETS[name_or_path]
    elif isinstance(name_or_path, str) and name_or_path.endswith(".py"):
        path = Path(name_or_path)
        if not path.is_file():
            raise SweepError(f"preset file {name_or_path!r} does not exist")
    else:
        raise SweepError(
            f"unknown preset {name_or_path!r}; choose one of {', '.join(PRESETS)}, or pass a config .py file"
        )
    spec = importlib.util.spec_from_file_location(f"jaxreg_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:  # a file that exits would end the command having run nothing, with its status
        raise SweepError(f"preset file {_where(path, e)}: {_exited(e)}") from None
    except Exception as e:  # any failure of the user's file is one line naming where
        raise SweepError(f"preset file {_where(path, e)}: {_describe(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise SweepError(f"preset file {str(path)!r} defines no get_config()")
    try:
        config = get_config()
    except SystemExit as e:
        raise SweepError(f"preset file {_where(path, e)}: get_config() {_exited(e)}") from None
    except Exception as e:
        raise SweepError(f"preset file {_where(path, e)}: get_config() failed: {_describe(e)}") from None
    if not isinstance(config, SweepConfig):
        line = getattr(getattr(get_config, "__code__", None), "co_firstlineno", "?")
        raise SweepError(
            f"preset file {str(path)!r} line {line}: get_config() returned {type(config).__name__}, not a SweepConfig"
        )
    return config


def _where(path: Path, error: BaseException) -> str:
    """'path' line N: the line of `path` where the error arose (a syntax error's own line, else the
    innermost traceback frame in the file)."""
    line = None
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).resolve() == path.resolve():
        line = error.lineno
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return f"{str(path)!r}" + (f" line {line}" if line else "")


def _exited(error: SystemExit) -> str:
    """One line for a preset file that called sys.exit (or raised SystemExit): nothing was run."""
    return (
        f"called sys.exit({error.code!r}); a preset file must define get_config() and return, "
        "not exit (nothing was run)"
    )


def _describe(error: BaseException) -> str:
    """The error in one line: its type (but for jaxreg's own errors) and its first message line."""
    if isinstance(error, SyntaxError):
        message = error.msg
    else:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (SweepError, VariantError)):
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__

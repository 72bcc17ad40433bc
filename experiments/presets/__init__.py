"""Named sweep presets, one small config file each; `load(name_or_path)` returns its SweepConfig.

A preset file defines `get_config() -> jaxreg.sweep.SweepConfig`; the first line of its
docstring is the command that runs it. `--preset` also accepts the path of such a file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from jaxreg.sweep import SweepConfig, SweepError

PRESETS = {"book": "book.py", "capacity": "capacity.py", "l2-grid": "l2_grid.py", "dropout-grid": "dropout_grid.py"}


def load(name_or_path: str) -> SweepConfig:
    """The SweepConfig of a preset name (see PRESETS) or of a config file path ending in .py."""
    if name_or_path in PRESETS:
        path = Path(__file__).parent / PRESETS[name_or_path]
    elif name_or_path.endswith(".py"):
        path = Path(name_or_path)
        if not path.is_file():
            raise SweepError(f"preset file {name_or_path!r} does not exist")
    else:
        raise SweepError(f"unknown preset {name_or_path!r}; choose one of {', '.join(PRESETS)}, or pass a config .py file")
    spec = importlib.util.spec_from_file_location(f"jaxreg_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise SweepError(f"preset file {str(path)!r} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, SweepConfig):
        raise SweepError(f"get_config() of {str(path)!r} returned {type(config).__name__}, not a SweepConfig")
    return config


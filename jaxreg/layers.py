"""The package's layers, bottom to top: a module imports only modules of its own layer or of lower ones.

The one table of them: tests/test_architecture.py checks every import of every module against
it (imports inside functions too), and docs/architecture.md explains it. A new module gets a
line here, in the lowest layer whose modules are all it needs.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # no jaxreg import: checks, file IO, the one error, the choice of epochs, the machine, caches
    (
        "base",
        (
            "__init__",
            "layers",
            "checks",
            "errors",
            "fileio",
            "selection",
            "machine",
            "cache",
            "compiletime",
            "rendezvous",
        ),
    ),
    # what a run records, as NumPy: history columns and files, summaries and their tables
    ("records", ("history", "summaries")),
    # the data and its batches
    ("data", ("dataset", "data", "batches")),
    # one model's training step
    (
        "step",
        (
            "losses",
            "tasks",
            "dropout",
            "cpu_kernels",
            "embedding_bag",
            "model",
            "networks",
            "penalties",
            "optim",
            "train",
        ),
    ),
    # many variants trained together, on one or more devices
    ("engine", ("views", "distributed", "memory", "specs", "runplan", "variants")),
    # a run folder's bookkeeping: manifest, lock, checks, default folders, the resume checkpoint
    ("run folder", ("runfolder", "outfolders", "checkpoint")),
    # a run folder's contents, written and read: live history, TensorBoard, parameters, vocabulary, load_run, predict
    ("run files", ("runs", "events", "live", "params", "vocabulary", "predictions")),
    # the study: its config and command-line options, figures, tables, reports, and the sweep that runs it all
    ("study", ("config", "cli", "agreement", "axis_tables", "plots", "grid_plots", "run_figures", "report", "sweep")),
)


def layer_of(module: str) -> int:
    """The layer (0 = base) of a jaxreg module, by its name without "jaxreg." ("__init__" for the package)."""
    for index, (_, modules) in enumerate(LAYERS):
        if module in modules:
            return index
    raise KeyError(f"jaxreg.{module} is in no layer: add it to jaxreg/layers.py and docs/architecture.md")

"""A run folder read back, in any state: `load_run(folder)` -> `Run` (config, status, histories, summary rows).

Run folder files: config.json (written by `jaxreg.sweep`), status.json, history.jsonl and
history.csv (`jaxreg.history`), summary.md and summary.csv (`jaxreg.summaries`), figures/*.png
(`jaxreg.plots`); the manifest of these files and the folder's lock are `jaxreg.runfolder`'s,
which this module sits above: whether a run is writing the folder now is its lock's question.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jaxreg import runfolder
from jaxreg.fileio import CONFIG_FILE, HISTORY_JSONL, STATUS_FILE, SUMMARY_CSV, read_json
from jaxreg.history import read_history
from jaxreg.selection import DIVERGENCE_THRESHOLD
from jaxreg.summaries import read_summary


@dataclasses.dataclass
class Run:
    """A run folder read back: config.json, status.json, histories (stacked) and summary rows.

    state: "running" (a process is training into it), "interrupted" (stopped or killed before
    the end; `--resume` continues it) or "finished" (status.json; "running" in a folder whose
    lock nobody holds is a killed run, so "interrupted"). The histories of an unfinished run
    hold the epochs written so far (`epochs_present`); its summary rows may be stale.
    divergence_threshold: the one the run marked divergence with (config.json); infinite for a
    run from an older jaxreg, which marked only NaN and infinite values.
    """

    folder: Path
    config: dict
    status: dict
    histories: dict
    summary: list
    divergence_threshold: float = DIVERGENCE_THRESHOLD
    state: str = "finished"

    @property
    def epochs(self) -> np.ndarray:
        """Epoch numbers (from 1) of the first variant's history."""
        first = next(iter(self.histories.values()), None)
        return np.arange(1, (0 if first is None else first["loss"].shape[1]) + 1)

    @property
    def epochs_present(self) -> dict[str, int]:
        """{variant: epochs in its history} (all its seeds have them)."""
        return {name: int(h["loss"].shape[1]) for name, h in self.histories.items()}

    @property
    def finished(self) -> bool:
        return self.state == "finished"


def run_state(folder, status: Mapping) -> str:
    """ "running", "interrupted" or "finished", from status.json and whether the folder's lock is held."""
    state = status.get("state")
    if state == "finished":
        return "finished"
    if state == "running" and runfolder.lock_held(folder):
        return "running"
    return "interrupted"


def load_run(folder) -> Run:
    """Read a run folder, running, interrupted or finished: `run.histories["l2"]["val_data_loss"]` is [seeds, epochs]."""
    folder = Path(folder)
    if not (folder / HISTORY_JSONL).is_file() and not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has neither {HISTORY_JSONL} nor {CONFIG_FILE}: not a jaxreg run folder")
    config = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
    status = read_json(folder / STATUS_FILE) if (folder / STATUS_FILE).is_file() else {}
    histories = read_history(folder / HISTORY_JSONL) if (folder / HISTORY_JSONL).is_file() else {}
    names = [v["name"] for v in config.get("variants", [])]
    if names and set(histories) <= set(names):
        histories = {n: histories[n] for n in names if n in histories}
    summary = read_summary(folder / SUMMARY_CSV) if (folder / SUMMARY_CSV).is_file() else []
    threshold = config.get("config", {}).get("divergence_threshold", math.inf)
    state = run_state(folder, status) if status else ("finished" if summary else "interrupted")
    return Run(folder, config, status, histories, summary, float(threshold), state)

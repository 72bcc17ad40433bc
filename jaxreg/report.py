"""A run folder's summary and figures made again, from its history so far: running, interrupted or finished.

`report(folder, out)` reads the folder (`runs.load_run`) and writes summary.md/.csv and the
figures, from the epochs every variant has (all of them for a finished run, which gives the
files the run wrote). Where they go:
  * `out` given: into `out`, never into the run folder;
  * else, if the folder's lock can be taken (no run is writing it): into the run folder,
    recorded in its manifest first (an older jaxreg's folder has none: not recorded);
  * else (a run is training into it): nowhere; the caller prints the table only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxreg import fileio, runfolder, runs
from jaxreg.summaries import summarize, write_summary


class NotARunFolder(ValueError):
    """The folder holds no jaxreg run (one line, for the command line)."""


@dataclasses.dataclass
class Report:
    """What `report` did: the run read, its summaries, the epochs they cover and the files written (none: printed only)."""

    run: runs.Run
    summaries: list
    epochs: int
    written: list  # paths
    destination: Path | None
    note: str  # why nothing was written, or ""


def common_epochs(histories: dict) -> tuple[dict, int]:
    """The histories cut to the epochs every variant has (a run read while it writes an epoch), and their count."""
    n = min((h["loss"].shape[1] for h in histories.values()), default=0)
    return {name: {k: (v if k == "seeds" else v[:, :n]) for k, v in h.items()} for name, h in histories.items()}, n


def title(run: runs.Run, epochs: int) -> str:
    """The summary's title; for a finished run the one the run wrote."""
    config = run.config.get("config", {})
    name, total, seeds = config.get("name", run.folder.name), config.get("epochs", "?"), config.get("seeds", "?")
    if run.finished and epochs == total:
        return f"{name}: {total} epochs x {seeds} seed(s)"
    return f"{name}: {epochs} of {total} epochs so far x {seeds} seed(s) ({run.state})"


def run_axis(run: runs.Run):
    """(axis name, {variant: value}, {variant: series}) of a run swept along an axis, else None."""
    axis = run.config.get("axis")
    if not axis:
        return None
    series = axis.get("series")
    if series is None:  # recorded since series figures exist; else derived from the recorded variants
        from jaxreg.config import axis_series
        from jaxreg.variants import VariantSpec

        recorded = run.config.get("config", {}).get("variants", [])
        series = axis_series([VariantSpec.from_dict({**v, "model": None}) for v in recorded], axis["name"]) if recorded else None
    return (axis["name"], axis["values"], series)


def _write(run, histories, summaries, epochs: int, dest: Path, figures: bool, manifest: bool) -> list[Path]:
    names = [fileio.SUMMARY_MD, fileio.SUMMARY_CSV]
    axis = run_axis(run)
    if figures:
        from jaxreg import plots  # matplotlib only here

        files = plots.figure_files(list(histories), axis[0] if axis else None, plots.tested(histories))
        figure_names = [f"{fileio.FIGURES_DIR}/{n}" for n in files]
    if manifest:
        runfolder.record(dest, *names, *(figure_names if figures else []))
    dest.mkdir(parents=True, exist_ok=True)
    threshold = run.divergence_threshold
    written = list(write_summary(dest, summaries, title=title(run, epochs), divergence_threshold=threshold))
    if figures:
        written += plots.make_figures(histories, dest / fileio.FIGURES_DIR, axis=axis)
    return written


def report(folder, out=None, figures: bool = True) -> Report:
    """Summarize `folder` again (see the module docstring); NotARunFolder for a folder without a run."""
    folder = Path(folder)
    state = runfolder.folder_state(folder)
    if state in ("new", "foreign") or (state == "legacy" and not (folder / fileio.HISTORY_JSONL).is_file()):
        raise NotARunFolder(f"{folder} is not a jaxreg run folder (no {runfolder.MANIFEST_FILE} or {fileio.HISTORY_JSONL})")
    try:
        run = runs.load_run(folder)
    except (OSError, ValueError, KeyError) as e:
        raise NotARunFolder(f"cannot read the run folder {folder}: {e}") from e
    histories, epochs = common_epochs(run.histories)
    if not epochs:
        return Report(run, [], 0, [], None, f"{run.state}, no epoch finished yet: nothing to summarize")
    summaries = summarize(histories)
    if out is not None:
        dest = Path(out)
        return Report(run, summaries, epochs, _write(run, histories, summaries, epochs, dest, figures, False), dest, "")
    try:
        with runfolder.exclusive(folder):
            manifest = (folder / runfolder.MANIFEST_FILE).is_file()
            written = _write(run, histories, summaries, epochs, folder, figures, manifest)
            return Report(run, summaries, epochs, written, folder, "")
    except runfolder.LockError as e:
        why = "a run is writing it" if e.in_use else f"its lock cannot be taken ({e.reason})"
        return Report(run, summaries, epochs, [], None, f"nothing written into {folder}: {why}; pass --out DIR for the files")

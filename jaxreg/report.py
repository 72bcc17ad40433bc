"""A run folder's summary and figures made again, from its history so far: running, interrupted or finished.

`report(folder, out)` reads the folder (`runs.load_run`) and writes summary.md/.csv and the
figures, from the epochs every variant has (all of them for a finished run, which gives the
files the run wrote). Where they go:
  * `out` given: into `out`, never into the run folder, and only when `out` is new, empty or a
    report folder made before: its `report.json` ({"format": 1, "files": [...]}) lists the files
    written there, recorded before they are written, like a run folder's manifest;
  * else, if the folder's lock can be taken (no run is writing it): into the run folder,
    recorded in its manifest first (an older jaxreg's folder has none: not recorded);
  * else (a run is training into it): nowhere; the caller prints the table only.
A folder holding a symbolic link is never written (`ReportError`): jaxreg writes through no link.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxreg import fileio, runfolder, runs
from jaxreg.errors import SweepError
from jaxreg.specs import training_descriptions
from jaxreg.summaries import summarize, write_summary

REPORT_MANIFEST = "report.json"
REPORT_FORMAT = 1


class ReportError(ValueError):
    """The report cannot be made or written as asked (one line, for the command line)."""


class NotARunFolder(ReportError):
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
        series = (
            axis_series([VariantSpec.from_dict({**v, "model": None}) for v in recorded], axis["name"])
            if recorded
            else None
        )
    return (axis["name"], axis["values"], series)


def _write(run, histories, summaries, epochs: int, dest: Path, figures: bool, manifest: bool) -> list[Path]:
    names = [fileio.SUMMARY_MD, fileio.SUMMARY_CSV]
    axis = run_axis(run)
    training = training_descriptions(run.config.get("variants", []))
    if figures:
        from jaxreg import plots, run_figures  # matplotlib only here

        grid = run_figures.run_grid(run.config.get("variants", []), list(histories), training)
        files = run_figures.figure_files(list(histories), axis and axis[0], plots.tested(histories), grid)
        figure_names = [f"{fileio.FIGURES_DIR}/{n}" for n in files]
    if manifest:
        runfolder.record(dest, *names, *(figure_names if figures else []))
    else:
        _record_report(dest, *names, *(figure_names if figures else []))
    threshold = run.divergence_threshold
    written = list(
        write_summary(dest, summaries, title=title(run, epochs), divergence_threshold=threshold, histories=histories)
    )
    if figures:
        name = run.config.get("config", {}).get("name", run.folder.name)
        figure_title = f"{name}, {epochs} epochs"
        written += run_figures.make_figures(histories, dest / fileio.FIGURES_DIR, axis, training, grid, figure_title)
    return written


def _record_report(dest: Path, *names: str) -> None:
    """Create `dest` if needed and add `names` to its report.json, before the files are written."""
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted({*_reported(dest), REPORT_MANIFEST, *names})
    fileio.write_json(dest / REPORT_MANIFEST, {"format": REPORT_FORMAT, "files": files})


def _reported(dest: Path) -> list[str]:
    """The files a report folder's report.json lists; [] without one; ReportError when unreadable."""
    path = dest / REPORT_MANIFEST
    if not path.is_file():
        return []
    try:
        files = fileio.read_json(path)["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("'files' is not a list of paths")
        return files
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"cannot write into {dest}: unreadable {REPORT_MANIFEST} ({e}); choose another --out") from e


def check_destination(dest: Path) -> None:
    """ReportError unless `dest` may take a report: new, empty, or a report folder made before, without symbolic links."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise ReportError(f"{dest} exists and is not a folder; choose another --out")
    if any(dest.iterdir()) and not (dest / REPORT_MANIFEST).is_file():
        raise ReportError(
            f"{dest} is neither empty nor a report folder (no {REPORT_MANIFEST}): report.py writes only into an "
            "empty or new folder, or one it wrote before; choose another --out"
        )
    _reported(dest)
    _check_links(dest, "--out")


def _check_links(folder: Path, what: str) -> None:
    try:
        runfolder.check_no_links(folder, what)
    except SweepError as e:
        raise ReportError(str(e)) from None


def _write_checked(run, histories, summaries, epochs: int, dest: Path, figures: bool, manifest: bool) -> list[Path]:
    """`_write`, an OSError (a read-only folder, a full disk) as one line."""
    try:
        return _write(run, histories, summaries, epochs, dest, figures, manifest)
    except OSError as e:
        raise ReportError(f"cannot write the report into {dest}: {e.strerror or e}") from None


def report(folder, out=None, figures: bool = True) -> Report:
    """Summarize `folder` again (see the module docstring); NotARunFolder for a folder without a run."""
    folder = Path(folder)
    state = runfolder.folder_state(folder)
    if state in ("new", "foreign") or (state == "legacy" and not (folder / fileio.HISTORY_JSONL).is_file()):
        raise NotARunFolder(
            f"{folder} is not a jaxreg run folder (no {runfolder.MANIFEST_FILE} or {fileio.HISTORY_JSONL})"
        )
    try:
        run = runs.load_run(folder)
    except (OSError, ValueError, KeyError) as e:
        raise NotARunFolder(f"cannot read the run folder {folder}: {e}") from e
    histories, epochs = common_epochs(run.histories)
    if not epochs:
        return Report(run, [], 0, [], None, f"{run.state}, no epoch finished yet: nothing to summarize")
    summaries = summarize(histories, training=training_descriptions(run.config.get("variants", [])))
    if out is not None:
        dest = Path(out)
        check_destination(dest)
        return Report(
            run, summaries, epochs, _write_checked(run, histories, summaries, epochs, dest, figures, False), dest, ""
        )
    try:
        with runfolder.exclusive(folder):
            _check_links(folder, "--out DIR for the files")
            manifest = (folder / runfolder.MANIFEST_FILE).is_file()
            written = _write_checked(run, histories, summaries, epochs, folder, figures, manifest)
            return Report(run, summaries, epochs, written, folder, "")
    except runfolder.LockError as e:
        why = "a run is writing it" if e.in_use else f"its lock cannot be taken ({e.reason})"
        return Report(
            run, summaries, epochs, [], None, f"nothing written into {folder}: {why}; pass --out DIR for the files"
        )

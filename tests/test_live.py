"""A run you can watch: history lines and TensorBoard events after every epoch, load_run and report.py on any folder.

One CLI run on synthetic data is held (SIGSTOP) once two epochs are done and read while it
holds its lock; in-process runs cover interrupt and resume. Events are read back with tbparse.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from jaxreg import events, fileio, live, runfolder, runs
from jaxreg.history import METRICS, read_history
from jaxreg.sweep import SweepConfig, SweepInterrupted, run_sweep
from jaxreg.variants import VariantSpec

tbparse = pytest.importorskip("tbparse")
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")  # tbparse under pandas 3

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
REPORT = ROOT / "experiments" / "report.py"

WATCHED_PRESET = '''"""Two 8-unit models, many epochs: a run to watch."""

from jaxreg.sweep import SweepConfig
from jaxreg.variants import VariantSpec


def get_config():
    return SweepConfig(
        name="watched",
        variants=(VariantSpec("original", (8, 8)), VariantSpec("l2", (8, 8), l2=1e-3)),
        epochs=200,
        batch_size=32,
        seeds=2,
    )
'''

LIVE = SweepConfig(
    "live",
    (VariantSpec("original", (4,)), VariantSpec("l2", (4,), l2=1e-3)),
    epochs=4,
    batch_size=256,
    seeds=2,
    synthetic=True,
)


def _report(*args, env=None) -> subprocess.CompletedProcess:
    """python experiments/report.py ARGS, a new process."""
    return subprocess.run(
        [sys.executable, str(REPORT), *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )


@functools.cache
def _report_cli():
    spec = importlib.util.spec_from_file_location("report_cli", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report_here(*args) -> subprocess.CompletedProcess:
    """experiments/report.py's main(ARGS) in this process, its output as a finished process' (where the process
    boundary is not what a test is about: test_a_running_run_can_be_watched has it)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = _report_cli().main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def _jsonl(folder: Path) -> list[dict]:
    """history.jsonl's records; a last line still being written is left out."""
    return [json.loads(line) for line in (folder / fileio.HISTORY_JSONL).read_text().split("\n")[:-1]]


def _scalars(folder: Path):
    """tbparse's scalars of a run folder's events: step, tag, value, dir_name ("<variant>/seed_<s>")."""
    return tbparse.SummaryReader(str(folder / events.EVENTS_DIR), extra_columns={"dir_name"}).scalars


def _assert_events_match_history(folder: Path, epochs: int) -> None:
    """Every metric of epochs 1..epochs, once per step, as in history.jsonl (float32 in events)."""
    scalars = _scalars(folder)
    scalars = scalars[scalars.step <= epochs]
    rows = [r for r in _jsonl(folder) if r["epoch"] <= epochs]
    assert len(rows) == 2 * 2 * epochs  # variants x seeds x epochs
    for r in rows:
        mine = scalars[(scalars.dir_name == f"{r['variant']}/seed_{r['seed']}") & (scalars.step == r["epoch"])]
        for metric in METRICS:
            values = mine[mine.tag == metric].value.to_numpy()
            assert values.size == 1, (r["variant"], r["seed"], r["epoch"], metric, values)
            np.testing.assert_allclose(values[0], r[metric], rtol=1e-6)


def _wait_for_epochs(process, folder: Path, epochs: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if fileio.read_json(folder / fileio.STATUS_FILE)["epochs_done"] >= epochs:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)


@pytest.mark.process
def test_a_running_run_can_be_watched(tmp_path, cli_env):
    """During a CLI run: load_run says running with >= 2 epochs, the events hold history's values, report.py prints only."""
    preset = tmp_path / "watched.py"
    preset.write_text(WATCHED_PRESET)
    out, env = tmp_path / "run", cli_env
    args = ["--preset", preset, "--synthetic", "--no-progress", "--no-figures", "--out", out]
    args += [
        "--checkpoint-seconds",
        "0",
    ]  # status.json's epochs_done, which _wait_for_epochs polls, follows the checkpoint
    run = subprocess.Popen(
        [sys.executable, str(SWEEP), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_epochs(run, out, 2)
        run.send_signal(signal.SIGSTOP)  # hold it mid-run (possibly mid-write) while we read
        try:
            # report.py twice (to stdout, and --out elsewhere) while this process reads the folder too
            reports = ThreadPoolExecutor(2)
            shown_later = reports.submit(_report, out, env=env)
            elsewhere_later = reports.submit(_report, out, "--out", tmp_path / "report", env=env)
            reports.shutdown(wait=False)
            done = fileio.read_json(out / fileio.STATUS_FILE)["epochs_done"]
            watched = runs.load_run(out)
            assert watched.state == "running" and not watched.finished
            assert set(watched.epochs_present) == {"original", "l2"}
            assert all(n >= max(2, done) for n in watched.epochs_present.values()), watched.epochs_present
            assert watched.histories["l2"]["val_data_loss"].shape[0] == 2
            _assert_events_match_history(out, done)
            # the HParams plugin's hyperparameters, one set per variant and seed
            hparams = tbparse.SummaryReader(str(out / events.EVENTS_DIR), extra_columns={"dir_name"}).hparams
            l2 = hparams[hparams.dir_name == "l2/seed_1"].set_index("tag").value
            assert l2["l2"] == pytest.approx(1e-3) and l2["widths"] == "8x8" and l2["seed"] == 1
            assert l2["optimizer"] == "keras2" and l2["variant"] == "l2"
            assert set(events.HPARAM_FIELDS) <= set(l2.index)

            shown, elsewhere = shown_later.result(), elsewhere_later.result()
            assert shown.returncode == 0, shown.stderr
            assert f"{out}: running, " in shown.stdout and "(summary of the epochs so far)" in shown.stdout
            assert "| original" in shown.stdout and "a run is writing it" in shown.stdout
            assert not (out / fileio.SUMMARY_MD).exists()  # nothing written into a folder in use
            assert elsewhere.returncode == 0, elsewhere.stderr
            md = (tmp_path / "report" / fileio.SUMMARY_MD).read_text()
            assert "epochs so far" in md and "(running)" in md
            assert (tmp_path / "report" / fileio.FIGURES_DIR / "vs_original.png").is_file()
            assert fileio.SUMMARY_MD not in runfolder.recorded(out)
        finally:
            run.send_signal(signal.SIGCONT)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, stderr
    stopped = runs.load_run(out)
    assert stopped.state == "interrupted" and min(stopped.epochs_present.values()) >= 2
    shown = _report(out, env=env)
    assert shown.returncode == 0 and f"{out}: interrupted, " in shown.stdout, shown.stderr
    assert "(interrupted)" in (out / fileio.SUMMARY_MD).read_text()  # lock free: written into the folder
    assert runfolder.recorded(out) == runfolder.files_as_recorded(out)


def _run(out, **kwargs):
    return run_sweep(LIVE, out, progress=False, stream=io.StringIO(), **kwargs)


def _interrupt_after(monkeypatch, epoch: int) -> None:
    """Ctrl-C once epoch `epoch` (from 1) is in the history files, before its checkpoint."""
    append = live.LiveLog.epoch

    def epoch_then_interrupt(self, e, row):
        append(self, e, row)
        if e + 1 == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(live.LiveLog, "epoch", epoch_then_interrupt)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("live") / "run"
    _run(out)
    return out


def test_a_resumed_run_writes_the_history_of_an_uninterrupted_one(uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(SweepInterrupted):
        _run(out)  # no checkpoint due before the end: the interrupt saves epoch 2
    stopped = runs.load_run(out)
    assert stopped.state == "interrupted" and stopped.status["epochs_done"] == 2
    assert stopped.epochs_present == {"original": 3, "l2": 3}  # the 3rd epoch's lines, past the checkpoint
    monkeypatch.undo()

    seen = []
    append = live.LiveLog.epoch

    def first_epoch_sees(self, e, row):
        if not seen:
            seen.append(sorted({r["epoch"] for r in _jsonl(out)}))
            seen.append((out / fileio.HISTORY_CSV).read_text().count("\n"))
        append(self, e, row)

    monkeypatch.setattr(live.LiveLog, "epoch", first_epoch_sees)
    _run(out, resume=True)
    assert seen == [[1, 2], 1 + 2 * 2 * 2]  # epoch 3 dropped before it was trained again
    for name in (fileio.HISTORY_JSONL, fileio.HISTORY_CSV):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    _assert_events_match_history(out, LIVE.epochs)  # each step once: the re-run epoch 3 is not doubled
    assert runfolder.recorded(out) == runfolder.files_as_recorded(out)


def test_history_lines_during_a_run_are_the_final_records(uninterrupted, tmp_path, monkeypatch):
    """What a reader sees after each epoch: whole lines, in epoch order, equal to the final file's records."""
    out, snapshots = tmp_path / "run", []
    append = live.LiveLog.epoch

    def epoch_and_look(self, e, row):
        append(self, e, row)
        snapshots.append(((out / fileio.HISTORY_JSONL).read_text(), (out / fileio.HISTORY_CSV).read_text()))

    monkeypatch.setattr(live.LiveLog, "epoch", epoch_and_look)
    _run(out, tensorboard=False, figures=False)
    final = _jsonl(uninterrupted)
    key = lambda r: (r["epoch"], ["original", "l2"].index(r["variant"]), r["seed"])  # noqa: E731
    final_csv = (uninterrupted / fileio.HISTORY_CSV).read_text().splitlines()
    for epochs, (jsonl, csv) in enumerate(snapshots, start=1):
        assert jsonl.endswith("\n") and csv.endswith("\n")
        assert [json.loads(line) for line in jsonl.splitlines()] == sorted(
            (r for r in final if r["epoch"] <= epochs), key=key
        )
        lines = csv.splitlines()
        assert lines[0] == final_csv[0] and sorted(lines[1:]) == sorted(
            row for row in final_csv[1:] if int(row.split(",")[2]) <= epochs
        )
    assert not (out / events.EVENTS_DIR).exists()  # tensorboard=False


def test_hparams_end_with_the_best_metrics(uninterrupted):
    scalars = _scalars(uninterrupted)
    best = scalars[(scalars.dir_name == "l2/seed_0") & scalars.tag.str.startswith("best/")].set_index("tag").value
    history = runs.load_run(uninterrupted).histories["l2"]
    curve = history["val_data_loss"][0]
    assert best["best/epoch"] == int(np.argmin(curve)) + 1
    np.testing.assert_allclose(best["best/val_data_loss"], curve.min(), rtol=1e-6)
    np.testing.assert_allclose(best["best/val_accuracy"], history["val_accuracy"][0, np.argmin(curve)], rtol=1e-6)


def test_report_on_a_finished_run_rewrites_its_files(uninterrupted, tmp_path):
    out = shutil.copytree(uninterrupted, tmp_path / "run")
    before = {name: (out / name).read_bytes() for name in (fileio.SUMMARY_MD, fileio.SUMMARY_CSV)}
    (out / fileio.SUMMARY_MD).unlink()
    shutil.rmtree(out / fileio.FIGURES_DIR)
    shown = _report_here(out)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{out}: finished, 4/4 epochs\n") and "| l2 " in shown.stdout
    assert {name: (out / name).read_bytes() for name in before} == before
    assert (out / fileio.FIGURES_DIR / "vs_original.png").is_file()
    assert runfolder.recorded(out) == runfolder.files_as_recorded(out)


@pytest.mark.parametrize("kind", ["foreign", "missing", "empty"])
def test_report_on_a_non_run_folder_is_one_line_exit_2(kind, tmp_path):
    folder = tmp_path / "x"
    if kind != "missing":
        folder.mkdir()
    if kind == "foreign":
        (folder / "notes.txt").write_text("mine")
    shown = _report_here(folder)
    assert shown.returncode == 2 and shown.stdout == ""
    assert shown.stderr.count("\n") == 1 and "is not a jaxreg run folder" in shown.stderr


def test_read_history_skips_a_line_being_written(uninterrupted, tmp_path):
    lines = (uninterrupted / fileio.HISTORY_JSONL).read_text().splitlines(keepends=True)
    by_epoch = sorted(lines, key=lambda line: (json.loads(line)["epoch"], line))
    path = tmp_path / fileio.HISTORY_JSONL
    path.write_text("".join(by_epoch[:9]) + by_epoch[9][:40])  # epoch 3: 1 of 4 lines, and half of the next
    histories = read_history(path)
    assert {name: h["loss"].shape for name, h in histories.items()} == {"original": (2, 2), "l2": (2, 2)}


def test_report_before_the_first_epoch_says_so(uninterrupted, tmp_path):
    out = shutil.copytree(uninterrupted, tmp_path / "run")
    (out / fileio.HISTORY_JSONL).write_text("")  # as a run writes it before its first epoch
    fileio.write_json(out / fileio.STATUS_FILE, {"state": "interrupted", "epochs_done": 0, "epochs": LIVE.epochs})
    summary = (out / fileio.SUMMARY_MD).read_bytes()
    shown = _report_here(out)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        f"{out}: interrupted, 0/4 epochs",
        "interrupted, no epoch finished yet: nothing to summarize",
    ]
    assert (out / fileio.SUMMARY_MD).read_bytes() == summary
    assert runs.load_run(out).epochs_present == {}

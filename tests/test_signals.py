"""Ctrl-C (SIGINT) and SIGTERM at any moment of experiments/sweep.py, in real subprocesses.

Every moment (imports, compilation, training, writing the results) must end with exit 130
(SIGINT) or 143 (SIGTERM), no traceback, status.json "interrupted" where the run folder
exists, and a folder that --resume completes with the history of an uninterrupted run.
Moments are found by polling what the process shows (its signal mask in /proc, status.json,
its epochs_done), not by fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxreg import fileio

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
EPOCHS = 12
# a checkpoint after every epoch: status.json's epochs_done, which the tests poll, follows the checkpoint
ARGS = ["--synthetic", "--variants", "original,l2", "--epochs", str(EPOCHS), "--batch-size", "32", "--no-progress"]
ARGS += ["--checkpoint-seconds", "0"]
# Python's Ctrl-C handler in the child whatever it inherits (see tests/test_sweep.py: a test
# runner started in the background passes SIGINT on ignored, and Python keeps ignoring it)
WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)

pytestmark = [
    pytest.mark.process,  # real subprocesses: .ci/run's second step
    pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="polls /proc/<pid>/status (Linux)"),
]


def _env(cache: Path | None) -> dict:
    """This worktree's jaxreg, no JAXREG_DATA; with `cache`, a persistent compilation cache (compiles once)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAXREG_DATA", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


@pytest.fixture(scope="module")
def cached_env(tmp_path_factory) -> dict:
    return _env(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def reference(cached_env, tmp_path_factory) -> tuple[str, float]:
    """(history.jsonl of the uninterrupted run, seconds from status "running" to the first epoch: compiling)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = _start(out, cached_env, "--no-figures")  # compiles: the cache is still empty
    _wait(proc, lambda: _status(out).get("state") == "running")
    t0 = time.monotonic()
    _wait(proc, lambda: _status(out).get("epochs_done", 0) >= 1)
    compiling = time.monotonic() - t0
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return (out / fileio.HISTORY_JSONL).read_text(), compiling


def _start(out: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WITH_CTRL_C, str(SWEEP), *ARGS, "--out", str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=out.parent,
    )


def _wait(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """Poll until ready() (the process still running), every 2 ms."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get there"
        time.sleep(0.002)


def _handlers_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM, i.e. sweep.py installed its handlers (before importing jax)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return False
    return bool(int(fields["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)))


def _status(out: Path) -> dict:
    try:
        return fileio.read_json(out / fileio.STATUS_FILE)
    except (OSError, ValueError):
        return {}


def _ended(proc: subprocess.Popen, code: int) -> tuple[str, str]:
    """(stdout, stderr) after checking the exit status: `code`, no traceback, no crash."""
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, stderr)  # a segfault reads -11 here (139 in a shell)
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
    assert "resume with" in stderr or "to continue from the last checkpoint" in stderr, stderr
    return stdout, stderr


def _resume(out: Path, env: dict, reference: str, *extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SWEEP), *ARGS, "--out", str(out), "--resume", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert _status(out)["state"] == "finished"
    assert (out / fileio.HISTORY_JSONL).read_text() == reference
    assert not list(out.glob(".*.tmp"))


def _jaxlib_loaded(pid: int) -> bool:
    """Whether jaxlib's XLA extension is mapped into the process: jax's import is under way."""
    try:
        return "jaxlib" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("moment", ["handlers", "jaxlib"])
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_while_importing(sig, code, moment, cached_env, tmp_path):
    """Right after sweep.py installed its handlers (stdlib imports, parsing), and inside jax's import."""
    out = tmp_path / "run"
    proc = _start(out, cached_env)
    _wait(proc, lambda: _handlers_installed(proc.pid) and (moment == "handlers" or _jaxlib_loaded(proc.pid)))
    proc.send_signal(sig)
    stdout, _ = _ended(proc, code)
    assert stdout == ""  # still importing jax or loading the data: nothing printed, nothing written
    assert not out.exists() or _status(out).get("state") == "interrupted"


def test_sigint_while_compiling_repeatedly_then_resume(reference, cached_env, tmp_path):
    """The first epoch's compilation, five times (an XLA compiler thread used to segfault the exit).

    No compilation cache, so that XLA really compiles; signals at 10% to 80% of the reference
    run's compile time (the segfault came in its second half), or as soon as an epoch is done
    should this one compile faster; a second signal follows the first.
    """
    history, compiling = reference
    out = tmp_path / "run"
    env = _env(None)
    for attempt in range(5):
        proc = _start(out, env, *(["--resume"] if attempt else []))
        _wait(proc, lambda: _status(out).get("state") == "running")  # written right before compiling
        start, moment = _status(out)["epochs_done"], time.monotonic() + compiling * (0.1 + 0.175 * attempt)
        _wait(proc, lambda: time.monotonic() >= moment or _status(out).get("epochs_done", 0) > start)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # while the first is handled: ignored
        _, stderr = _ended(proc, 130)
        status = _status(out)
        assert status["state"] == "interrupted", (attempt, status, stderr)
    _resume(out, cached_env, history, "--no-figures")


def test_sigterm_while_training_then_resume(reference, cached_env, tmp_path):
    out = tmp_path / "run"
    proc = _start(out, cached_env, "--no-figures")
    _wait(proc, lambda: _status(out).get("epochs_done", 0) >= 1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = _ended(proc, 143)
    status = _status(out)
    assert status["state"] == "interrupted" and 1 <= status["epochs_done"] < EPOCHS, status
    assert f"SIGTERM: interrupted after epoch {status['epochs_done']}/{EPOCHS}" in stderr
    _resume(out, cached_env, reference[0], "--no-figures")


def test_sigint_while_writing_results_then_resume(reference, cached_env, tmp_path):
    """After the last epoch's checkpoint: history.jsonl/.csv rewritten, then the summary and the figures (matplotlib)."""
    out = tmp_path / "run"
    proc = _start(out, cached_env)
    _wait(proc, lambda: _status(out).get("epochs_done") == EPOCHS)
    proc.send_signal(signal.SIGINT)
    _, stderr = _ended(proc, 130)
    status = _status(out)
    assert status["state"] in ("interrupted", "finished") and status["epochs_done"] == EPOCHS, status
    assert (out / "checkpoint" / str(EPOCHS)).is_dir() or status["state"] == "finished"  # a finished run deletes it
    _resume(out, cached_env, reference[0])
    assert list((out / fileio.FIGURES_DIR).glob("*.png"))


LOST_IN_DEL = """
import importlib.util, signal, sys
spec = importlib.util.spec_from_file_location("cli", sys.argv[1])
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)
cli.INTERRUPTS.install()

class Finalized:
    def __del__(self):
        signal.raise_signal(signal.SIGTERM)  # handled in here: Python drops the KeyboardInterrupt

try:
    Finalized()
    print("went on", cli.INTERRUPTS.received)
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("interrupted", cli.INTERRUPTS.exit_status())
"""


def test_an_interrupt_lost_in_a_finalizer_rearms_without_a_traceback():
    proc = subprocess.run([sys.executable, "-c", LOST_IN_DEL, str(SWEEP)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["went on None", "interrupted 130"]
    assert "SIGTERM came during cleanup code and was lost" in proc.stderr and "Traceback" not in proc.stderr

"""Faults at the start of a run of many processes, and write errors during a run: each ends with one line.

Start-up (jaxreg.rendezvous, experiments/sweep.py): a peer that never comes, a busy coordinator
port, an unreachable coordinator, another process count, and a signal while waiting each end
the process at once (within the --peer-timeout) with one line and the documented exit status,
writing nothing. The rendezvous itself is tested in-process with threads.

Write errors: a full disk (OSError ENOSPC, raised by a patched writer) while appending the
history at epoch 2, or while writing the summary at the end, ends the run with exit status 5,
one line naming the file and the reason, status.json "interrupted" with that reason; --resume
without the patch then ends with the history of an uninterrupted run, bit for bit (the same
compiled program on this machine).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import run_concurrently
from jaxreg import fileio, live, rendezvous, summaries

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "experiments" / "sweep.py")
CLI = importlib.util.module_from_spec(importlib.util.spec_from_file_location("sweep_cli_faults", SWEEP))
CLI.__spec__.loader.exec_module(CLI)
RUN = ["--synthetic", "--variants", "original", "--epochs", "3", "--batch-size", "256", "--no-progress", "--no-figures"]
WITHIN = 20  # seconds any start-up fault may take, process start included (--peer-timeout 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXREG_DATA", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), JAXREG_COMPILE_CACHE="0", JAX_PLATFORMS="cpu")
    return env


def command(port: int, process_id: int, *more: str, processes: int = 2) -> list[str]:
    cluster = ["--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(process_id)]
    return [sys.executable, SWEEP, *RUN, "--devices", "1", "--out", "run", *cluster, "--peer-timeout", "3", *more]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def run(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - t0


# --- start-up: whole processes ---------------------------------------------------------------


@pytest.mark.process
def test_a_peer_that_never_comes_is_one_line_and_exit_4(tmp_path):
    port = free_port()
    result, seconds = run(command(port, 0), tmp_path)
    assert result.returncode == CLI.EXIT_PROCESS_LOST, result.stderr
    line = one_line(result.stderr)
    assert line == (
        f"sweep.py: error: process(es) [1] did not connect to the coordinator localhost:{port} within 3 s (--peer-timeout); "
        "start all 2 processes with the same --coordinator and --num-processes"
    )
    assert seconds < WITHIN and not (tmp_path / "run").exists()


@pytest.mark.process
def test_a_slurm_job_whose_peer_never_comes_is_one_line_and_exit_4(tmp_path):
    """--distributed in a (simulated) SLURM job of 2 tasks where task 1 never starts: the coordinator, process
    count and number JAX detects go through the same rendezvous, so the wait ends in one line within
    --peer-timeout instead of JAX's abort from C++."""
    port = free_port()
    slurm = dict(
        SLURM_JOB_ID="77",
        SLURM_STEP_NODELIST="localhost",
        SLURM_NTASKS="2",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_STEP_NUM_NODES="1",
        JAX_COORDINATOR_PORT=str(port),
    )
    cmd = [sys.executable, SWEEP, *RUN, "--devices", "1", "--out", "run", "--distributed", "--peer-timeout", "3"]
    t0 = time.monotonic()
    result = subprocess.run(
        cmd, cwd=tmp_path, env={**environment(), **slurm}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == CLI.EXIT_PROCESS_LOST, result.stderr
    assert one_line(result.stderr) == (
        f"sweep.py: error: process(es) [1] did not connect to the coordinator localhost:{port} within 3 s "
        "(--peer-timeout); start all 2 processes with the same --coordinator and --num-processes "
        "(--distributed: the cluster JAX detects has 2 processes, this is 0)"
    )
    assert time.monotonic() - t0 < WITHIN and not (tmp_path / "run").exists()


@pytest.mark.process
def test_a_busy_coordinator_port_is_one_line_and_exit_2(tmp_path):
    with socket.create_server(("", 0)) as taken:
        port = taken.getsockname()[1]
        result, seconds = run(command(port, 0), tmp_path)
    assert result.returncode == CLI.EXIT_BAD_INPUT, result.stderr
    assert one_line(result.stderr).startswith(
        f"sweep.py: error: the coordinator port {port} cannot be bound on this machine ("
    )
    assert "choose another free port" in result.stderr and seconds < WITHIN and not (tmp_path / "run").exists()


@pytest.mark.process
def test_an_unreachable_coordinator_is_one_line_and_exit_4(tmp_path):
    port = free_port()  # nobody listens there
    result, seconds = run(command(port, 1), tmp_path)
    assert result.returncode == CLI.EXIT_PROCESS_LOST, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(
        f"sweep.py: error: cannot reach process 0 at the coordinator localhost:{port} within 3 s"
    ) and ("Connection refused" in line)
    unknown, _ = run([*command(port, 1)[:-2], "--coordinator", f"no-such-host.invalid:{port}"], tmp_path)
    assert unknown.returncode == CLI.EXIT_BAD_INPUT
    assert one_line(unknown.stderr).startswith("sweep.py: error: the coordinator host 'no-such-host.invalid'")
    assert seconds < WITHIN and not (tmp_path / "run").exists()


@pytest.mark.process
def test_another_process_count_stops_both_with_one_line(tmp_path):
    port = free_port()
    zero, one = run_concurrently(
        *(
            dict(args=cmd, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60)
            for cmd in (command(port, 0, "--peer-timeout", "10"), command(port, 1, "--peer-timeout", "10", processes=3))
        )
    )
    why = "process 1 was started with --num-processes 3, process 0 with 2"
    assert zero.returncode == CLI.EXIT_BAD_INPUT and one_line(zero.stderr) == f"sweep.py: error: {why}"
    assert (
        one.returncode == CLI.EXIT_BAD_INPUT
        and one_line(one.stderr) == f"sweep.py: error: process 0 refused to start: {why}"
    )


@pytest.mark.process
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_waiting_for_peers_ends_the_wait(tmp_path, signum, status):
    port = free_port()
    cmd = command(port, 0)[:-2] + ["--peer-timeout", "60"]
    process = subprocess.Popen(
        cmd, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + WITHIN
        while not _listening(port):  # process 0 waits for its peer once it listens
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status and time.monotonic() - sent < 5, stderr
    prefix = "SIGTERM: " if signum == signal.SIGTERM else ""
    assert one_line(stderr) == f"{prefix}interrupted while waiting for the other processes; nothing was written"
    assert not (tmp_path / "run").exists()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("localhost", port), timeout=1).close()  # closed at once: process 0 drops it
        return True
    except OSError:
        return False


# --- start-up: the rendezvous in-process ----------------------------------------------------------


def _meet_all(port: int, count: int, timeout: float, codes=None) -> list:
    """meet() of processes 0..count-1 on threads; each one's exception or None."""
    results = [None] * count

    def one(i):
        try:
            rendezvous.meet(f"localhost:{port}", count, i, timeout, (codes or ["c"] * count)[i])
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in reversed(range(count))]  # the peers first: they retry
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_three_processes_meet_and_release_the_port():
    port = free_port()
    assert _meet_all(port, 3, 10) == [None, None, None]
    with socket.create_server(("", port)):  # the coordination service can bind it right after
        pass


def test_another_code_version_is_refused_by_process_0():
    results = _meet_all(free_port(), 2, 10, codes=["0.1.0+aaa", "0.1.0+bbb"])
    assert all(isinstance(r, rendezvous.RendezvousError) and not r.missing for r in results), results
    assert "process 1 runs another jaxreg version or source (0.1.0+bbb, process 0: 0.1.0+aaa)" in str(results[1])


def test_a_duplicate_process_id_is_refused():
    port = free_port()
    results = [None] * 3

    def one(slot, pid):
        try:
            rendezvous.meet(f"localhost:{port}", 3, pid, 10, "c")
        except Exception as e:  # noqa: BLE001
            results[slot] = e

    threads = [threading.Thread(target=one, args=(slot, pid)) for slot, pid in ((0, 0), (1, 1), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert "two processes say they are process 1" in str(results[0]) and not results[0].missing, results


def test_a_missing_peer_is_missing_after_the_timeout():
    t0 = time.monotonic()
    (error,) = _meet_all(free_port(), 1, 1)  # one process of one: nothing to wait for
    assert error is None and time.monotonic() - t0 < 1
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(rendezvous.RendezvousError, match=r"process\(es\) \[1, 2\] did not connect") as caught:
        rendezvous.meet(f"localhost:{port}", 3, 0, 1, "c")
    assert caught.value.missing and 1 <= time.monotonic() - t0 < 3


def test_code_version_names_the_version_and_the_sources():
    import jaxreg

    version = rendezvous.code_version()
    assert version.startswith(jaxreg.__version__ + "+") and len(version.split("+")[1]) == 12
    assert version == rendezvous.code_version()


# --- write errors during a run: in-process -----------------------------------------------------


def _main(out: Path, *more: str) -> int:
    return CLI.main([*RUN, "--no-compile-cache", "--no-tensorboard", "--out", str(out), *more])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    assert _main(out) == 0
    return out


class _FullDisk:
    """An open() for jaxreg.live whose history.jsonl appends fail with ENOSPC from the `fail_at`-th one on."""

    def __init__(self, fail_at: int):
        self.appends, self.fail_at = 0, fail_at

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if Path(path).name == fileio.HISTORY_JSONL and "a" in mode:
            self.appends += 1
            if self.appends >= self.fail_at:
                f.close()
                return _FailingWrites()
        return f


class _FailingWrites:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() on a full disk: no file name


def _check_stopped(out: Path, capsys, code: int, file: str, epochs_done: int) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == CLI.EXIT_WRITE_FAILED, err
    assert len(lines) == 1 and lines[0].startswith(
        f"sweep.py: error: cannot write {out / file}: No space left on device; "
    ), err
    assert f"the checkpoint holds epoch {epochs_done}" in lines[0] and "--resume" in lines[0], err
    status = fileio.read_json(out / fileio.STATUS_FILE)
    assert status["state"] == "interrupted" and status["epochs_done"] == epochs_done, status
    assert status["reason"] == f"cannot write {out / file}: No space left on device"
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_while_writing_the_history_stops_then_resumes_bit_for_bit(
    uninterrupted, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(live, "open", _FullDisk(fail_at=2), raising=False)  # epoch 2's lines
        code = _main(out)
    _check_stopped(out, capsys, code, fileio.HISTORY_JSONL, epochs_done=1)
    assert _main(out, "--resume") == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert (out / fileio.HISTORY_JSONL).read_bytes() == (uninterrupted / fileio.HISTORY_JSONL).read_bytes()
    assert fileio.read_json(out / fileio.STATUS_FILE)["state"] == "finished"


def test_a_full_disk_while_writing_the_summary_stops_then_resumes(uninterrupted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = summaries.atomic_write

    def full(path, *args, **kwargs):
        if Path(path).name == fileio.SUMMARY_MD:
            with fileio.naming(path):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(summaries, "atomic_write", full)
        code = _main(out)
    _check_stopped(out, capsys, code, fileio.SUMMARY_MD, epochs_done=3)
    assert _main(out, "--resume") == 0
    assert (out / fileio.HISTORY_JSONL).read_bytes() == (uninterrupted / fileio.HISTORY_JSONL).read_bytes()
    assert (out / fileio.SUMMARY_CSV).read_bytes() == (uninterrupted / fileio.SUMMARY_CSV).read_bytes()


def test_naming_gives_a_write_error_its_file(tmp_path):
    with pytest.raises(OSError) as caught:
        with fileio.naming(tmp_path / "x"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "x")
    with pytest.raises(FileNotFoundError) as caught:  # a file name already given is kept, and so is the type
        with fileio.naming(tmp_path / "x"):
            open(tmp_path / "missing" / "y")
    assert caught.value.filename == str(tmp_path / "missing" / "y")


def test_peer_timeout_is_checked(capsys):
    from jaxreg import distributed

    assert CLI.main(["--synthetic", "--peer-timeout", "3", "--out", "x"]) == CLI.EXIT_BAD_INPUT
    assert "--peer-timeout is for many processes" in capsys.readouterr().err
    with pytest.raises(distributed.DistributedError, match="peer_timeout=0 must be an integer >= 1"):
        distributed.Cluster("localhost:1", 2, 0, peer_timeout=0)

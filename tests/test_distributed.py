"""One sweep across two local CPU processes (jax.distributed with gloo) equals a one-process run.

Two processes of experiments/sweep.py (one CPU device each, so the variant axis is sharded
over a 2-device mesh across the processes) train the same synthetic sweep as one process
with two devices. Each process has its own working folder and a relative --out: process 0
writes the run folder; process 1 writes nothing into its own, only its shards of the checkpoint
and its variants' params/ files into process 0's folder (a file system both see, as orbax
needs). Another pair loses process 1 (SIGKILL) mid-run: process 0 must stop with exit status 4
and a line naming the cause, its folder left interrupted; resumed by a new pair, the run ends
with the history of an uninterrupted pair; so does a group of four processes that loses one. The
cluster flags are checked, and processes that cannot start, or read other data, stop together.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import pytest

from conftest import write_fake_imdb
from jaxreg import fileio
from jaxreg.params import load_params
from jaxreg.runs import load_run
from jaxreg.variants import METRICS

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "experiments" / "sweep.py")
cli = importlib.util.module_from_spec(importlib.util.spec_from_file_location("sweep_cli", SWEEP))
cli.__spec__.loader.exec_module(cli)
# Histories of the same variants on the same 2-device mesh: equal to float32 rounding, the
# tolerance tests/test_sharding.py documents for devices (measured here: bit for bit on
# XLA:CPU, jax 0.10.2, AMD EPYC Zen 3, AVX2).
RTOL, ATOL = 1e-6, 1e-7
RUN = [
    "--synthetic",
    "--variants",
    "original,l2",
    "--epochs",
    "2",
    "--batch-size",
    "256",
    "--no-progress",
    "--no-figures",
]
LOST_WITHIN = 30  # seconds from killing process 1 to process 0's exit (heartbeat timeout 5 s; gloo reports at once)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXREG_DATA",)}
    env.update(PYTHONPATH=str(ROOT), JAXREG_COMPILE_CACHE="0", JAX_PLATFORMS="cpu")
    return env


def start(cwd: Path, *args: str, log: str) -> subprocess.Popen:
    """experiments/sweep.py in `cwd`, its stdout and stderr into cwd/../<log>.out, .err."""
    cwd.mkdir(parents=True, exist_ok=True)
    out = open(cwd.parent / f"{log}.out", "w")
    err = open(cwd.parent / f"{log}.err", "w")
    with out, err:
        return subprocess.Popen([sys.executable, SWEEP, *args], cwd=cwd, env=environment(), stdout=out, stderr=err)


def group(tmp: Path, name: str, *args: str, count: int = 2) -> list[subprocess.Popen]:
    """Processes 0 .. count-1 of one run, each in its own folder tmp/name/p<i>, with --out run."""
    cluster = ["--coordinator", f"localhost:{free_port()}", "--num-processes", str(count)]
    return [
        start(
            tmp / name / f"p{i}",
            *RUN,
            "--devices",
            "1",
            "--out",
            "run",
            *cluster,
            "--process-id",
            str(i),
            *args,
            log=f"{name}{i}",
        )
        for i in range(count)
    ]


def finish(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def text(tmp: Path, log: str) -> str:
    return (tmp / f"{log}.out").read_text() + (tmp / f"{log}.err").read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two processes and, at the same time, one process with two devices, of the same sweep."""
    tmp = tmp_path_factory.mktemp("distributed")
    processes = group(tmp, "two")
    single = start(tmp / "one" / "p0", *RUN, "--devices", "2", "--out", "run", log="one0")
    codes = [finish(p, 240) for p in (*processes, single)]
    for code, log in zip(codes, ("two/two0", "two/two1", "one/one0")):
        assert code == 0, text(tmp / log.split("/")[0], log.split("/")[1])[-3000:]
    return tmp


@pytest.mark.numerics
@pytest.mark.process
def test_two_processes_equal_one(runs):
    two = load_run(runs / "two" / "p0" / "run")
    one = load_run(runs / "one" / "p0" / "run")
    assert (
        two.config["devices"] == {**one.config["devices"], "processes": 2} and one.config["devices"]["processes"] == 1
    )
    assert two.config["devices"]["count"] == 2
    assert set(two.histories) == set(one.histories) == {"original", "l2"}
    for name in one.histories:
        for metric in METRICS:
            got, want = np.asarray(two.histories[name][metric]), np.asarray(one.histories[name][metric])
            assert got.shape == want.shape == (1, 2), (name, metric)
            chex.assert_tree_all_finite(want)
            chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL, custom_message=f"{name} {metric}")
    for name in one.histories:  # gathered from both processes' devices at the end
        for which in ("final", "best"):
            got, want = (load_params(runs / d / "p0" / "run", name, 0, which) for d in ("two", "one"))
            chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL, custom_message=f"{name} {which} params")
    assert two.status["state"] == "finished"
    summary = (runs / "two" / "p0" / "run" / "summary.md").read_text()
    assert "original" in summary and "l2" in summary


@pytest.mark.process
def test_process_one_writes_nothing(runs):
    assert list((runs / "two" / "p1").iterdir()) == [], "process 1 wrote files"
    written = sorted(p.relative_to(runs / "two" / "p0") for p in (runs / "two" / "p0").rglob("*") if p.is_file())
    single = sorted(p.relative_to(runs / "one" / "p0") for p in (runs / "one" / "p0").rglob("*") if p.is_file())
    assert written == single, "process 0 writes what a one-process run writes"
    out = text(runs / "two", "two1")
    assert "process 1 of 2" in out and "Wrote" not in out and len(out.splitlines()) <= 5, out


@pytest.mark.process
def test_two_processes_on_one_machine_print_no_gloo_line_and_count_its_ram_once(runs):
    both = text(runs / "two", "two0") + text(runs / "two", "two1")
    assert "[Gloo]" not in both, both
    plan = next(line for line in text(runs / "two", "two0").splitlines() if " of 2 processes, est. " in line)
    assert plan.endswith("host RAM; output: run") and "x 2" not in plan, plan


@pytest.mark.process
def test_lost_process_stops_the_other(tmp_path):
    processes = group(tmp_path, "lost", "--epochs", "200", "--heartbeat-timeout", "5", "--checkpoint-seconds", "0")
    status = tmp_path / "lost" / "p0" / "run" / fileio.STATUS_FILE
    deadline = time.monotonic() + 180
    while not (  # compiled, and a checkpoint saved by both processes (status.json's epochs_done follows it)
        status.is_file() and json.loads(status.read_text() or "{}").get("epochs_done", 0) >= 1
    ):
        assert processes[0].poll() is None and processes[1].poll() is None, text(tmp_path / "lost", "lost0")[-3000:]
        assert time.monotonic() < deadline, "no epoch within 180 s"
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = finish(processes[0], LOST_WITHIN)
    seconds = time.monotonic() - killed
    processes[1].wait()
    log = text(tmp_path / "lost", "lost0")
    assert code == 4, log[-3000:]
    assert seconds < LOST_WITHIN
    assert "another process stopped" in log and "--resume" in log, log[-3000:]
    status = json.loads((tmp_path / "lost" / "p0" / "run" / fileio.STATUS_FILE).read_text())
    assert status["state"] == "interrupted" and status["epochs_done"] >= 1, status


def lose_one_and_resume(tmp: Path, count: int, *args: str) -> None:
    """Two runs of `count` processes at once; one loses process count // 2 (SIGKILL) after its second checkpoint,
    the others stop with exit status 4, and a new group resumes it: its history.jsonl and summary.csv text must
    equal the uninterrupted run's (the same programs on the same count-device mesh, a resume)."""
    longer = [*args, "--epochs", "12", "--checkpoint-seconds", "0", "--heartbeat-timeout", "5"]
    lost = count // 2
    whole = group(tmp, "whole", *longer, count=count)
    processes = group(tmp, "cut", *longer, count=count)
    status = tmp / "cut" / "p0" / "run" / fileio.STATUS_FILE
    deadline = time.monotonic() + 180
    while not (status.is_file() and json.loads(status.read_text() or "{}").get("epochs_done", 0) >= 2):
        assert all(p.poll() is None for p in processes), text(tmp / "cut", "cut0")[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)
    processes[lost].send_signal(signal.SIGKILL)
    for i, process in enumerate(processes):
        if i != lost:
            assert finish(process, LOST_WITHIN + 60) == 4, text(tmp / "cut", f"cut{i}")[-3000:]
    processes[lost].wait()
    stopped = json.loads(status.read_text())
    assert stopped["state"] == "interrupted", stopped
    assert [finish(p, 240) for p in whole] == [0] * count, text(tmp / "whole", "whole0")[-3000:]
    if stopped["epochs_done"] == 12:  # the group finished its last save before the loss: nothing left to train
        pytest.skip(f"process {lost} was lost after the last checkpoint")
    resumed = group(tmp, "cut", *longer, "--resume", count=count)
    codes = [finish(p, 240) for p in resumed]
    assert codes == [0] * count, "".join(text(tmp / "cut", f"cut{i}")[-3000:] for i in range(count))
    assert f"resuming after epoch {stopped['epochs_done']}" in text(tmp / "cut", "cut0")
    for name in (fileio.HISTORY_JSONL, "summary.csv"):
        cut, uncut = (tmp / d / "p0" / "run" / name for d in ("cut", "whole"))
        assert cut.read_text() == uncut.read_text(), name


@pytest.mark.process
def test_a_pair_that_lost_a_process_resumes_to_the_uninterrupted_history(tmp_path):
    """Sharded checkpoints: each process saved its shards; a new pair restores them and trains on, bit for bit
    with an uninterrupted pair (the same programs on the same 2-device mesh, a resume)."""
    lose_one_and_resume(tmp_path, 2)


@pytest.mark.process
@pytest.mark.slow
def test_four_processes_that_lost_one_resume_to_the_uninterrupted_history(tmp_path):
    """The same with 4 processes, a variant of one bucket on each (process 2 lost, processes 0, 1, 3 stop with
    exit status 4): each process's shards of a 4-device mesh, restored by 4 new processes."""
    lose_one_and_resume(tmp_path, 4, "--variants", "original,l2,l1,dropout")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--coordinator", "localhost:1", "--out", "x"], "--coordinator needs --num-processes, --process-id too"),
        (
            ["--num-processes", "2", "--process-id", "0", "--out", "x"],
            "--num-processes, --process-id needs --coordinator",
        ),
        (
            ["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "0", "--out", "x"],
            "leave out",
        ),
        (["--distributed"], "pass --out"),
        (["--heartbeat-timeout", "5", "--out", "x"], "--heartbeat-timeout is for many processes"),
    ],
    ids=["coordinator alone", "no coordinator", "both ways", "no out", "heartbeat alone"],
)
def test_cluster_flags_are_checked(capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        cli.parse_args(["--synthetic", *args])
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(coordinator="localhost", num_processes=2, process_id=0), "must be HOST:PORT"),
        (dict(coordinator="localhost:1", num_processes=0, process_id=0), "num_processes=0"),
        (dict(coordinator="localhost:1", num_processes=2, process_id=2), "process_id=2 must be an integer from 0 to"),
        (dict(auto=True, heartbeat_timeout=0), "heartbeat_timeout=0"),
    ],
)
def test_cluster_values_are_checked(values, message):
    from jaxreg.distributed import Cluster, DistributedError

    with pytest.raises(DistributedError, match=message):
        Cluster(**values)


@pytest.mark.process
def test_distributed_outside_a_cluster_says_so(tmp_path):
    """--distributed where JAX detects no cluster: exit 2 naming the cause, at once, nothing written."""
    result = subprocess.run(
        [sys.executable, SWEEP, "--synthetic", "--distributed", "--out", "run"],
        cwd=tmp_path,
        env={k: v for k, v in environment().items() if not k.startswith(("SLURM_", "OMPI_"))},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "cannot start the distributed runtime" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
def test_other_data_on_one_process_stops_both(tmp_path):
    """Process 1 reads other data than process 0: both refuse before training, naming process 1."""
    data = write_fake_imdb(tmp_path)
    cluster = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2", "--out", "run", "--no-progress"]
    processes = [
        start(tmp_path / "p0", "--synthetic", *cluster, "--process-id", "0", log="data0"),
        start(tmp_path / "p1", "--data", str(data), *cluster, "--process-id", "1", log="data1"),
    ]
    codes = [finish(p, 120) for p in processes]
    for i, code in enumerate(codes):
        log = text(tmp_path, f"data{i}")
        assert code == 2 and "process(es) [1] read other data than process 0" in log, log[-3000:]
    assert not (tmp_path / "p0" / "run").exists() and list((tmp_path / "p1").iterdir()) == []


def test_agreement_checks_readiness_then_options_then_data():
    """Agreement.check on hand-made records [ready, finished, data digest (32), options digest (32)]."""
    from jaxreg.agreement import Agreement
    from jaxreg.config import SweepError

    records = np.zeros((3, 66), np.uint8)
    records[:, 0] = 1
    Agreement.check(records)
    other_data, other_options = records.copy(), records.copy()
    other_data[2, 2] = 7
    other_options[1, 40] = 7
    Agreement.check(other_data, data=False)  # stage "folder": no data read yet
    with pytest.raises(SweepError, match=r"process\(es\) \[2\] read other data than process 0"):
        Agreement.check(other_data)
    with pytest.raises(SweepError, match=r"process\(es\) \[1\] run other options than process 0"):
        Agreement.check(other_options, data=False)
    other_options[2, 0] = 0
    with pytest.raises(SweepError, match=r"process\(es\) \[2\] of this run cannot start"):
        Agreement.check(other_options)


def test_options_digest_leaves_out_where_the_data_comes_from():
    from jaxreg.agreement import options_digest
    from jaxreg.config import SweepConfig
    from jaxreg.variants import VariantSpec

    config = SweepConfig("c", (VariantSpec("a"),), synthetic=True)
    digest = options_digest(config, 1)
    assert options_digest(config.replace(synthetic=False, data="/elsewhere/imdb.tar.gz"), 1) == digest
    assert options_digest(config.replace(epochs=3), 1) != digest
    assert options_digest(config, 2) != digest  # checkpoints are collectives too


@pytest.mark.process
def test_other_options_on_one_process_stop_both(tmp_path):
    """Process 1 started with another --epochs: both refuse before reading data, naming process 1, nothing written."""
    cluster = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2", "--out", "run", "--no-progress"]
    processes = [
        start(tmp_path / "p0", "--synthetic", *cluster, "--process-id", "0", log="options0"),
        start(tmp_path / "p1", "--synthetic", "--epochs", "3", *cluster, "--process-id", "1", log="options1"),
    ]
    codes = [finish(p, 120) for p in processes]
    for i, code in enumerate(codes):
        log = text(tmp_path, f"options{i}")
        assert code == 2 and "process(es) [1] run other options than process 0" in log, log[-3000:]
    assert not (tmp_path / "p0" / "run").exists() and list((tmp_path / "p1").iterdir()) == []

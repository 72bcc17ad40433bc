"""jaxreg.checkpoint: orbax checkpoints of a run's sharded state, their digest, and saves that fail or never commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxreg import checkpoint, runplan
from jaxreg.data import synthetic_dataset
from jaxreg.errors import SweepError
from jaxreg.runfolder import CHECKPOINT_DIR
from jaxreg.variants import RunSettings, VariantSpec, plan, run

SETTINGS = RunSettings(epochs=2, batch_size=128, eval_batch_size=128)
VARIANTS = [VariantSpec("a", (8,)), VariantSpec("b", (8,), l2=1e-3), VariantSpec("c", (4,))]


@pytest.fixture(scope="module")
def taken():
    """(dataset, run plan, [the snapshot after epoch 1, after epoch 2], the run's history)."""
    ds = synthetic_dataset(n_train=512, n_validation=128, num_words=300, seed=3)
    snapshots = []
    result = run(VARIANTS, ds, SETTINGS, on_epoch=lambda e, row, take: snapshots.append(take()))
    return ds, runplan.plan_run(plan(VARIANTS), ds, SETTINGS, jax.devices()[:1]), snapshots, result.history


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_checkpoint_reads_back_what_was_saved_laid_out_as_the_plan_says(taken, tmp_path):
    _, run_plan, snapshots, _ = taken
    assert checkpoint.save_checkpoint(tmp_path, snapshots[0])
    restored = checkpoint.load_checkpoint(tmp_path, run_plan)
    assert restored.epochs_done == 1 and restored.history == snapshots[0].history
    assert len(restored.plan) == len(snapshots[0].plan) == len(run_plan.buckets)
    for saved, back, planned in zip(snapshots[0].states, restored.states, run_plan.buckets):
        assert jax.tree.structure(saved) == jax.tree.structure(back) and _leaves_equal(saved, back)
        assert all(x.sharding.device_set == set(planned.devices) for x in jax.tree.leaves(back))
    assert all(_leaves_equal(s, b) for s, b in zip(snapshots[0].best, restored.best))
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["1"]
    assert (tmp_path / CHECKPOINT_DIR / "1" / checkpoint.DIGEST_FILE).is_file()


def test_a_resumed_run_equals_the_uninterrupted_one_bit_for_bit(taken, tmp_path):
    """One program on both sides (this process, the same plan): the restored state continues exactly."""
    ds, run_plan, snapshots, history = taken
    checkpoint.save_checkpoint(tmp_path, snapshots[0])
    resumed = run(VARIANTS, ds, SETTINGS, resume=checkpoint.load_checkpoint(tmp_path, run_plan)).history
    for key in history:
        for metric in history[key]:
            np.testing.assert_array_equal(resumed[key][metric], history[key][metric], err_msg=f"{key} {metric}")


def test_a_save_that_fails_before_its_commit_leaves_the_previous_step(taken, tmp_path, monkeypatch):
    """A save stopped at its last moment (just before orbax renames the step into place) never becomes the
    checkpoint: the previous step stays whole and is what a resume reads; the next save cleans up."""
    _, run_plan, snapshots, _ = taken
    writer = checkpoint.Checkpoints(tmp_path)
    assert writer.save(snapshots[0])
    writer.wait()

    def killed(step_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_digest", killed)
    writer.save(snapshots[1])
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.close()
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir())
    assert names[0] == "1" and all(n.startswith("2.orbax-checkpoint-tmp") for n in names[1:]), names
    assert checkpoint.latest_step(tmp_path) == 1
    assert checkpoint.load_checkpoint(tmp_path, run_plan).epochs_done == 1

    again = checkpoint.Checkpoints(tmp_path)  # the next run: its first save replaces the temporary
    assert again.save(snapshots[1])
    again.close()
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["2"]
    assert checkpoint.load_checkpoint(tmp_path, run_plan).epochs_done == 2


def test_a_step_left_uncommitted_by_a_killed_process_is_never_read(taken, tmp_path):
    _, run_plan, snapshots, _ = taken
    checkpoint.save_checkpoint(tmp_path, snapshots[0])
    checkpoint.save_checkpoint(tmp_path / "other", snapshots[1])
    # what a process killed while writing step 2 leaves: its files, under the temporary name
    shutil.copytree(tmp_path / "other" / CHECKPOINT_DIR / "2", tmp_path / CHECKPOINT_DIR / "2.orbax-checkpoint-tmp")
    assert checkpoint.latest_step(tmp_path) == 1
    assert checkpoint.load_checkpoint(tmp_path, run_plan).epochs_done == 1


def test_saving_an_epoch_the_checkpoint_holds_does_nothing(taken, tmp_path):
    _, _, snapshots, _ = taken
    writer = checkpoint.Checkpoints(tmp_path)
    assert writer.save(snapshots[1])
    assert not writer.save(snapshots[1]) and not writer.save(snapshots[0])
    writer.close()
    assert writer.written == 2 and checkpoint.latest_step(tmp_path) == 2


def test_a_checkpoint_of_another_plan_is_one_line(taken, tmp_path):
    ds, _, snapshots, _ = taken
    checkpoint.save_checkpoint(tmp_path, snapshots[0])
    other = runplan.plan_run(plan(VARIANTS[:2]), ds, SETTINGS, jax.devices()[:1])
    with pytest.raises(SweepError) as refused:
        checkpoint.load_checkpoint(tmp_path, other)
    message = str(refused.value)
    assert message.startswith(f"cannot resume from {tmp_path / CHECKPOINT_DIR / '1'}: ") and "\n" not in message
    assert message.endswith("; use --overwrite to start again")


# --- another device count on resume: a whole command, in subprocesses ------------------------------

SWEEP = Path(__file__).resolve().parents[1] / "experiments" / "sweep.py"
# two programs (bigger's widths differ), each whole on one device
DEVICE_RUN = [
    "--synthetic",
    "--variants",
    "original,bigger",
    "--epochs",
    "3",
    "--batch-size",
    "256",
    "--placement",
    "spread",
]
DEVICE_RUN += ["--no-progress", "--no-figures", "--no-tensorboard", "--no-compile-cache"]
# experiments/sweep.py with a Ctrl-C right after epoch 2's history lines (before its checkpoint could be taken)
STOPPED_AFTER_EPOCH_2 = """
import runpy, sys
from jaxreg import live
append = live.LiveLog.epoch
def epoch_then_interrupt(self, e, row):
    append(self, e, row)
    if e + 1 == 2:
        raise KeyboardInterrupt
live.LiveLog.epoch = epoch_then_interrupt
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _sweep(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXREG_DATA", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = os.pathsep.join([str(SWEEP.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])
    head = [sys.executable] + (["-c", script] if script else [])
    return subprocess.run([*head, str(SWEEP), *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.process
def test_a_run_on_two_devices_resumes_on_one_with_the_uninterrupted_history(tmp_path):
    """Placement spread: each program is the same one-device program on either device count (bit for bit)."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    done = _sweep(*DEVICE_RUN, "--devices", "2", "--out", str(whole))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 cpu device(s)" in done.stdout
    interrupted = _sweep(*DEVICE_RUN, "--devices", "2", "--out", str(stopped), script=STOPPED_AFTER_EPOCH_2)
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert "interrupted after epoch 1/3" in interrupted.stderr  # the interrupt saved the last finished epoch
    assert sorted(p.name for p in (stopped / CHECKPOINT_DIR).iterdir()) == ["1"]
    resumed = _sweep(*DEVICE_RUN, "--devices", "1", "--out", str(stopped), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "on 1 cpu device(s)" in resumed.stdout and "resuming after epoch 1" in resumed.stdout
    for name in ("history.jsonl", "summary.csv"):
        assert (stopped / name).read_text() == (whole / name).read_text(), name


@pytest.mark.process
def test_a_sharded_run_is_not_resumed_on_another_device_count(tmp_path):
    out = tmp_path / "run"
    swaps = {"spread": "shard", "original,bigger": "original,smaller"}  # one program of two variants, sharded
    sharded = [swaps.get(a, a) for a in DEVICE_RUN]
    interrupted = _sweep(*sharded, "--devices", "2", "--out", str(out), script=STOPPED_AFTER_EPOCH_2)
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    refused = _sweep(*sharded, "--devices", "1", "--out", str(out), "--resume")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert "programs sharded over 2 device(s), now 1; pass --devices 2" in lines[0]

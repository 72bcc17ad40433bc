"""jaxreg.checkpoint: orbax checkpoints of a run's sharded state, their digest, and saves that fail or never commit."""

from __future__ import annotations

import shutil

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

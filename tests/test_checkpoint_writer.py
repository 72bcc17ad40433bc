"""checkpoint.CheckpointWriter: checkpoints written on a thread hold the snapshot as it was when submitted."""

from __future__ import annotations

import flax.serialization
import numpy as np
import pytest

from jaxreg import runfolder
from jaxreg import variants as V
from jaxreg.checkpoint import CHECKPOINT_FILE, CheckpointWriter, checkpoint_bytes


def snapshot(epochs_done: int, value: float) -> V.RunSnapshot:
    params = {"hidden_0": {"kernel": np.full((1, 1, 300, 64), value, np.float32)}}
    return V.RunSnapshot(epochs_done, [{"params": params}], {("a", 0): {"loss": [value] * epochs_done}}, [], [params])


def read(folder):
    return flax.serialization.msgpack_restore(runfolder.verified((folder / CHECKPOINT_FILE).read_bytes()))


def test_writes_in_order_what_was_submitted(tmp_path):
    written = []
    writer = CheckpointWriter(tmp_path, then=written.append)
    first = snapshot(1, 1.0)
    writer.submit(first)
    first.states[0]["params"]["hidden_0"]["kernel"][...] = -5.0  # a later epoch reusing the buffer
    writer.wait()
    assert written == [1] and writer.written == 1
    saved = read(tmp_path)
    assert saved["epochs_done"] == 1
    np.testing.assert_array_equal(saved["states"]["0"]["params"]["hidden_0"]["kernel"], np.full((1, 1, 300, 64), 1.0))
    writer.submit(snapshot(2, 2.0))
    writer.submit(snapshot(3, 3.0))  # waits for the write before
    writer.wait()
    assert written == [1, 2, 3]
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == checkpoint_bytes(snapshot(3, 3.0))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_is_raised_by_wait_and_not_reported_written(tmp_path):
    written = []
    writer = CheckpointWriter(tmp_path / "missing", then=written.append)
    writer.submit(snapshot(1, 1.0))
    with pytest.raises(OSError):
        writer.wait()
    assert written == [] and writer.written is None
    writer.wait()  # raised once

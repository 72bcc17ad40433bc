"""checkpoint.CheckpointWriter: checkpoints written on a thread hold the snapshot as it was when submitted."""

from __future__ import annotations

import functools
import signal
import threading

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import runfolder
from jaxreg import variants as V
from jaxreg.checkpoint import CHECKPOINT_FILE, CheckpointWriter, checkpoint_bytes, save_checkpoint


def snapshot(epochs_done: int, value: float) -> V.RunSnapshot:
    params = {"hidden_0": {"kernel": np.full((1, 1, 300, 64), value, np.float32)}}
    return V.RunSnapshot(epochs_done, [{"params": params}], {("a", 0): {"loss": [value] * epochs_done}}, [], [params])


def read(folder):
    return flax.serialization.msgpack_restore(runfolder.verified((folder / CHECKPOINT_FILE).read_bytes()))


@functools.partial(jax.jit, donate_argnums=0)
def _overwrite(buffer, value):
    return jnp.full_like(buffer, value)


def test_a_later_epoch_donating_the_buffers_does_not_change_what_is_written(tmp_path):
    """As in variants.run: the snapshot holds jax.device_get's views of device buffers, which the
    next epochs may donate while the thread writes; JAX then leaves those buffers alone."""
    kernel = jnp.full((1, 1, 3000, 256), 1.0, jnp.float32)
    params = {"hidden_0": {"kernel": kernel}}
    taken = V.RunSnapshot(
        1, jax.device_get([{"params": params}]), {("a", 0): {"loss": [1.0]}}, [], jax.device_get([params])
    )
    gate = threading.Event()  # the thread writes only after the donations were dispatched and done
    writer = CheckpointWriter(tmp_path, save=lambda folder, snap: (gate.wait(), save_checkpoint(folder, snap)))
    writer.submit(taken)
    kernel = _overwrite(kernel, -5.0)  # the next epoch, donating the buffer the snapshot views
    kernel = _overwrite(kernel, -6.0).block_until_ready()
    del taken
    gate.set()
    writer.wait()
    saved = read(tmp_path)
    np.testing.assert_array_equal(saved["states"]["0"]["params"]["hidden_0"]["kernel"], np.full((1, 1, 3000, 256), 1.0))
    np.testing.assert_array_equal(saved["best"]["0"]["hidden_0"]["kernel"], np.full((1, 1, 3000, 256), 1.0))
    assert float(kernel[0, 0, 0, 0]) == -6.0


def test_writes_in_order_what_was_submitted(tmp_path):
    written = []
    writer = CheckpointWriter(tmp_path, then=written.append)
    writer.submit(snapshot(1, 1.0))
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


def test_wait_interrupted_by_sigint_still_waits_for_the_write_next_time(tmp_path):
    """A KeyboardInterrupt during `wait` (SIGINT to the main thread) leaves the write pending, so the
    next `wait` blocks until it is done (Thread.join, in Python 3.11, then returned at once)."""
    gate = threading.Event()
    written = []
    writer = CheckpointWriter(
        tmp_path, then=written.append, save=lambda folder, snap: (gate.wait(), save_checkpoint(folder, snap))
    )
    writer.submit(snapshot(1, 1.0))
    main = threading.main_thread().ident
    threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        writer.wait()
    threading.Timer(0.3, gate.set).start()  # the write finishes only after the next wait has begun
    writer.wait()
    assert written == [1] and writer.written == 1 and (tmp_path / CHECKPOINT_FILE).is_file()

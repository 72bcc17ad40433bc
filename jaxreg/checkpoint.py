"""The resume checkpoint: every bucket's TrainState and the history so far, in one checksummed file.

Format (CHECKPOINT_FORMAT 3): `runfolder.with_checksum` of a flax msgpack of {format,
epochs_done, history (JSON text), plan (JSON text: each bucket's widths, optimizer, config
names and seeds), states {bucket index: state dict}, best {bucket index: the parameters of
each variant's best epoch so far, shaped like the state's params}}. Written atomically after
an epoch; read back only into the structure the run's plan (`runplan.RunPlan`) gives. A
finished run deletes it unless asked to keep it (`run_sweep(keep_checkpoint=True)`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import flax.serialization
import jax

from jaxreg import fileio, msgpack_stream, runfolder
from jaxreg import variants as V
from jaxreg.errors import SweepError
from jaxreg.runfolder import CHECKPOINT_FILE
from jaxreg.runplan import RunPlan
from jaxreg.train import init_state

CHECKPOINT_FORMAT = 3  # 3: with the best-epoch parameters; 2 (without them) and 1 (no checksum) are refused


def save_checkpoint(folder: Path, snapshot: V.RunSnapshot) -> Path:
    """Atomically write the snapshot: states via flax msgpack, history as JSON text, behind a checksum.

    Streamed (`msgpack_stream.pieces`, `runfolder.write_checksummed`): the arrays go from the
    snapshot to the file, hashed on the way, never as a serialized copy in memory; the bytes
    equal `checkpoint_bytes(snapshot)`. Building them whole (flax's msgpack_serialize) held
    250-350 MB more at the peak for the book preset's ~135 MB checkpoint."""
    path = folder / CHECKPOINT_FILE
    with fileio.atomic_file(path) as f:
        runfolder.write_checksummed(f, msgpack_stream.pieces(_payload(snapshot)))
    return path


def checkpoint_bytes(snapshot: V.RunSnapshot) -> bytes:
    """The checkpoint file's bytes (see the module docstring)."""
    return runfolder.with_checksum(flax.serialization.msgpack_serialize(_payload(snapshot)))


def _payload(snapshot: V.RunSnapshot) -> dict:
    history = [{"name": n, "seed": s, "metrics": m} for (n, s), m in snapshot.history.items()]
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epochs_done": snapshot.epochs_done,
        "history": json.dumps(history),
        "plan": json.dumps(snapshot.plan),  # bucket layout, checked by variants.run on resume
        "states": {str(i): flax.serialization.to_state_dict(s) for i, s in enumerate(snapshot.states)},
        "best": {str(i): flax.serialization.to_state_dict(b) for i, b in enumerate(snapshot.best)},
    }
    return payload


class CheckpointWriter:
    """Writes checkpoints on a background thread, one at a time, so that writing one overlaps the next epoch.

    Serializing, checksumming and writing a run's states (~150 MB for the book preset, with `bigger`)
    took ~0.5-2 s per epoch on a 2-core CPU, during which the devices sat idle. `submit` waits
    for the previous write, then hands the snapshot to a thread. Its arrays are not copied: on
    CPU `jax.device_get` returns read-only views of the device buffers, and while such a view
    lives JAX does not donate its buffer to a later epoch (it copies instead), so the file holds
    the submitted values (tests/test_checkpoint_writer.py); the file is written from them
    directly (`save_checkpoint`), with no serialized copy in memory. `then(epochs_done)` runs
    on that thread after the file is in place (written by `save`, default `save_checkpoint`).
    `wait` blocks until the last write is done and raises its error, if any, in the caller's
    thread (a KeyboardInterrupt too); `submit` raises the previous write's. Call `wait` before reading,
    deleting or replacing the checkpoint.
    """

    def __init__(self, folder: Path, then: Callable[[int], None] | None = None, save: Callable = save_checkpoint):
        self.folder, self.then, self.save = Path(folder), then, save
        self.written = None  # epochs_done of the last completed write
        self._thread: threading.Thread | None = None
        self._done = threading.Event()  # set by the thread when it has finished with everything
        self._error: BaseException | None = None

    def submit(self, snapshot: V.RunSnapshot) -> None:
        self.wait()  # one write at a time: the previous one's bytes are gone before the next are made
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._write, args=([snapshot], self._done), name="jaxreg-checkpoint", daemon=True
        )
        del snapshot
        self._thread.start()

    def _write(self, job: list, done: threading.Event) -> None:
        try:
            snapshot = job.pop()
            self.save(self.folder, snapshot)
            epochs_done = snapshot.epochs_done
            del snapshot
            if self.then is not None:
                self.then(epochs_done)
            self.written = epochs_done
        except BaseException as e:  # noqa: BLE001  (raised in the caller's thread by wait)
            self._error = e
        finally:
            done.set()

    def wait(self) -> None:
        if self._thread is not None:
            # Not Thread.join: in Python 3.11 a KeyboardInterrupt (SIGINT) that interrupts join()
            # marks a thread still running as ended, so the next join returned at once while the
            # write went on (a run interrupted right after its last checkpoint said it held the
            # epoch before). An interrupted Event.wait leaves the event as it was.
            self._done.wait()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _state_targets(run_plan: RunPlan) -> list:
    """Per bucket: (abstract TrainState of one variant, leading axes [seeds, padded configs]), as variants.run builds it
    from the same plan (each bucket's step config and padded configs, on its devices)."""
    targets = []
    for planned in run_plan.buckets:
        run, bucket = planned.execution, planned.bucket
        one = jax.eval_shape(
            lambda c=run.step, w=bucket.widths: init_state(jax.random.key(0), c, run_plan.num_words, w)[0]
        )
        targets.append((one, (len(bucket.seeds), run.n_configs)))
    return targets


def _restored(target, saved, lead: tuple, bucket: int):
    """`saved` (a state dict) in the structure of `target` (one variant's), checked to be `lead` x its shapes."""
    tree = flax.serialization.from_state_dict(target, saved)
    for want, got in zip(jax.tree.leaves(target), jax.tree.leaves(tree)):
        if tuple(got.shape) != lead + tuple(want.shape) or got.dtype != want.dtype:
            raise ValueError(
                f"bucket {bucket}: saved array {got.shape} {got.dtype}, expected {lead + want.shape} {want.dtype}"
            )
    return tree


def read_checkpoint(folder: Path) -> bytes:
    """The checkpoint file's bytes as written (checked by `load_checkpoint`); SweepError if unreadable."""
    path = folder / CHECKPOINT_FILE
    try:
        return path.read_bytes()
    except OSError as e:
        raise SweepError(f"cannot resume from {path}: {e}; use --overwrite to start again") from e


def load_checkpoint(folder: Path, run_plan: RunPlan, data: bytes | None = None) -> V.RunSnapshot:
    """Read a checkpoint back into a RunSnapshot, checking its checksum and its structure against the run's plan.

    data: the file's bytes when already read (`read_checkpoint`; in a run of many processes,
    process 0 reads them and sends them to the others, whose hosts may not see the folder)."""
    path = folder / CHECKPOINT_FILE
    try:
        payload = runfolder.verified(path.read_bytes() if data is None else data)
    except runfolder.ChecksumMismatch as e:
        raise SweepError(f"checkpoint {path} is corrupt (checksum mismatch); use --overwrite to start again") from e
    except runfolder.NoChecksum as e:
        raise SweepError(
            f"checkpoint {path} has no checksum (an older jaxreg's format, or damaged); use --overwrite to start again"
        ) from e
    except OSError as e:
        raise SweepError(f"cannot resume from {path}: {e}; use --overwrite to start again") from e
    try:
        saved = flax.serialization.msgpack_restore(payload)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        states, bests = [], []
        targets = _state_targets(run_plan)
        if len(saved["states"]) != len(targets) or len(saved["best"]) != len(targets):
            raise ValueError(f"{len(saved['states'])} buckets saved, this sweep has {len(targets)}")
        for i, (target, lead) in enumerate(targets):
            state = _restored(target, saved["states"][str(i)], lead, i)
            states.append(state)
            bests.append(_restored(target.params, saved["best"][str(i)], lead, i))
        history = {(h["name"], h["seed"]): h["metrics"] for h in json.loads(saved["history"])}
        expected = set(run_plan.keys)
        if set(history) != expected:
            raise ValueError("the saved history has other variants or seeds")
        return V.RunSnapshot(int(saved["epochs_done"]), states, history, json.loads(saved["plan"]), bests)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"cannot resume from {path}: {e}; use --overwrite to start again") from e

"""The resume checkpoint: an orbax-checkpoint directory of every bucket's TrainState, best parameters and history.

Layout (CHECKPOINT_FORMAT 4), in the run folder's `checkpoint/` (`runfolder.CHECKPOINT_DIR`):

  checkpoint/<epochs_done>/state/    the arrays, {"states": {bucket: state dict}, "best": {bucket: params}},
                                     saved by orbax as the sharded jax.Arrays they are: each process
                                     writes the shards it holds (tensorstore, OCDBT), nothing is gathered
  checkpoint/<epochs_done>/meta/     JSON: format, epochs_done, history, plan and any other field of the
                                     RunSnapshot that is not an array (`_META_ENCODERS`)
  checkpoint/<epochs_done>/jaxreg-sha256.json   sha256 of every file above (`DIGEST_FILE`)

A run in waves (`RunPlan.waves`) saves the wave in progress: its buckets' arrays, every variant's
history and the wave's index (meta "wave", "waves": `RunSnapshot`), at step wave x WAVE_STEPS +
epochs done in the wave (`step_of`), so that steps grow through the waves.

Saves are orbax's asynchronous ones (`Checkpoints`, an `ocp.CheckpointManager` keeping one step):
`save` returns once the arrays are on the host and the files are written while the next epoch
trains. orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when every process
has written its part, then deletes the older step: a save killed at any moment leaves the previous
step whole, and an unrenamed temporary is never read (and is removed by the next run). Orbax and
tensorstore keep no checksums of what they wrote, so flipped bytes in an array file would load
silently: process 0 hashes the step's files just before orbax renames it (its
post-finalization callback) and `load_checkpoint` refuses a step whose files do not match.
A finished run deletes the directory unless asked to keep it (`run_sweep(keep_checkpoint=True)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import flax.serialization
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg import variants as V
from jaxreg.errors import SweepError
from jaxreg.runfolder import CHECKPOINT_DIR, checkpoint_steps
from jaxreg.runplan import RunPlan
from jaxreg.specs import MAX_EPOCHS
from jaxreg.train import init_state

CHECKPOINT_FORMAT = 4  # 4: an orbax directory; 3 and older (checkpoint.msgpack) are not read
WAVE_STEPS = MAX_EPOCHS + 1  # a run in waves: steps wave * WAVE_STEPS + epochs done (one wave: the epochs done)
DIGEST_FILE = "jaxreg-sha256.json"
_ARRAY_FIELDS = ("states", "best")  # RunSnapshot's array fields; every other field is JSON metadata
_UNHASHED = ("commit_success.txt", "_CHECKPOINT_METADATA")  # orbax's own step files, (re)written around the rename

# RunSnapshot fields that JSON cannot hold as they are: (to JSON, from JSON); the others go as they are.
_META_ENCODERS = {
    "history": (
        lambda h: [{"name": n, "seed": s, "metrics": m} for (n, s), m in h.items()],
        lambda rows: {(r["name"], r["seed"]): r["metrics"] for r in rows},
    ),
}


def _ocp():
    """orbax.checkpoint, imported when a checkpoint is first used (it takes a second); its INFO logging off."""
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.WARNING)
    return ocp


def step_of(snapshot: V.RunSnapshot) -> int:
    """The snapshot's checkpoint step: its epochs done, after wave x WAVE_STEPS in a run in waves."""
    return snapshot.wave * WAVE_STEPS + snapshot.epochs_done


def epochs_of(step: int) -> int:
    """The epochs done (in its wave) of a checkpoint step."""
    return step % WAVE_STEPS


def checkpoint_dir(folder: Path) -> Path:
    return Path(folder) / CHECKPOINT_DIR


def _meta(snapshot: V.RunSnapshot) -> dict:
    """The snapshot's non-array fields as JSON values, with the format."""
    meta = {"format": CHECKPOINT_FORMAT}
    for field in dataclasses.fields(snapshot):
        if field.name not in _ARRAY_FIELDS:
            value = getattr(snapshot, field.name)
            meta[field.name] = _META_ENCODERS[field.name][0](value) if field.name in _META_ENCODERS else value
    return meta


def _arrays(snapshot: V.RunSnapshot) -> dict:
    """The snapshot's arrays as nested dicts (flax state dicts), the jax.Arrays themselves (no copy, no gather)."""
    return {
        "states": {str(i): flax.serialization.to_state_dict(s) for i, s in enumerate(snapshot.states)},
        "best": {str(i): flax.serialization.to_state_dict(b) for i, b in enumerate(snapshot.best)},
    }


class Checkpoints:
    """A run's checkpoints in `checkpoint/`, saved asynchronously by orbax, one at a time (every process calls alike).

    `save(snapshot)` waits for the previous save to finish, then starts this one and returns once
    its arrays are on the host. `written` is the epochs_done of the last save known to be complete;
    `then(epochs_done)` runs in the caller's thread when a save is known complete (by `save`, `poll` or
    `wait`). `wait` blocks until the last save is complete and raises its error, if any.
    """

    def __init__(self, folder: Path, then: Callable[[int], None] | None = None):
        self.root, self.then = checkpoint_dir(folder).absolute(), then
        self.written: int | None = None
        self._manager = None
        self._pending: int | None = None  # epochs_done of a save started and not yet known complete

    def _open(self):
        if self._manager is None:
            ocp = _ocp()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=1,  # the older step is deleted only after the new one is renamed into place
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,  # what a killed save left
                async_options=ocp.AsyncOptions(post_finalization_callback=self._digest_pending),
            )
            self._manager = ocp.CheckpointManager(self.root, options=options, item_names=("state", "meta"))
        return self._manager

    def save(self, snapshot: V.RunSnapshot) -> bool:
        """Start saving the snapshot (not when the directory holds its epoch or a later one already); whether it did."""
        ocp = _ocp()
        manager = self._open()
        self.wait()
        step = step_of(snapshot)
        if (manager.latest_step() or 0) >= step:
            return False
        self._pending = step
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_arrays(snapshot)), meta=ocp.args.JsonSave(_meta(snapshot))
        )
        manager.save(step, args=args, force=True)
        return True

    def _digest_pending(self) -> None:
        """orbax's post-finalization callback (process 0, background thread): hash the step before it is renamed."""
        step = self._pending
        temporary = [p for p in self.root.glob(f"{step}.orbax-checkpoint-tmp*") if p.is_dir()]
        write_digest(temporary[0] if temporary else self.root / str(step))

    def saving(self) -> bool:
        """Whether a save is still being written (this process's view; no waiting, no collective)."""
        return self._manager is not None and self._manager.is_saving_in_progress()

    def poll(self) -> None:
        """Note a save that has completed meanwhile (status.json follows), without waiting."""
        if self._pending is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Block until the last save is complete (then `then` runs); raises its error, if any."""
        if self._manager is None:
            return
        pending = self._pending
        try:
            self._manager.wait_until_finished()  # raises the background save's error, if any
        finally:
            self._pending = None  # read by _digest_pending until the save is over
        if pending is not None:
            self.written = epochs_of(pending)
            if self.then is not None:
                self.then(epochs_of(pending))

    def close(self, wait: bool = True) -> None:
        """Finish the last save (unless not `wait`: a run of many processes that lost one, whose save would wait
        for it at a barrier until the runtime aborts the process), then let the manager go."""
        if self._manager is not None and wait:
            try:
                self.wait()
            finally:
                self._manager.close()
        self._manager = None


def save_checkpoint(checkpoints: Checkpoints | Path, snapshot: V.RunSnapshot) -> bool:
    """Start saving `snapshot` with `checkpoints` (see `Checkpoints.save`); given a run folder, save it there and
    wait until it is complete. Whether a save was started (not when the checkpoint holds that epoch already)."""
    if isinstance(checkpoints, Checkpoints):
        return checkpoints.save(snapshot)
    writer = Checkpoints(Path(checkpoints))
    try:
        return writer.save(snapshot)
    finally:
        writer.close()


def _files(step_dir: Path) -> list[str]:
    """The step's files to hash, relative to it, sorted ("/"-separated)."""
    found = []
    for root, _, files in os.walk(step_dir):
        for name in files:
            rel = Path(root, name).relative_to(step_dir).as_posix()
            if name != DIGEST_FILE and rel not in _UNHASHED:
                found.append(rel)
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digest(step_dir: Path) -> None:
    """Write DIGEST_FILE into a step directory: the sha256 of each of its files."""
    files = {rel: _sha256(step_dir / rel) for rel in _files(step_dir)}
    (step_dir / DIGEST_FILE).write_text(json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True))


def verify(step_dir: Path) -> None:
    """SweepError (one line) unless every file DIGEST_FILE lists is there with its sha256."""
    try:
        files = json.loads((step_dir / DIGEST_FILE).read_text())["files"]
        bad = [
            rel
            for rel, want in sorted(files.items())
            if not (step_dir / rel).is_file() or _sha256(step_dir / rel) != want
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SweepError(
            f"checkpoint {step_dir} is corrupt or unreadable (its {DIGEST_FILE}: {e}); use --overwrite to start again"
        ) from e
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise SweepError(
            f"checkpoint {step_dir} is corrupt or unreadable ({bad[0]}{more} missing or not as written); "
            "use --overwrite to start again"
        )


def latest_step(folder: Path) -> int | None:
    """The newest complete step in a run folder's checkpoint directory (orbax renamed it into place), None if none."""
    return max(checkpoint_steps(folder), default=None)


def _bucket_targets(run_plan: RunPlan, wave: int = 0) -> list:
    """Per bucket of the wave: the abstract state dict of its TrainState [seeds, padded configs, ...] on the plan's
    devices, sharded over the configs as `variants.BucketProgram` places it."""
    targets = []
    for planned in run_plan.waves[wave].buckets:
        run, bucket = planned.execution, planned.bucket
        one = jax.eval_shape(
            lambda c=run.step, w=bucket.widths: init_state(jax.random.key(0), c, run_plan.num_words, w)[0]
        )
        sharding = NamedSharding(V.variant_mesh(planned.devices), P(None, "variant"))
        lead = (len(bucket.seeds), run.n_configs)
        targets.append(jax.tree.map(lambda x: jax.ShapeDtypeStruct(lead + x.shape, x.dtype, sharding=sharding), one))
    return targets


def load_checkpoint(folder: Path, run_plan: RunPlan, step: int | None = None, check: bool = True) -> V.RunSnapshot:
    """The checkpoint's newest step (or `step`) as a RunSnapshot whose arrays are placed as the run plan places them.

    check: verify the files against DIGEST_FILE first (process 0 does; the others restore what it checked).
    SweepError, one line, for a missing, damaged or mismatched checkpoint."""
    step = latest_step(folder) if step is None else step
    root = checkpoint_dir(folder)
    if step is None:
        raise SweepError(f"cannot resume from {root}: it holds no complete checkpoint; use --overwrite to start again")
    step_dir = root / str(step)
    if check:
        verify(step_dir)
    ocp = _ocp()
    try:
        with ocp.CheckpointManager(root.absolute(), item_names=("state", "meta")) as manager:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            saved_format = meta.get("format") if isinstance(meta, dict) else meta
            if saved_format != CHECKPOINT_FORMAT:
                raise ValueError(f"format {saved_format!r}, expected {CHECKPOINT_FORMAT}")
            if len(meta["plan"]) != len(run_plan.buckets):
                raise ValueError(f"{len(meta['plan'])} buckets saved, this sweep has {len(run_plan.buckets)}")
            wave = int(meta.get("wave", 0))  # the wave in progress of a run in waves
            if not 0 <= wave < len(run_plan.waves):
                raise ValueError(f"saved in wave {wave + 1}, this sweep has {len(run_plan.waves)} wave(s)")
            targets = _bucket_targets(run_plan, wave)
            abstract = {
                "states": {str(i): flax.serialization.to_state_dict(t) for i, t in enumerate(targets)},
                "best": {str(i): flax.serialization.to_state_dict(t.params) for i, t in enumerate(targets)},
            }
            saved = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        return _snapshot(meta, saved, targets, run_plan)
    except SweepError:
        raise
    except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many kinds; each is one line here)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SweepError(f"cannot resume from {step_dir}: {first}; use --overwrite to start again") from e


def _snapshot(meta: dict, saved: dict, targets: list, run_plan: RunPlan) -> V.RunSnapshot:
    """The RunSnapshot of a checkpoint's metadata and restored arrays, checked against the run's plan."""
    fields = {}
    for field in dataclasses.fields(V.RunSnapshot):
        if field.name in _ARRAY_FIELDS or field.name not in meta:
            continue
        value = meta[field.name]
        fields[field.name] = _META_ENCODERS[field.name][1](value) if field.name in _META_ENCODERS else value
    fields["history"] = {(n, s): m for (n, s), m in fields["history"].items()}
    if set(fields["history"]) != set(run_plan.keys):
        raise ValueError("the saved history has other variants or seeds")
    fields["states"] = [flax.serialization.from_state_dict(t, saved["states"][str(i)]) for i, t in enumerate(targets)]
    fields["best"] = [
        flax.serialization.from_state_dict(t.params, saved["best"][str(i)]) for i, t in enumerate(targets)
    ]
    return V.RunSnapshot(**fields)


def remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint directory (a finished run's)."""
    import shutil

    root = checkpoint_dir(folder)
    if root.is_dir():
        shutil.rmtree(root)

"""Before training, the processes of one run agree that each can go on: `Agreement` (collectives).

Beside `jaxreg.distributed`, whose `exchange` it uses; `jaxreg.sweep.run_sweep` holds one per
run. In one process every exchange is local and every check passes unless this process failed.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from jaxreg import distributed, rendezvous
from jaxreg.config import LOCAL_FIELDS, SweepConfig, SweepError

# Fields that are not compared as options: where the data comes from (the data checksum is compared instead).
DATA_FIELDS = (*LOCAL_FIELDS, "synthetic")
_RECORD = 2 + 32 + 32  # ready, finished, sha256 of the data checksum, sha256 of the options


def options_digest(config: SweepConfig, checkpoint_seconds: float) -> bytes:
    """sha256 of what every process must run alike: the resolved config but for its data's location, how
    often it checkpoints (saves are collectives) and the code (jaxreg's version and sources, `rendezvous.code_version`)."""
    options = {k: v for k, v in config.to_dict().items() if k not in DATA_FIELDS}
    text = json.dumps(
        {"config": options, "checkpoint_seconds": checkpoint_seconds, "code": rendezvous.code_version()}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).digest()


class Agreement:
    """The exchanges, before training, in which every process says whether it can go on (collectives).

    Two stages: "folder" right away (process 0 has checked and locked the folder; a finished
    run to reload with --resume ends every process there, before any data is read), then
    "start" (every process has its data, devices and memory checked). Each process sends
    (ready, process 0: finished, sha256 of its data's checksum, sha256 of its options); every
    process gets all of them. A process that fails before a stage still takes part in it
    (`refuse`), so that the others stop there instead of waiting. The options digest
    (`options_digest`) is only computed with many processes.
    """

    STAGES = 2

    def __init__(self, config: SweepConfig | None = None, checkpoint_seconds: float = 0):
        self.stages_done = 0
        self.config, self.checkpoint_seconds = config, checkpoint_seconds

    def __call__(self, ready: bool, finished: bool = False, data_checksum: str | None = None) -> np.ndarray:
        """[processes, 66] uint8 records: ready, finished, the two 32-byte digests (zeros when None or not ready)."""
        self.stages_done += 1
        record = np.zeros(_RECORD, np.uint8)
        record[0], record[1] = ready, finished
        if data_checksum is not None:
            record[2:34] = np.frombuffer(hashlib.sha256(data_checksum.encode()).digest(), np.uint8)
        if ready and self.config is not None and distributed.many():
            record[34:] = np.frombuffer(options_digest(self.config, self.checkpoint_seconds), np.uint8)
        return distributed.exchange(record)

    def refuse(self) -> None:
        """Take part, not ready, in the next stage (the last one any process reaches then)."""
        if self.stages_done < self.STAGES and distributed.many():
            try:
                self(False)
            except Exception:  # the others may be gone already
                pass

    @staticmethod
    def check(records: np.ndarray, data: bool = True) -> None:
        """SweepError naming the processes that cannot go on, that run other options than process 0, or
        (`data`) that read other data than process 0."""
        failed = [i for i, r in enumerate(records) if not r[0]]
        if failed:
            raise SweepError(f"process(es) {failed} of this run cannot start (see their error); no process trains")
        differ = [i for i, r in enumerate(records) if (r[34:] != records[0][34:]).any()]
        if differ:
            raise SweepError(
                f"process(es) {differ} run other options than process 0 (their resolved config, --checkpoint-seconds or "
                "jaxreg's code differs); give every process the same options (only --process-id and paths may differ)"
            )
        differ = [i for i, r in enumerate(records) if (r[2:34] != records[0][2:34]).any()]
        if data and differ:
            raise SweepError(
                f"process(es) {differ} read other data than process 0 (another checksum); every process must read "
                "the same data (the same --data file, or --synthetic)"
            )


def training_note(folder) -> str:
    """The line a process other than 0 prints before training (a collective: every process calls it). It names
    process 0's run folder, the one written, as process 0 has it; a process given another --out says so, since
    its own folder is never written."""
    mine = {"given": str(folder), "absolute": os.path.abspath(folder)}
    sent = json.dumps(mine).encode() if distributed.is_writer() else None
    theirs = json.loads(distributed.broadcast_bytes(sent) or json.dumps(mine))
    note = f"{distributed.describe()}: training with process 0, which writes {theirs['absolute']}"
    if mine["given"] != theirs["given"] and mine["absolute"] != theirs["absolute"]:
        note += f" (this process was given a different --out, {folder}, which it does not use)"
    return note

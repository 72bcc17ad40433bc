"""Files written whole or not at all: `atomic_write`, `atomic_file`, JSON, and the names of a run folder's files.

A reader never sees half a file: the content goes to a temporary file in the same folder,
is flushed to disk, then os.replace'd onto the path. The run folder's file names live here,
at the bottom of the package, because the modules that write those files (`jaxreg.history`,
`jaxreg.summaries`, `jaxreg.sweep`) and those that read or list them (`jaxreg.runfolder`,
`jaxreg.runs`) sit in different layers.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_JSONL = "history.jsonl"
HISTORY_CSV = "history.csv"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
FIGURES_DIR = "figures"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def naming(path) -> Iterator[None]:
    """An OSError raised in the block without a file name (a write() that fails: a full disk) gets `path` as its
    file name, so that the error names the file whose write failed."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


def atomic_write(path, data: bytes | str, *more: bytes) -> Path:
    """Write to a temporary file in the same folder, then os.replace it: readers never see half a file.

    `more`: further bytes written after `data`, as if joined to it (without the copy joining makes)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as f:
        f.write(payload)
        for chunk in more:
            f.write(chunk)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path) -> Iterator[BinaryIO]:
    """A binary file for the new content of `path`, written piece by piece; `path` is replaced when the block ends without error.

    The content goes to a temporary file in the same folder, is flushed to disk, then
    os.replace'd onto `path`; on an error the temporary file is removed and `path` is as before."""
    path = Path(path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with naming(path):
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, value) -> Path:
    return atomic_write(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)

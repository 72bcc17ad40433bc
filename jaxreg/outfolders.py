"""Default run folders: a new `<base>/<YYYY-MM-DD_HH-MM-SS>` per run, and `<base>/LATEST` naming the newest.

Without an explicit output folder, every run gets a folder of its own under `base` (the
command line's `runs/<preset>`), named by its local start time; a run that starts in the
same second as another gets `-2`, `-3`, ... appended. The folder is created with os.mkdir,
which fails when the name exists, so two processes never get the same folder.

`<base>/LATEST` is a one-line text file holding the newest such folder's name, replaced
atomically (a temporary file, then os.replace), so it always names a whole folder. It is not a
symbolic link on purpose: `tensorboard --logdir runs/` follows links and listed the newest run
twice. `latest_folder` reads it (or the `latest` link of an older jaxreg).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jaxreg.errors import SweepError

LATEST = "LATEST"
OLD_LINK = "latest"  # what older versions wrote: a symbolic link
STAMP = "%Y-%m-%d_%H-%M-%S"


def new_folder(base, now: float | None = None) -> Path:
    """Create and return a new, empty `<base>/<local start time>[-N]` folder (the parents too)."""
    base = Path(base)
    stamp = time.strftime(STAMP, time.localtime(now))
    try:
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            folder = base / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
    except OSError as e:
        raise SweepError(f"cannot create a run folder in {base}: {e.strerror or e}; choose a folder with --out") from e
    raise SweepError(f"{base} already has 9,999 folders named {stamp}; choose a folder with --out")


def point_latest(base, folder) -> Path:
    """Make `<base>/LATEST` name `folder` (a folder inside `base`): a one-line text file, replaced atomically."""
    base, name = Path(base), Path(folder).name
    latest, tmp = base / LATEST, base / f".{LATEST}.{os.getpid()}.tmp"
    try:
        tmp.write_text(name + "\n", encoding="utf-8")
        os.replace(tmp, latest)
        if (base / OLD_LINK).is_symlink():  # an older jaxreg's link, which TensorBoard followed
            (base / OLD_LINK).unlink()
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SweepError(f"cannot update {latest}: {e.strerror or e}; pass the run folder with --out") from e
    return latest


def latest_folder(base) -> Path:
    """The folder `<base>/LATEST` names (or an older jaxreg's `<base>/latest` link); SweepError when there is none."""
    base = Path(base)
    latest, old = base / LATEST, base / OLD_LINK
    if latest.is_file():
        folder = base / latest.read_text(encoding="utf-8").strip()
    elif old.is_symlink():
        folder = base / os.readlink(old)
    else:
        raise SweepError(
            f"nothing to resume: {latest} does not exist (no run was started without --out); pass the run folder with --out"
        )
    if not folder.is_dir():
        raise SweepError(
            f"nothing to resume: {latest} names {folder}, which is not a folder; pass the run folder with --out"
        )
    return folder


def restore_latest(base, previous: Path | None) -> None:
    """Point `<base>/LATEST` back at `previous` (None: remove it): for a run that stopped before writing anything."""
    if previous is not None:
        point_latest(base, previous)
    else:
        (Path(base) / LATEST).unlink(missing_ok=True)

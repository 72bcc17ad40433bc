"""Default run folders: a new `<base>/<YYYY-MM-DD_HH-MM-SS>` per run, and `<base>/latest` naming the newest.

Without an explicit output folder, every run gets a folder of its own under `base` (the
command line's `runs/<preset>`), named by its local start time; a run that starts in the
same second as another gets `-2`, `-3`, ... appended. The folder is created with os.mkdir,
which fails when the name exists, so two processes never get the same folder.

`<base>/latest` is a relative symbolic link to the newest such folder, replaced atomically
(a temporary link, then os.replace), so it always names a whole folder. Where symbolic
links cannot be made (some Windows set-ups), `latest` is instead a one-line text file
holding the folder's name; `latest_folder` reads either.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jaxreg.config import SweepError

LATEST = "latest"
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
    """Make `<base>/latest` name `folder` (a folder inside `base`): a symbolic link, else a text file."""
    base, name = Path(base), Path(folder).name
    link, tmp = base / LATEST, base / f".{LATEST}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(name, tmp, target_is_directory=True)
        except (OSError, NotImplementedError):  # no symbolic links here: a text file naming the folder
            tmp.write_text(name + "\n", encoding="utf-8")
        os.replace(tmp, link)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SweepError(f"cannot update {link}: {e.strerror or e}; pass the run folder with --out") from e
    return link


def latest_folder(base) -> Path:
    """The folder `<base>/latest` names; SweepError when there is none."""
    base = Path(base)
    link = base / LATEST
    if link.is_symlink():
        folder = base / os.readlink(link)
    elif link.is_file():
        folder = base / link.read_text(encoding="utf-8").strip()
    else:
        raise SweepError(f"nothing to resume: {link} does not exist (no run was started without --out); pass the run folder with --out")
    if not folder.is_dir():
        raise SweepError(f"nothing to resume: {link} names {folder}, which is not a folder; pass the run folder with --out")
    return folder


def restore_latest(base, previous: Path | None) -> None:
    """Point `<base>/latest` back at `previous` (None: remove it): for a run that stopped before writing anything."""
    if previous is not None:
        point_latest(base, previous)
    else:
        (Path(base) / LATEST).unlink(missing_ok=True)

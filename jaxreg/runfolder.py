"""A run folder's bookkeeping: the manifest of jaxreg's files, the writer's lock, the checks before a run.

manifest.json   {"format": 1, "files": [paths relative to the folder, "/"-separated]}: every file
                jaxreg writes into the folder, the manifest included. A file is recorded (the
                manifest rewritten atomically) *before* it is first written, so the manifest never
                misses one. `remove_recorded` deletes exactly these files and the folders they leave
                empty, never a file the user added; a recorded folder (the checkpoint directory,
                whose files orbax names) is jaxreg's whole and is deleted with everything in it. A
                folder without a manifest is not a jaxreg run folder, or one written by an older jaxreg.
.<name>.lock    beside the run folder, in its parent (`lock_path`), so that two runs creating the same
                new folder exclude each other too. `exclusive` holds an OS lock (flock) on it for a
                whole run and deletes the file when the run ends; the OS releases the lock when the
                process ends, however it ends, so a file left behind by a killed run never blocks
                the next one. It also holds a flock on the run folder itself (its directory, created
                empty if absent and removed again if still empty at the end), which a second run must
                take too: deleting the lock file by hand cannot let a second run into a folder in use.
symbolic links  jaxreg never writes, replaces or deletes through one: a run folder holding a symbolic
                link is refused (`check_no_links`) before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import filelock

from jaxreg.errors import SweepError
from jaxreg.fileio import CONFIG_FILE, STATUS_FILE, read_json, write_json

CHECKPOINT_DIR = "checkpoint"  # an orbax checkpoint directory, its format: jaxreg.checkpoint
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1


class LockError(Exception):
    """The folder's lock cannot be taken: another process holds it (`in_use`), or its file cannot be created."""

    def __init__(self, path: Path, in_use: bool, reason: str = ""):
        self.path, self.in_use, self.reason = path, in_use, reason
        super().__init__(f"{path}: {'held by another process' if in_use else reason}")


# --- manifest ----------------------------------------------------------------------------


def _relative(folder: Path, name) -> str:
    """`name` as a "/"-separated path inside `folder`; ValueError for one that leaves it."""
    path = Path(name)
    if path.is_absolute() and path.is_relative_to(folder.absolute()):
        path = path.relative_to(folder.absolute())
    posix = PurePosixPath(path.as_posix())
    if posix.is_absolute() or ".." in posix.parts or str(posix) in ("", "."):
        raise ValueError(f"{name!s} is not a path inside the run folder")
    return str(posix)


def recorded(folder) -> list[str] | None:
    """The files the manifest lists (sorted), or None when the folder has no manifest."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        files = read_json(path)["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("'files' is not a list of paths")
        return sorted({_relative(folder, f) for f in files})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable {path}: {e}") from e


def record(folder, *names) -> None:
    """Add files (paths relative to `folder`, or inside it) to the manifest, before they are written."""
    folder = Path(folder)
    before = recorded(folder) or []
    files = sorted({*before, MANIFEST_FILE, *(_relative(folder, n) for n in names)})
    if files != before:
        write_json(folder / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "files": files})


def unrecord(folder, *names) -> None:
    """Drop files from the manifest, after they were deleted (so the manifest never misses a file on disk)."""
    folder = Path(folder)
    before = recorded(folder) or []
    gone = {_relative(folder, n) for n in names}
    files = [f for f in before if f not in gone]
    if files != before:
        write_json(folder / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "files": files})


def files_as_recorded(folder) -> list[str]:
    """The folder's files as the manifest names them, sorted: each file's path, but a recorded folder's files
    as that folder's one entry (what `recorded` gives when the manifest misses nothing and lists nothing gone)."""
    folder = Path(folder)
    folders = {f for f in recorded(folder) or [] if (folder / f).is_dir()}
    found = set()
    for p in folder.rglob("*"):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            found.add(next((f for f in folders if rel.startswith(f + "/")), rel))
    return sorted(found | {f for f in folders if not any((folder / f).iterdir())})


def _temporaries(path: Path) -> list[Path]:
    """What fileio.atomic_write leaves of `path` when its process is killed while writing."""
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and p.name.endswith(".tmp")]


def remove_temporaries(folder) -> None:
    """Delete the half-written temporary files of recorded files (a run killed while writing)."""
    folder = Path(folder)
    for name in recorded(folder) or []:
        for tmp in _temporaries(folder / name):
            tmp.unlink(missing_ok=True)


def remove_recorded(folder) -> None:
    """Delete every recorded file (the manifest last), then the sub-folders that leaves empty.

    Files the user added stay, and so does every folder that still holds something. SweepError,
    deleting nothing, when the folder holds a symbolic link (a file through it may be another folder's).
    """
    folder = Path(folder)
    check_no_links(folder, "--out")
    files = recorded(folder) or []
    for name in sorted(files, key=lambda f: f == MANIFEST_FILE):
        path = folder / name
        for tmp in _temporaries(path):
            tmp.unlink(missing_ok=True)
        if path.is_file() or path.is_symlink():
            path.unlink()
        elif path.is_dir():  # a recorded folder (the checkpoint): jaxreg's whole
            shutil.rmtree(path)
    parents = {p for f in files for p in (folder / f).parents if p != folder and folder in p.parents}
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty, or already gone
            parent.rmdir()


# --- lock --------------------------------------------------------------------------------


def lock_path(folder) -> Path:
    """The lock file of a run folder: `.<name>.lock` beside it (symbolic links resolved)."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def exclusive(folder) -> Iterator[Path]:
    """Hold the folder's lock for the block, then delete its file; LockError at once if another process holds it.

    Creates the folder's parent if needed (the lock file lives there). Yields the lock path. The
    file is deleted only while this process holds the lock; a process that opened it meanwhile
    finds, once it gets the lock, that its file is no longer the one at the path, and locks the
    new one instead (`_lock_current_file`), so two processes never both hold "the" lock. The
    folder itself is locked too (`_lock_folder`), so a lock file deleted by hand lets no second
    run in.
    """
    path = lock_path(folder)
    try:
        import fcntl
    except ImportError:  # Windows: filelock's own lock, which deletes its file on release there
        fcntl = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            held = filelock.FileLock(path, timeout=0)
            held.acquire()
        else:
            held = _lock_current_file(path, fcntl)
    except filelock.Timeout:
        raise LockError(path, in_use=True) from None
    except OSError as e:
        raise LockError(path, in_use=False, reason=e.strerror or str(e)) from e
    try:
        with _lock_folder(Path(folder), fcntl, path):
            yield path
    finally:
        if fcntl is None:
            held.release()
        else:
            _unlink_if_same(path, held)  # still holding the lock: see above
            os.close(held)


def _unlink_if_same(path: Path, fd: int) -> None:
    """Delete the file at `path` if it is the one open as `fd` (not a new lock file of another run)."""
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.lstat(path)):
            path.unlink()


@contextlib.contextmanager
def _lock_folder(folder: Path, fcntl, lock: Path) -> Iterator[None]:
    """Hold a flock on the run folder's directory for the block (created if absent, removed after if still empty)."""
    if fcntl is None or (folder.exists() and not folder.is_dir()):  # not a folder: check_folder refuses it
        yield
        return
    created = False
    try:
        if not folder.exists():
            folder.mkdir()
            created = True
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise LockError(lock, in_use=False, reason=e.strerror or str(e)) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockError(lock, in_use=True) from None
        except OSError:  # a file system that cannot lock folders (NFS emulates flock by fcntl): the lock file alone
            pass
        yield
    finally:
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                folder.rmdir()


def _lock_current_file(path: Path, fcntl) -> int:
    """An open descriptor holding flock on the file now at `path` (created if absent); filelock.Timeout if taken."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise filelock.Timeout(str(path)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder deleted it after we opened it: lock the file now at the path


def lock_held(folder) -> bool:
    """Whether a process holds the folder's lock now (a run is writing it); takes nothing, creates nothing.

    Asks for shared locks on the lock file and the folder without waiting, on read-only handles, and
    gives them back at once; False where neither exists or locks are unsupported (no fcntl).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no way to ask without taking it
        return False
    return any(_flock_held(p, fcntl) for p in (lock_path(folder), Path(folder)))


def _flock_held(path: Path, fcntl) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:  # a shared request conflicts with the writer's exclusive lock, and works on a read-only handle on NFS too
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no locks here: nothing tells
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# --- checks before a run uses a folder --------------------------------------------------


def folder_state(folder: Path) -> str:
    """ "new" (absent or empty), "foreign" (something else), "legacy" (an older jaxreg's run, no
    manifest), "unfinished" or "finished" run folder."""
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        return "foreign"
    if not (folder / MANIFEST_FILE).is_file():
        if (folder / CONFIG_FILE).is_file():
            return "legacy"
        return "new" if not any(folder.iterdir()) else "foreign"
    status = folder / STATUS_FILE
    try:
        finished = status.is_file() and read_json(status).get("state") == "finished"
    except (OSError, ValueError):
        finished = False
    return "finished" if finished else "unfinished"


def check_writable(folder: Path) -> None:
    """SweepError unless `folder` can be a run folder: not a file system's root, names the file system
    accepts, and the folder, or the nearest existing folder above it, a writable folder."""
    if not folder.resolve().name:
        raise SweepError(f"{folder} is the root of the file system, not a run folder: choose another --out")
    parent = folder
    try:
        while not parent.exists():
            parent = parent.parent
    except OSError as e:  # a name too long, a loop of links
        raise SweepError(f"cannot use the output folder {folder}: {e.strerror or e}; choose another --out") from None
    if not parent.is_dir():
        raise SweepError(f"cannot create the output folder {folder}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SweepError(f"cannot write the output folder {folder}: no write permission on {parent}")
    too_long = [p for p in folder.parts if len(os.fsencode(p)) > _name_max(parent)]
    if too_long:
        raise SweepError(
            f"cannot use the output folder {folder}: a name in it is too long for the file system ({too_long[0][:40]}...)"
        )


def _name_max(folder: Path) -> int:
    """The longest file name the file system of `folder` accepts (the lock file's name adds 6 to the folder's)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX") - len(".lock") - 1
    except (OSError, ValueError, AttributeError):
        return 255 - 6


def symbolic_links(folder: Path) -> list[str]:
    """The symbolic links inside `folder` (paths relative to it, sorted), links to folders not followed."""
    if not folder.is_dir():
        return []
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def check_no_links(folder: Path, what: str = "run folder") -> None:
    """SweepError (one line) when `folder` holds a symbolic link: jaxreg never writes, replaces or deletes through one."""
    links = symbolic_links(folder)
    if links:
        target = os.readlink(folder / links[0])
        more = f" and {len(links) - 1} more" if len(links) > 1 else ""
        raise SweepError(
            f"{folder} holds a symbolic link, {links[0]} -> {target}{more}, which jaxreg never writes through; "
            f"remove it or choose another {what}"
        )


def check_folder(folder: Path, settings: Mapping, resume: bool, overwrite: bool, ignored: Sequence[str] = ()) -> str:
    """The folder's state (see folder_state), or SweepError when the run may not use it as asked.

    `settings`: the run's config as config.json records it (`SweepConfig.to_dict()`), compared on
    resume but for the fields `ignored` (`config.LOCAL_FIELDS`: where the data is, not what it is)."""
    if resume and overwrite:
        raise SweepError("--resume and --overwrite contradict each other: pass one of them")
    state = folder_state(folder)
    if state == "foreign":
        raise SweepError(f"{folder} exists and is not a jaxreg run folder (no {MANIFEST_FILE}); choose another --out")
    if state == "legacy":
        raise SweepError(
            f"{folder} holds a run of an older jaxreg (no {MANIFEST_FILE}), which this version neither resumes "
            "nor overwrites; choose another --out (jaxreg.runs.load_run still reads it)"
        )
    if state == "finished" and not (resume or overwrite):
        raise SweepError(f"{folder} holds a finished run; pass --overwrite to replace it, or choose another --out")
    if state == "unfinished" and not (resume or overwrite):
        raise SweepError(
            f"{folder} holds an unfinished run ({done_text(folder)}); pass --resume to continue it or --overwrite to restart it"
        )
    check_no_links(folder, "--out")
    if state in ("unfinished", "finished") and resume:
        compare_configs(folder, settings, ignored)
    if state == "unfinished" and resume and not checkpoint_steps(folder):
        done = epochs_done(folder)
        if done:
            raise SweepError(
                f"cannot resume {folder}: {STATUS_FILE} says {done} epoch(s) done but "
                f"{CHECKPOINT_DIR}/ holds no complete checkpoint; use --overwrite to start again"
            )
    if state in ("unfinished", "finished"):
        try:
            recorded(folder)  # overwrite deletes what it lists, resume cleans up after it
        except ValueError as e:
            action = "overwrite" if overwrite else "resume"
            raise SweepError(
                f"cannot {action} {folder}: {e}; delete the folder yourself or choose another --out"
            ) from e
    return state


def checkpoint_steps(folder: Path) -> list[int]:
    """The complete steps in the run folder's checkpoint directory, sorted: folders named by their epochs
    done (orbax renames a step into place once it is whole; a killed save leaves only a temporary)."""
    root = Path(folder) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def epochs_done(folder: Path) -> int:
    """status.json's epochs_done; 0 without one (a run killed before its first status)."""
    path = folder / STATUS_FILE
    if not path.is_file():
        return 0
    try:
        return int(read_json(path).get("epochs_done", 0))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise SweepError(f"cannot resume {folder}: unreadable {path} ({e}); use --overwrite to start again") from e


def done_text(folder: Path) -> str:
    """'N/M epochs done', from status.json."""
    try:
        status = read_json(folder / STATUS_FILE)
        return f"{status.get('epochs_done', 0)}/{status.get('epochs', '?')} epochs done"
    except (OSError, ValueError):
        return "no epoch done"


def compare_configs(folder: Path, settings: Mapping, ignored: Sequence[str] = ()) -> None:
    """SweepError listing the differences when `settings` (`SweepConfig.to_dict()`) are not those the
    folder's run was started with; the fields `ignored` are not compared."""
    try:
        saved = read_json(folder / CONFIG_FILE)["config"]
    except (OSError, ValueError, KeyError) as e:
        raise SweepError(f"cannot resume {folder}: unreadable {CONFIG_FILE} ({e}); use --overwrite") from e
    now = dict(settings)
    differences = [
        f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in ignored and saved.get(k) != now.get(k)
    ]
    if differences:
        shown = "; ".join(d if len(d) < 160 else d[:157] + "..." for d in differences)
        raise SweepError(
            f"cannot resume {folder}: the config differs from the saved one ({shown}); "
            "repeat the original options, or use --overwrite"
        )

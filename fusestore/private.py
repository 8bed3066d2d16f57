"""Nothing fusestore writes under a store, nor its log, is readable by another uid, whatever the umask.

A store holds every tenant's bytes (blobs and staging files), every name
and hash (the catalog), and a log that names paths and hashes: one open
file under it would hand another uid what the mount's permission checks
refuse. So the store directory is the fence: ``store_directory`` creates it
with mode 0700 and refuses an existing one that group or others may enter,
empty or not (a daemon must not start filling a directory others can read).
Behind the fence, every directory is made 0700 and every file 0600, given
explicitly rather than left to the umask, so that a store whose top
directory is opened up later still shows nobody its contents.

The umask can only take bits away from what is asked for; a directory is
also set to exactly 0700 after it is made, so that a strict umask (0277,
say) cannot lock its owner out of it either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import errors

DIR_MODE = 0o700
FILE_MODE = 0o600
OTHERS = 0o077  # group and other bits: none of them may be set on the store directory


def store_directory(path: Path) -> None:
    """Create the store directory (0700; its missing parents as usual), or check an existing one.

    An existing directory any of whose group or other bits is set is
    refused with ``StoreExposed``, whether or not it holds a store.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    else:
        os.chmod(path, DIR_MODE)
        return
    mode = os.stat(path).st_mode
    if not stat.S_ISDIR(mode):
        raise errors.NotADirectory(f"store {path} exists and is not a directory")
    if mode & OTHERS:
        raise errors.StoreExposed(
            f"store directory {path} has mode {stat.S_IMODE(mode):04o}: other users could read its blobs, "
            f"catalog and log; make it private first (`chmod 700 {path}`)"
        )


def make_dirs(path: str | os.PathLike[str]) -> None:
    """``path`` and any missing parents, each 0700 (``os.makedirs`` gives parents the umask's mode)."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        make_dirs(os.path.dirname(os.fspath(path)))
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:  # another thread made it meanwhile
            return
    os.chmod(path, DIR_MODE)


def open_file(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` with mode 0600 for a file it creates."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def open_log(path: Path) -> int:
    """A descriptor appending to the log at ``path``: created 0600, or made 0600 if it was more open.

    Raises OSError when the file cannot be opened or made private (a log
    another uid owns, say): the log is where paths and hashes are written.
    """
    fd = open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        if os.fstat(fd).st_mode & OTHERS:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd

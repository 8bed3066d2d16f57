"""Where small staging files live: a directory in memory (tmpfs), one per store.

A file created through the mount is staged in memory while it is small:
on ext4 the creation and the deletion of a staging file cost the disk's
journal (from 15 µs to well over 1 ms each here, as the disk is busy),
which is most of what a small file costs beyond its catalog transactions.
Memory keeps every promise the disk kept: a staging file in tmpfs survives
a killed daemon, and what a power loss takes from it (everything) is what
the durability model lets it take, since an fsync moves the file to the
disk first (``StagingFile.sync``). A file that grows past
``MEMORY_FILE_MAX`` moves to the disk then, as does any file once the
store's files in memory hold ``MEMORY_BUDGET`` bytes.

The directory is ``<parent>/fusestore-<euid>/<store id>-<path hash>``: the
parent is ``$FUSESTORE_MEMORY_STAGING`` (``off``: no memory staging) or
``/dev/shm``; the store id is the catalog's (``meta/store_id``) and the
hash that of the store directory's real path, so that a copy of a store
(same id, another path) never touches the original's files, while a store
moved after a crash finds its own again (``<directory>.path`` says where
the store was).
``/dev/shm`` is open to every user: the per-uid directory must be this
uid's own, a real directory, mode 0700, or memory staging is off (a
warning in the log), since another user who owned it could read every
tenant's bytes.
"""

from __future__ import annotations

import logging
import os
import stat

import blake3

from .. import private

ENVIRONMENT = "FUSESTORE_MEMORY_STAGING"
DEFAULT_PARENT = "/dev/shm"
OFF = "off"
MEMORY_FILE_MAX = 1 << 20  # a staging file that would grow past this moves to the disk
MEMORY_BUDGET = 64 << 20  # at most this many bytes of one store's staging files are in memory
PATH_SUFFIX = ".path"  # beside a store's memory directory: the store directory it belongs to

log = logging.getLogger(__name__)


def memory_root(store_id: bytes, store: str | os.PathLike[str], *, create: bool) -> str | None:
    """The memory staging directory of the store ``store_id`` at ``store``, or None where there is none.

    ``create``: make what is missing (a writer; an inspection only looks),
    and take over the files the same store left in memory under the path it
    had before it was moved (its ``.path`` names a directory that is gone).
    """
    parent = os.environ.get(ENVIRONMENT, DEFAULT_PARENT)
    if parent == OFF or not os.path.isdir(parent):
        return None
    mine = f"{parent}/fusestore-{os.geteuid()}"
    if create:
        try:
            private.make_dirs(mine)  # an existing one is checked below, whatever it is
        except OSError as exc:
            log.warning("memory staging is off: cannot make %s (%s)", mine, exc)
            return None
    try:
        status = os.lstat(mine)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.geteuid() or status.st_mode & private.OTHERS:
        log.warning("memory staging is off: %s is not a private directory of uid %d (mode %04o, owner %d); "
                    "small files are staged on the disk", mine, os.geteuid(), stat.S_IMODE(status.st_mode),
                    status.st_uid)
        return None
    where = os.path.realpath(store)
    root = f"{mine}/{store_id.hex()}-{blake3.blake3(where.encode()).hexdigest()[:16]}"
    if create:
        try:
            private.make_dirs(root)
            _write_path(root, where)
            _take_over_moved(mine, store_id, root)
        except OSError as exc:
            log.warning("memory staging is off: cannot make %s (%s)", root, exc)
            return None
    return root


def forget(root: str) -> None:
    """The store closes: its memory directory goes if it is empty (files of a change in flight stay)."""
    try:
        os.rmdir(root)
    except OSError:
        return
    try:
        os.unlink(root + PATH_SUFFIX)
    except FileNotFoundError:
        pass


def _write_path(root: str, where: str) -> None:
    fd = private.open_file(root + PATH_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, where.encode())
    finally:
        os.close(fd)


def _take_over_moved(mine: str, store_id: bytes, root: str) -> None:
    """Move into ``root`` the files this store left under a path that no longer exists (it was moved).

    A directory of the same id whose path still exists is a copy's (or the
    original's, for a copy): its files are that store's, and stay.
    """
    prefix = store_id.hex() + "-"
    for entry in os.listdir(mine):
        other = f"{mine}/{entry.removesuffix(PATH_SUFFIX)}"
        if not entry.startswith(prefix) or not entry.endswith(PATH_SUFFIX) or other == root:
            continue
        with open(other + PATH_SUFFIX, "rb") as file:
            was = os.fsdecode(file.read())
        if os.path.exists(was) or not os.path.isdir(other):
            continue
        for name in os.listdir(other):
            os.rename(f"{other}/{name}", f"{root}/{name}")
        log.info("memory staging: took over what this store left in memory when it was at %s", was)
        forget(other)

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

The directory is ``<parent>/fusestore-<euid>/<store id>``: the parent is
``$FUSESTORE_MEMORY_STAGING`` (``off``: no memory staging) or
``/dev/shm``; the store id is the catalog's (``meta/store_id``), so a store
finds its files again after a crash wherever its directory is mounted.
``/dev/shm`` is open to every user: the per-uid directory must be this
uid's own, a real directory, mode 0700, or memory staging is off (a
warning in the log), since another user who owned it could read every
tenant's bytes.
"""

from __future__ import annotations

import logging
import os
import stat

from .. import private

ENVIRONMENT = "FUSESTORE_MEMORY_STAGING"
DEFAULT_PARENT = "/dev/shm"
OFF = "off"
MEMORY_FILE_MAX = 1 << 20  # a staging file that would grow past this moves to the disk
MEMORY_BUDGET = 64 << 20  # at most this many bytes of one store's staging files are in memory

log = logging.getLogger(__name__)


def memory_root(store_id: bytes, *, create: bool) -> str | None:
    """The memory staging directory of the store ``store_id``, or None where there is none (or may be none).

    ``create``: make the per-uid directory if it is missing (a writer); an
    inspection only looks.
    """
    parent = os.environ.get(ENVIRONMENT, DEFAULT_PARENT)
    if parent == OFF or not os.path.isdir(parent):
        return None
    mine = f"{parent}/fusestore-{os.geteuid()}"
    if create:
        try:
            os.mkdir(mine, private.DIR_MODE)
            os.chmod(mine, private.DIR_MODE)  # whatever the umask took
        except FileExistsError:
            pass
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
    root = f"{mine}/{store_id.hex()}"
    if create:
        try:
            private.make_dirs(root)
        except OSError as exc:
            log.warning("memory staging is off: cannot make %s (%s)", root, exc)
            return None
    return root

"""Which set-ID bits a write clears: the rule, apart from who writes (the filesystem layer knows that).

Imports nothing but ``stat``: the kernel-facing settings (``fs.kernel``) use
it, and they load without LMDB.
"""

from __future__ import annotations

import stat


def cleared_by_write(mode: int) -> int:
    """The set-ID bits of ``mode`` that a write by a caller without CAP_FSETID clears.

    Set-user-ID always; set-group-ID with group-execute (without it the bit
    marks mandatory locking, not a program that runs as the group). Otherwise
    anyone who may write a set-ID program could change what it runs with
    someone else's rights. It is what ext4 does, and what the kernel's FUSE
    code does for writes through the page cache. (Linux 6.x on ext4 also
    clears set-group-ID without group-execute when the writer is not in the
    file's group; the FUSE code does not, and this follows it, so that a
    file behaves the same whoever clears the bits.)
    """
    bits = mode & stat.S_ISUID
    if mode & stat.S_ISGID and mode & stat.S_IXGRP:
        bits |= stat.S_ISGID
    return bits

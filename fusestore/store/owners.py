"""Who acts: the uid and gid of a caller, and the mode-bit check the daemon makes on its behalf."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..catalog import Inode


@dataclass(frozen=True)
class Owner:
    """Who acts or creates an inode: its uid and gid (the caller's, or the setgid directory's).

    ``groups``: the caller's supplementary groups, where a check the daemon
    makes for it needs them (``permits``); empty elsewhere.
    """

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


def process_owner() -> Owner:
    return Owner(os.getuid(), os.getgid())


def permits(node: Inode, owner: Owner, mask: int) -> bool:
    """Whether the mode bits of ``node`` grant ``mask`` (os.R_OK/W_OK/X_OK bits) to ``owner``.

    Only for checks the kernel cannot make (a proof-of-access link is written
    by the daemon, not by the caller). As the kernel does, the group bits
    apply to the caller's primary and supplementary groups.
    """
    if owner.uid == 0:
        return True
    if owner.uid == node.uid:
        bits = node.mode >> 6
    elif owner.gid == node.gid or node.gid in owner.groups:
        bits = node.mode >> 3
    else:
        bits = node.mode
    return bits & mask == mask


"""Whether the process behind a request holds CAP_FSETID, which decides if its writes clear set-ID bits.

A write by a process without CAP_FSETID clears a file's set-user-ID bit,
and its set-group-ID bit with group-execute (``store.setid.cleared_by_write``).
The kernel does that itself for writes through the page cache: it checks
the writer and sends a setattr of the mode. For a direct-I/O write it only
sets FUSE_WRITE_KILL_SUIDGID in the request and leaves the clearing to the
filesystem, and libfuse 3 drops that flag before pyfuse3 sees the write,
which carries no caller either. So:

- a file with such bits when it is opened is never given direct I/O
  (``kernel.uses_direct_io``): the kernel decides, writer by writer;
- a direct-I/O handle remembers who opened it, and when its inode gains
  such bits later (a chmod while it is open), a write through it clears
  them unless the opener holds CAP_FSETID. That is the opener, not
  necessarily the writer (a descriptor may be passed on): the nearest
  answer a write without a caller allows;
- an open with O_TRUNC clears them unless the opener holds CAP_FSETID
  (the kernel drops the mode change it would send: with atomic O_TRUNC the
  truncation already happened in the open).

The capability is read from ``/proc/<pid>/status`` (the effective set),
once per caller, and only counts for uid 0: a process of another uid that
holds it in its own user namespace does not hold it where the kernel
checks. A process whose status cannot be read (gone, or hidden by hidepid)
counts as without it: clearing a set-ID bit is the safe mistake.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

CAP_FSETID = 4


@dataclass
class Caller:
    """The uid and pid of the process that made a request (pyfuse3's RequestContext, kept)."""

    uid: int
    pid: int

    @functools.cached_property
    def has_fsetid(self) -> bool:
        if self.uid != 0:
            return False
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii", errors="replace") as status:
                for line in status:
                    if line.startswith("CapEff:"):
                        return bool(int(line.split()[1], 16) >> CAP_FSETID & 1)
        except (OSError, ValueError, IndexError):
            pass
        return False


def supplementary_groups(pid: int) -> frozenset[int]:
    """The supplementary groups of process ``pid`` (``/proc/<pid>/status``), for the checks the daemon makes for it.

    A link made through a control file is the daemon's write on the
    caller's behalf (``store.owners.permits``): the group bits apply to
    these groups too, as the kernel's own checks apply them. None are known
    for a process whose status cannot be read: the check then refuses more,
    never less.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(group) for group in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()

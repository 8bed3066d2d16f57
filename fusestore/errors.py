"""The store's typed errors, each carrying the errno the filesystem returns.

One base class so callers can catch everything the store raises on purpose;
the filesystem layer turns any of them into ``pyfuse3.FUSEError(err.errno)``
without a lookup table of its own. An ``OSError`` from the pool or the disk
(a blob store that cannot write, a staging file on a failing disk) is not
wrapped: the filesystem returns its own errno (EIO when it has none) and
logs it, since the kernel's errno says more than any translation would.
"""

from __future__ import annotations

import errno as _errno


class StoreError(Exception):
    """Base of every error the store raises on purpose."""

    errno: int = _errno.EIO


class NotFound(StoreError):
    errno = _errno.ENOENT


class UploadPending(StoreError):
    """The content exists in the catalog but its bytes are still being uploaded.

    EAGAIN: the same call succeeds once the upload commits, which is what
    "try again" tells a client.
    """

    errno = _errno.EAGAIN


class RequestExpired(StoreError):
    """Unknown, expired or already answered proof-of-access request.

    ETIMEDOUT for all three: each request takes one answer within its
    lifetime, so a second answer came too late just as an expired one did,
    and an unknown id tells a guesser nothing more than an expired one.
    """

    errno = _errno.ETIMEDOUT


class ResponseMismatch(StoreError):
    errno = _errno.EACCES


class AccessDenied(StoreError):
    """The mode bits do not let this caller write there (checks the daemon makes for a caller)."""

    errno = _errno.EACCES


class ResourceDeleted(StoreError):
    """The content of a request went away between the request and its answer.

    ESTALE: the request referred to something that existed when it was
    made, as a stale NFS handle does; the client must upload instead.
    """

    errno = _errno.ESTALE


class ContentLost(StoreError):
    """The file's content was lost: ``fsck --repair`` found its blob damaged or missing and took it away.

    EIO, as a disk answers for a bad sector: the file and its length are
    known, only its bytes cannot be read (ENOENT would say there is no file,
    EAGAIN that waiting helps). Writing the same content again restores it.
    """

    errno = _errno.EIO


class HashMismatch(StoreError):
    errno = _errno.EBADMSG


class LengthMismatch(StoreError, ValueError):
    errno = _errno.EINVAL


class InvalidName(StoreError, ValueError):
    errno = _errno.EINVAL


class NameTooLong(InvalidName):
    """A path component over 255 bytes: ENAMETOOLONG, as on every POSIX filesystem."""

    errno = _errno.ENAMETOOLONG


class TooManyRequests(StoreError):
    """Too many proof-of-access requests are open: EBUSY, as for any resource in use; retry later."""

    errno = _errno.EBUSY


class IsADirectory(StoreError):
    errno = _errno.EISDIR


class NotADirectory(StoreError):
    errno = _errno.ENOTDIR


class AlreadyExists(StoreError):
    errno = _errno.EEXIST


class NotEmpty(StoreError):
    errno = _errno.ENOTEMPTY


class NotPermitted(StoreError):
    """The namespace forbids this (a file in ``/``, a link to a directory, ...)."""

    errno = _errno.EPERM


class CrossNamespace(StoreError):
    """Links and renames stay inside one environment; tools then copy instead."""

    errno = _errno.EXDEV


class NoAttribute(StoreError):
    errno = _errno.ENODATA


class NotSupported(StoreError):
    """POSIX ACL attributes: not enforced, so refused rather than stored and ignored."""

    errno = _errno.EOPNOTSUPP


class InvalidArgument(StoreError, ValueError):
    """An operation that can never succeed as asked (a directory moved into itself)."""

    errno = _errno.EINVAL


class BadContent(StoreError):
    """A blob whose bytes are not what its name and the catalog say (missing, of another length, another hash).

    EIO, as a disk answers for a sector it cannot read: the file is
    damaged, and serving any bytes of it would be serving wrong ones.
    """

    errno = _errno.EIO


class NoSpace(StoreError):
    """The disk that holds the store is full (LMDB reports a short write as EIO)."""

    errno = _errno.ENOSPC


class FileTooLarge(StoreError):
    """A file would grow past the mount's ``--max-file-size`` (EFBIG, as ext4 answers past its own maximum)."""

    errno = _errno.EFBIG


class Interrupted(StoreError):
    """Long work (hashing, copying) given up because the process is stopping.

    EIO to that call: its staging file stays recorded, and recovery at the
    next open finishes the commit. EINTR would invite a retry that cannot
    succeed, since the daemon is going away.
    """


class StoreLocked(StoreError):
    """Another live process holds the store (EBUSY, as mount(8) says of a device in use)."""

    errno = _errno.EBUSY


class StoreExposed(StoreError):
    """A store directory that group or others may enter: EACCES, as its permissions are what is wrong.

    The store holds every tenant's bytes, names and hashes; fusestore will
    not serve (or start filling) a directory another uid can read.
    """

    errno = _errno.EACCES


class UnknownFormat(StoreError):
    """The store was written by a format this version does not know.

    EPROTO: the bytes are fine, only their protocol (the format version) is
    not this program's; EIO would suggest damage.
    """

    errno = _errno.EPROTO


class NoStore(NotFound):
    """No store at that path (no catalog): ENOENT, as for a missing file; read-only opens never create one."""

    errno = _errno.ENOENT


class NeedsRecovery(StoreError):
    """A power loss left the catalog to be taken back to its last checkpoint: only a writable open does that."""


class ReadOnly(StoreError):
    """A write to a catalog opened read-only (an inspection): EROFS, as a filesystem mounted read-only answers."""

    errno = _errno.EROFS

"""Validation of the names the store accepts: environments, users, paths.

Everything a caller passes is checked here, once, and turned into the byte
components the catalog stores; nothing past this point sees an unchecked name.
"""

from __future__ import annotations

import os
import uuid

from .. import errors

NAME_MAX = 255


def environment(env_uuid: str) -> bytes:
    """A canonical lowercase UUID, as its directory name in ``/``."""
    try:
        canonical = str(uuid.UUID(env_uuid))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical != env_uuid:
        raise errors.InvalidName(f"environment must be a canonical lowercase UUID, not {env_uuid!r}")
    return env_uuid.encode("ascii")


def is_environment(name: bytes) -> bool:
    try:
        environment(name.decode("ascii"))
    except (errors.InvalidName, UnicodeDecodeError):
        return False
    return True


def user(name: str) -> bytes:
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
        raise errors.InvalidName(f"user name must be non-empty, without '/' or NUL: {name!r}")
    return component(os.fsencode(name))


def component(name: bytes) -> bytes:
    """One path component, as the filesystem receives it."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise errors.InvalidName(f"invalid name {name!r}")
    if len(name) > NAME_MAX:
        raise errors.NameTooLong(f"name of {len(name)} bytes is longer than {NAME_MAX}")
    return name


def relative_path(path: str) -> list[bytes]:
    """The components of a relative path without '..', '.', empty or NUL components."""
    if not isinstance(path, str) or not path or path.startswith("/"):
        raise errors.InvalidName(f"path must be relative and non-empty: {path!r}")
    return [component(part) for part in os.fsencode(path).split(b"/")]

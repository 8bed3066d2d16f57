"""Tenants kept apart on one --allow-other mount: real processes of uids 2001 and 2002, no mocks.

Each check runs in a forked child that drops to the tenant's uid and gid
(``in_child``: no passwd entry needed) and reports the errno it met. What
is checked is what a hostile local user could try: listing, reading,
stat-ing, linking from, renaming into and the extended attributes of
another's environment; the hash of a file it may not read; anything under
the store directory; and the set-ID bits that a write must clear.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import ENV, ENV2
from .mount_helpers import Mount, in_child

ALICE, BOB = 2001, 2002
ENV3 = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
HASH = "user.fusestore.blake3"


@pytest.fixture
def shared(mount_with: Callable[..., Mount]) -> Mount:
    """A fresh mount other uids may use (under a 0755 directory of /tmp), unmounted even when the test fails."""
    return mount_with("--allow-other", shared=True)


def as_user(uid: int, action: Callable[[], bytes | None]) -> tuple[int, bytes]:
    """(errno or 0, what ``action`` returned), run by a process of ``uid`` and group ``uid`` only."""
    return in_child(action, uid=uid)


def errno_as(uid: int, call: Callable[..., object], *args: object) -> int:
    def action() -> None:
        call(*args)

    return as_user(uid, action)[0]


def make_env(mount: Mount, uid: int, env: str, *, umask: int = 0o022, files: dict[str, bytes] | None = None) -> Path:
    """``mkdir /<env>`` by ``uid`` under ``umask`` (mode 0777 asked), then its files, made by it too."""
    path = mount.path / env

    def action() -> None:
        os.umask(umask)
        os.mkdir(path, 0o777)
        for name, data in (files or {}).items():
            fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.write(fd, data)
            os.close(fd)

    assert as_user(uid, action) == (0, b"")
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- environments belong to their creators ---------------------------------------------------------------------


def test_an_environment_belongs_to_its_creator_with_the_umask_applied(shared: Mount) -> None:
    open_env = make_env(shared, ALICE, ENV, umask=0o022)
    private = make_env(shared, ALICE, ENV2, umask=0o077)
    theirs = make_env(shared, BOB, ENV3, umask=0o027)
    for path, uid, bits in ((open_env, ALICE, 0o755), (private, ALICE, 0o700), (theirs, BOB, 0o750)):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, bits), path


def test_a_user_directory_belongs_to_its_creator_with_the_umask_applied(shared: Mount) -> None:
    users = shared.path / ".users"

    def make() -> None:
        os.umask(0o027)
        os.mkdir(users / "alice", 0o777)

    assert as_user(ALICE, make) == (0, b"")
    st = os.stat(users / "alice")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (ALICE, ALICE, 0o750)
    assert errno_as(BOB, os.mkdir, users / "alice" / "sub") == errno.EACCES
    assert errno_as(BOB, os.rmdir, users / "alice") == errno.EPERM  # /.users is sticky


def test_chmod_and_chown_of_an_environment_are_as_usual(shared: Mount) -> None:
    env = make_env(shared, ALICE, ENV)
    assert errno_as(ALICE, os.chmod, env, 0o711) == 0 and mode(env) == 0o711
    assert errno_as(BOB, os.chmod, env, 0o777) == errno.EPERM
    assert errno_as(ALICE, os.chown, env, BOB, BOB) == errno.EPERM  # giving it away takes root
    assert errno_as(BOB, os.chown, env, BOB, BOB) == errno.EPERM
    os.chown(env, BOB, BOB)
    assert (os.stat(env).st_uid, os.stat(env).st_gid) == (BOB, BOB)
    assert errno_as(BOB, os.chmod, env, 0o700) == 0 and mode(env) == 0o700


def test_every_uid_lists_every_environment_but_removes_only_its_own(shared: Mount) -> None:
    make_env(shared, ALICE, ENV, umask=0o077)
    make_env(shared, BOB, ENV2, umask=0o077)
    listed = as_user(BOB, lambda: "\n".join(sorted(os.listdir(shared.path))).encode())
    assert listed == (0, "\n".join(sorted([".global", ".requests", ".stats", ".users", ENV, ENV2])).encode())
    assert errno_as(BOB, os.rmdir, shared.path / ENV) == errno.EPERM  # / is sticky, as /tmp
    assert errno_as(ALICE, os.rmdir, shared.path / ENV) == 0


# -- another's environment is closed --------------------------------------------------------------------------


def test_another_tenant_cannot_list_read_stat_link_rename_or_xattr_a_private_environment(shared: Mount) -> None:
    secret = b"alice's secret bytes"
    alice = make_env(shared, ALICE, ENV, files={"secret": secret})
    assert errno_as(ALICE, os.chmod, alice, 0o700) == 0
    bob = make_env(shared, BOB, ENV2, files={"mine": b"bob's"})
    inside = alice / "secret"

    assert errno_as(BOB, os.listdir, alice) == errno.EACCES
    assert errno_as(BOB, os.open, alice, os.O_RDONLY | os.O_DIRECTORY) == errno.EACCES
    assert errno_as(BOB, os.open, inside, os.O_RDONLY) == errno.EACCES
    assert errno_as(BOB, os.stat, inside) == errno.EACCES
    assert errno_as(BOB, os.stat, alice / "no-such-name") == errno.EACCES  # not ENOENT: names are not probed
    assert errno_as(BOB, os.link, inside, bob / "stolen") == errno.EACCES
    assert errno_as(BOB, os.rename, bob / "mine", alice / "planted") == errno.EACCES
    assert errno_as(BOB, os.symlink, "x", alice / "planted") == errno.EACCES
    assert errno_as(BOB, os.getxattr, inside, HASH) == errno.EACCES
    assert errno_as(BOB, os.listxattr, inside) == errno.EACCES
    assert errno_as(BOB, os.setxattr, inside, "user.x", b"1") == errno.EACCES
    assert errno_as(BOB, os.getxattr, alice, "user.x") == errno.EACCES
    assert errno_as(BOB, os.setxattr, alice, "user.x", b"1") == errno.EACCES
    assert errno_as(BOB, os.removexattr, alice, "user.x") == errno.EACCES
    assert errno_as(BOB, os.setxattr, alice, "user.fusestore.expect", b"0" * 64) == errno.EACCES
    # the environment itself is no secret: it is listed, and stat shows whose it is
    assert stat.S_IMODE(os.stat(alice).st_mode) == 0o700 and errno_as(BOB, os.stat, alice) == 0

    assert as_user(ALICE, lambda: (alice / "secret").read_bytes()) == (0, secret)
    assert sorted(os.listdir(alice)) == ["secret"] and sorted(os.listdir(bob)) == ["mine"]


def test_the_hash_of_a_file_is_shown_only_to_who_may_read_it(shared: Mount) -> None:
    env = make_env(shared, ALICE, ENV, files={"private": b"only alice reads this", "public": b"anyone reads this"})
    assert errno_as(ALICE, os.chmod, env / "private", 0o600) == 0
    assert errno_as(ALICE, os.chmod, env / "public", 0o644) == 0
    assert errno_as(BOB, os.getxattr, env / "private", HASH) == errno.EACCES
    assert as_user(BOB, lambda: os.getxattr(env / "public", HASH)) == (0, os.getxattr(env / "public", HASH))
    assert as_user(ALICE, lambda: os.getxattr(env / "private", HASH)) == (0, os.getxattr(env / "private", HASH))
    assert as_user(BOB, lambda: repr(os.listxattr(env / "private")).encode()) == (0, b"[]")  # never listed
    # write-only is not read: the hash would tell what the file holds
    assert errno_as(ALICE, os.chmod, env / "private", 0o622) == 0
    assert errno_as(BOB, os.getxattr, env / "private", HASH) == errno.EACCES


def test_nothing_under_the_store_directory_is_readable_by_another_uid(shared: Mount) -> None:
    make_env(shared, ALICE, ENV, umask=0, files={"f": b"bytes in the pool"})
    shared.blob_count()  # settles: a checkpoint has run, the pack is there
    store = shared.store
    packs = sorted((store / "packs").iterdir())
    assert packs, "the content went to a pack"
    blob = packs[0]
    for path in (store, store / "packs", store / "staging"):
        assert errno_as(BOB, os.listdir, path) == errno.EACCES, path
    for path in (store / "lock", store / "catalog" / "data.mdb", store / "catalog" / "lock.mdb", blob):
        assert errno_as(BOB, os.open, path, os.O_RDONLY) == errno.EACCES, path
    assert shared.log.is_file() and errno_as(BOB, os.open, shared.log, os.O_RDONLY) == errno.EACCES
    assert errno_as(ALICE, os.open, blob, os.O_RDONLY) == errno.EACCES  # the tenant who wrote it neither
    assert mode(store) == 0o700 and mode(shared.log) == 0o600


# -- set-user-ID and set-group-ID ------------------------------------------------------------------------------


@pytest.fixture
def writable(shared: Mount) -> Path:
    """An environment anyone may write in, owned by root."""
    env = shared.path / ENV
    env.mkdir()
    env.chmod(0o777)
    return env


def setid_file(env: Path, bits: int, name: str = "prog") -> Path:
    path = env / name
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(bits)
    return path


def write_as(uid: int | None, path: Path, flags: int) -> int:
    """Write one byte through a new descriptor (``uid`` None: as root); the mode fstat then shows."""
    def action() -> bytes:
        fd = os.open(path, flags)
        try:
            os.write(fd, b"x")
            return b"%o" % stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    code, shown = in_child(action) if uid is None else as_user(uid, action)
    assert code == 0
    return int(shown, 8)


SETID_CASES = [(0o4777, 0o777), (0o2777, 0o777), (0o6777, 0o777), (0o6767, 0o2767), (0o2767, 0o2767), (0o4755, 0o755)]


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND], ids=["wronly", "rdwr", "append"])
@pytest.mark.parametrize(("before", "after"), SETID_CASES, ids=[f"{b:o}-{a:o}" for b, a in SETID_CASES])
def test_a_write_by_another_uid_clears_set_user_id_and_set_group_id_with_group_execute(
    writable: Path, flags: int, before: int, after: int,
) -> None:
    path = setid_file(writable, before)
    if before & 0o002 == 0:
        os.chown(path, 0, BOB)  # group-writable for bob: 0o4755 is not otherwise writable by him
        path.chmod(before | 0o020)
        before, after = before | 0o020, after | 0o020
    assert write_as(BOB, path, flags) == after
    assert mode(path) == after


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR], ids=["wronly", "rdwr"])
def test_roots_write_keeps_set_id_bits(writable: Path, flags: int) -> None:
    path = setid_file(writable, 0o6777)
    assert write_as(None, path, flags) == 0o6777
    assert mode(path) == 0o6777


def test_the_owners_own_write_clears_set_user_id_too(writable: Path) -> None:
    path = writable / "mine"

    def action() -> bytes:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o755)
        os.close(fd)
        os.chmod(path, 0o4755)
        return b"%o" % write_as_in_place(path)

    assert as_user(ALICE, action) == (0, b"755")
    assert mode(path) == 0o755 and os.stat(path).st_uid == ALICE


def write_as_in_place(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"x")
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_bits_set_while_a_write_only_descriptor_is_open_are_cleared_by_its_next_write(writable: Path) -> None:
    """A write-only descriptor opened before the chmod: its writes bypass the page cache."""
    path = writable / "prog"

    def action() -> bytes:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o755)
        try:
            os.fchmod(fd, 0o6775)  # set-group-ID: bob's own group
            os.write(fd, b"#!/bin/sh\n")
            return b"%o" % stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    assert as_user(BOB, action) == (0, b"775")
    assert mode(path) == 0o775

    kept = writable / "roots"
    fd = os.open(kept, os.O_WRONLY | os.O_CREAT, 0o755)
    try:
        os.fchmod(fd, 0o6755)
        os.write(fd, b"#!/bin/sh\n")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o6755
    finally:
        os.close(fd)
    assert mode(kept) == 0o6755


def test_truncation_by_another_uid_clears_set_user_id_and_roots_does_not(writable: Path) -> None:
    by_open = setid_file(writable, 0o4777, "by-open")
    assert errno_as(BOB, lambda: os.close(os.open(by_open, os.O_WRONLY | os.O_TRUNC))) == 0
    assert mode(by_open) == 0o777 and by_open.read_bytes() == b""
    by_truncate = setid_file(writable, 0o6777, "by-truncate")
    assert errno_as(BOB, os.truncate, by_truncate, 3) == 0
    assert mode(by_truncate) == 0o777 and by_truncate.read_bytes() == b"#!/"
    roots = setid_file(writable, 0o4777, "roots")
    os.close(os.open(roots, os.O_WRONLY | os.O_TRUNC))
    os.truncate(roots, 0)
    assert mode(roots) == 0o4777


def test_chown_by_the_owner_clears_set_user_id(writable: Path) -> None:
    path = writable / "prog"

    def action() -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o755))
        os.chmod(path, 0o4755)
        os.chown(path, ALICE, ALICE)  # a chown to oneself, as chown(1) may do

    assert as_user(ALICE, action) == (0, b"")
    assert mode(path) == 0o755


def test_a_proof_of_access_link_over_a_set_id_program_clears_its_bits(writable: Path) -> None:
    from fusestore.client.link import link

    payload = b"bytes bob holds and the store already has" * 100
    (writable / "already-stored").write_bytes(payload)
    local = writable.parent.parent / "bob.bin"  # outside the mount, readable by bob
    local.write_bytes(payload)
    local.chmod(0o644)
    prog = setid_file(writable, 0o4777)
    os.stat(prog)  # the kernel caches the mode: the link must drop that too

    def action() -> bytes:
        return link(writable.parent, ENV, "prog", local).kind.encode()

    assert as_user(BOB, action) == (0, b"linked")
    assert prog.read_bytes() == payload
    assert mode(prog) == 0o777


# -- names -------------------------------------------------------------------------------------------------------


def test_names_over_255_bytes_and_non_uuids_in_the_root(shared: Mount) -> None:
    env = make_env(shared, ALICE, ENV)
    long = "n" * 256
    assert errno_as(ALICE, os.mkdir, env / long) == errno.ENAMETOOLONG
    assert errno_as(ALICE, os.open, env / long, os.O_WRONLY | os.O_CREAT, 0o644) == errno.ENAMETOOLONG
    assert errno_as(ALICE, os.stat, env / long) == errno.ENAMETOOLONG
    assert errno_as(ALICE, os.mkdir, env / ("n" * 255)) == 0
    for name in ("not-a-uuid", ENV.upper(), ENV + "x", "{" + ENV + "}"):
        assert errno_as(ALICE, os.mkdir, shared.path / name) == errno.EINVAL, name
    assert errno_as(ALICE, os.mkdir, shared.path / long) == errno.ENAMETOOLONG
    assert errno_as(ALICE, os.open, shared.path / "f", os.O_WRONLY | os.O_CREAT, 0o644) == errno.EPERM
